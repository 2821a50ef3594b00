//! [`Slots`]: the places where the consumer's jobs run, allocated once and reused. Starting a
//! job writes it into a free place: no allocation per message (a `FuturesUnordered` of boxed
//! jobs makes two: the box and its task node), and only the jobs that were woken are polled.

use std::collections::VecDeque;
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::task::{Context, Poll, Wake, Waker};

use futures_util::task::AtomicWaker;

/// Running jobs, type-erased: how the dispatcher sees [`Slots`].
pub(crate) trait Jobs<W>: Send {
    /// Starts the job for `work` in a free place. Like `FuturesUnordered::push`, it does not
    /// wake the caller's task: poll ([`poll_next`](Self::poll_next)) afterwards.
    fn start(&mut self, work: W);

    /// Polls the woken jobs until one ends: `Ready(Some(()))` for that one, `Ready(None)` when
    /// none is running, `Pending` when none of the running ones can go on.
    fn poll_next(&mut self, cx: &mut Context<'_>) -> Poll<Option<()>>;

    /// Jobs running now.
    fn len(&self) -> usize;

    /// Drops the running jobs; how many there were.
    fn abandon(&mut self) -> usize;
}

/// Places for the futures `make` returns, one per job that ran at the same time, at most as
/// many as the consumer's concurrency.
pub(crate) struct Slots<F, M> {
    make: M,
    slots: Vec<Slot<F>>,
    /// Places without a job.
    free: Vec<usize>,
    running: usize,
    woken: Arc<Woken>,
}

struct Slot<F> {
    future: Pin<Box<Option<F>>>,
    waker: Waker,
    wake: Arc<SlotWake>,
}

/// The places whose job was woken, in the order they were; and the task polling them.
#[derive(Default)]
struct Woken {
    queue: Mutex<VecDeque<usize>>,
    task: AtomicWaker,
}

impl Woken {
    fn queue(&self) -> MutexGuard<'_, VecDeque<usize>> {
        self.queue.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

/// The waker of one place: queues it (once until it is polled) and wakes the polling task.
struct SlotWake {
    index: usize,
    queued: AtomicBool,
    woken: Arc<Woken>,
}

impl SlotWake {
    fn queue(&self) {
        if !self.queued.swap(true, Ordering::AcqRel) {
            self.woken.queue().push_back(self.index);
        }
    }
}

impl Wake for SlotWake {
    fn wake(self: Arc<Self>) {
        self.wake_by_ref();
    }

    fn wake_by_ref(self: &Arc<Self>) {
        self.queue();
        self.woken.task.wake();
    }
}

impl<F, M> Slots<F, M> {
    pub(crate) fn new(make: M) -> Self {
        Self {
            make,
            slots: Vec::new(),
            free: Vec::new(),
            running: 0,
            woken: Arc::default(),
        }
    }
}

impl<W, F, M> Jobs<W> for Slots<F, M>
where
    F: Future<Output = ()> + Send,
    M: Fn(W) -> F + Send,
{
    fn start(&mut self, work: W) {
        let index = match self.free.pop() {
            Some(index) => index,
            None => {
                let index = self.slots.len();
                let wake = Arc::new(SlotWake {
                    index,
                    queued: AtomicBool::new(false),
                    woken: self.woken.clone(),
                });
                self.slots.push(Slot {
                    future: Box::pin(None),
                    waker: Waker::from(wake.clone()),
                    wake,
                });
                index
            }
        };
        let Some(slot) = self.slots.get_mut(index) else {
            return;
        };
        slot.future.set(Some((self.make)(work)));
        slot.wake.queue();
        self.running += 1;
    }

    fn poll_next(&mut self, cx: &mut Context<'_>) -> Poll<Option<()>> {
        self.woken.task.register(cx.waker());
        // A job that wakes itself while polled is queued again: poll at most as many as there
        // are places before yielding, so it cannot keep this task (and the fetch loop) busy.
        for _ in 0..=self.slots.len() {
            let Some(index) = self.woken.queue().pop_front() else {
                break;
            };
            let Some(slot) = self.slots.get_mut(index) else {
                continue;
            };
            // Before polling: a wake-up while it runs queues it again.
            slot.wake.queued.swap(false, Ordering::AcqRel);
            // A late wake-up of a job that has ended finds its place empty (or a newer job,
            // which a spurious poll does not harm).
            let Some(future) = slot.future.as_mut().as_pin_mut() else {
                continue;
            };
            if future
                .poll(&mut Context::from_waker(&slot.waker))
                .is_ready()
            {
                slot.future.set(None);
                self.free.push(index);
                self.running -= 1;
                return Poll::Ready(Some(()));
            }
        }
        if self.running == 0 {
            Poll::Ready(None)
        } else if self.woken.queue().is_empty() {
            Poll::Pending
        } else {
            cx.waker().wake_by_ref();
            Poll::Pending
        }
    }

    fn len(&self) -> usize {
        self.running
    }

    fn abandon(&mut self) -> usize {
        let abandoned = self.running;
        for (index, slot) in self.slots.iter_mut().enumerate() {
            if slot.future.is_some() {
                slot.future.set(None);
                self.free.push(index);
            }
        }
        self.running = 0;
        abandoned
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use std::sync::atomic::AtomicUsize;
    use std::time::Duration;

    use futures_util::future::poll_fn;

    use super::*;

    /// Every job runs to its end, one `Some` each, then `None`; ended jobs' places are reused.
    #[tokio::test]
    async fn jobs_run_to_their_end_and_places_are_reused() {
        let ended = Arc::new(AtomicUsize::new(0));
        let counter = ended.clone();
        let mut slots = Slots::new(move |ms: u64| {
            let ended = counter.clone();
            async move {
                tokio::time::sleep(Duration::from_millis(ms)).await;
                ended.fetch_add(1, Ordering::Relaxed);
            }
        });
        for ms in [30, 10, 20] {
            slots.start(ms);
        }
        assert_eq!(Jobs::<u64>::len(&slots), 3);
        for done in 1..=3 {
            let next = poll_fn(|cx| Jobs::<u64>::poll_next(&mut slots, cx)).await;
            assert_eq!((next, ended.load(Ordering::Relaxed)), (Some(()), done));
        }
        assert_eq!(
            poll_fn(|cx| Jobs::<u64>::poll_next(&mut slots, cx)).await,
            None
        );
        // The three places are free again: new jobs take them, no new place is made.
        slots.start(1);
        slots.start(1);
        assert_eq!((slots.slots.len(), Jobs::<u64>::len(&slots)), (3, 2));
        while poll_fn(|cx| Jobs::<u64>::poll_next(&mut slots, cx))
            .await
            .is_some()
        {}
        assert_eq!(ended.load(Ordering::Relaxed), 5);
    }

    /// A job that keeps waking itself does not keep the poller: it yields after one round.
    #[test]
    fn a_busy_job_lets_the_poller_yield() {
        let mut slots = Slots::new(|(): ()| {
            poll_fn(|cx: &mut Context<'_>| {
                cx.waker().wake_by_ref();
                Poll::<()>::Pending
            })
        });
        slots.start(());
        let waker = futures_util::task::noop_waker();
        let mut cx = Context::from_waker(&waker);
        assert!(Jobs::<()>::poll_next(&mut slots, &mut cx).is_pending());
    }
}
