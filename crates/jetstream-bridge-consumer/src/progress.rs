//! In-progress acks (`+WPI`): sent for messages that are delivered and still being worked on
//! or waiting for their turn, so they do not pass `ack_wait` and get redelivered elsewhere.

use std::future::Future;
use std::pin::Pin;
use std::task::Poll;

use async_nats::jetstream::{AckKind, Message};

use crate::process::Processor;

impl<H> Processor<H> {
    /// Runs `work`, sending an in-progress ack for each of `messages` every
    /// `progress_interval` while it runs.
    ///
    /// `work` is pinned by the caller: taken by value it would be stored twice in this
    /// future (the argument and its pinned copy), on every message's path.
    pub(crate) async fn with_progress<T>(
        &self,
        messages: &[&Message],
        mut work: Pin<&mut impl Future<Output = T>>,
    ) -> T {
        let Some(every) = self.progress_interval else {
            return work.await;
        };
        // Most work ends in its first poll: it needs no timer (reading the clock, allocating
        // and dropping one was a measurable part of a message's cost).
        if let Poll::Ready(out) = futures_util::poll!(work.as_mut()) {
            return out;
        }
        let mut ticker = tokio::time::interval_at(tokio::time::Instant::now() + every, every);
        loop {
            tokio::select! {
                biased;
                out = work.as_mut() => return out,
                // Boxed: rare, and inline it would size every job.
                _ = ticker.tick() => Box::pin(self.progress_ack(messages)).await,
            }
        }
    }

    /// [`with_progress`](Self::with_progress) for a set of messages that changes while `work`
    /// runs (`messages()` is read at every tick). Kept apart from `with_progress`, which is on
    /// every message's path: routing that through this closure-taking variant measurably
    /// slowed the per-message path (`bench consumer-no-inbox`).
    pub(crate) async fn with_progress_of<'m, T>(
        &self,
        messages: impl Fn() -> &'m [&'m Message],
        mut work: Pin<&mut impl Future<Output = T>>,
    ) -> T {
        let Some(every) = self.progress_interval else {
            return work.await;
        };
        let mut ticker = tokio::time::interval_at(tokio::time::Instant::now() + every, every);
        loop {
            tokio::select! {
                biased;
                out = work.as_mut() => return out,
                _ = ticker.tick() => Box::pin(self.progress_ack(messages())).await,
            }
        }
    }

    /// One in-progress ack (`+WPI`) per message.
    pub(crate) async fn progress_ack(&self, messages: &[&Message]) {
        for message in messages {
            if message.ack_with(AckKind::Progress).await.is_ok() {
                self.stats.update(|s| s.progress_acks += 1);
            }
        }
    }
}

/// The next tick of `ticker`; never, without one.
pub(crate) async fn tick(ticker: &mut Option<tokio::time::Interval>) {
    match ticker {
        Some(ticker) => {
            ticker.tick().await;
        }
        None => std::future::pending().await,
    }
}
