//! Process plumbing shared by [`crate::NatsServer`] and [`crate::PgServer`]: finding binaries,
//! free loopback ports, signals by PID, and log tails for panic messages.

use std::net::{Ipv4Addr, TcpListener};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Child, ExitStatus};
use std::time::Duration;

use rustix::process::{Pid, Signal};

/// The only address the testkit ever binds or connects to.
pub(crate) const LOOPBACK: Ipv4Addr = Ipv4Addr::LOCALHOST;

/// Finds an executable: `$env_var` (a full path) if given and set, then `PATH`, then
/// `fallback_dirs`.
///
/// Panics with `install_hint` when none exists.
pub(crate) fn find_binary(
    name: &str,
    env_var: Option<&str>,
    fallback_dirs: &[PathBuf],
    hint: &str,
) -> PathBuf {
    if let Some((var, path)) = env_var.and_then(|var| Some((var, std::env::var_os(var)?))) {
        let path = PathBuf::from(path);
        assert!(
            is_executable(&path),
            "{var}={} is not an executable file",
            path.display()
        );
        return path;
    }
    let path_dirs = std::env::var_os("PATH")
        .map(|p| std::env::split_paths(&p).collect::<Vec<_>>())
        .unwrap_or_default();
    path_dirs
        .iter()
        .chain(fallback_dirs)
        .map(|dir| dir.join(name))
        .find(|candidate| is_executable(candidate))
        .unwrap_or_else(|| panic!("`{name}` not found on PATH or in {fallback_dirs:?}; {hint}"))
}

fn is_executable(path: &Path) -> bool {
    path.metadata()
        .is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
}

/// Asks the kernel for free loopback ports by binding `127.0.0.1:0`, then releases them.
///
/// All `n` listeners are open at once, so the ports are distinct. Another process could take a
/// port before the server binds it; callers retry on a bind failure.
pub(crate) fn free_ports(n: usize) -> Vec<u16> {
    let listeners: Vec<TcpListener> = (0..n)
        .map(|_| {
            TcpListener::bind((LOOPBACK, 0)).expect("cannot bind 127.0.0.1:0 to find a free port")
        })
        .collect();
    listeners
        .iter()
        .map(|l| {
            l.local_addr()
                .expect("local_addr of a bound listener")
                .port()
        })
        .collect()
}

/// SIGKILLs `pid` and, when `tree`, every direct child of it.
///
/// For PostgreSQL: each backend calls `setsid()`, so a process-group kill would miss them. The
/// parent is SIGSTOPped first so it cannot fork while its children are listed; children are
/// listed before the parent dies (after that they are reparented and no longer findable).
fn kill_pid(pid: Pid, tree: bool) {
    if tree {
        let _ = rustix::process::kill_process(pid, Signal::STOP);
        for child in child_pids(pid) {
            let _ = rustix::process::kill_process(child, Signal::KILL);
        }
    }
    let _ = rustix::process::kill_process(pid, Signal::KILL);
}

/// Direct children of `parent`, from `/proc/<pid>/stat`.
fn child_pids(parent: Pid) -> Vec<Pid> {
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    entries
        .filter_map(Result::ok)
        .filter_map(|entry| {
            let pid: i32 = entry.file_name().to_str()?.parse().ok()?;
            let stat = std::fs::read_to_string(entry.path().join("stat")).ok()?;
            // `pid (comm) state ppid …`; comm may contain spaces and parentheses.
            let ppid: i32 = stat
                .rsplit_once(')')?
                .1
                .split_whitespace()
                .nth(1)?
                .parse()
                .ok()?;
            (ppid == parent.as_raw_pid())
                .then(|| Pid::from_raw(pid))
                .flatten()
        })
        .collect()
}

/// SIGKILLs the child (and its direct children when `tree`) and reaps it, so its PID is gone
/// on return.
pub(crate) fn kill_and_reap(mut child: Child, tree: bool) {
    kill_pid(Pid::from_child(&child), tree);
    let _ = child.wait();
}

/// Sends `signal` to the child, then waits up to `grace` for it to exit (off the async
/// runtime's worker threads); past `grace` it SIGKILLs (with its children when `tree`).
/// Returns the exit status when the child exited by itself within `grace`.
pub(crate) async fn terminate(
    mut child: Child,
    signal: Signal,
    grace: Duration,
    tree: bool,
) -> Option<ExitStatus> {
    let pid = Pid::from_child(&child);
    let _ = rustix::process::kill_process(pid, signal);
    let mut wait = tokio::task::spawn_blocking(move || child.wait());
    match tokio::time::timeout(grace, &mut wait).await {
        Ok(Ok(Ok(status))) => Some(status),
        Ok(_) => None,
        Err(_elapsed) => {
            kill_pid(pid, tree);
            let _ = wait.await;
            None
        }
    }
}

/// The last `lines` lines of a log file, for panic messages.
pub(crate) fn log_tail(path: &Path, lines: usize) -> String {
    match std::fs::read_to_string(path) {
        Ok(text) => {
            let all: Vec<&str> = text.lines().collect();
            let start = all.len().saturating_sub(lines);
            format!(
                "--- last {} lines of {} ---\n{}",
                all.len() - start,
                path.display(),
                all[start..].join("\n")
            )
        }
        Err(e) => format!("(cannot read {}: {e})", path.display()),
    }
}

/// An append-mode log file handed to a child as stdout and stderr.
pub(crate) fn log_stdio(path: &Path) -> (std::process::Stdio, std::process::Stdio) {
    let file = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
        .unwrap_or_else(|e| panic!("cannot open log file {}: {e}", path.display()));
    let err = file
        .try_clone()
        .unwrap_or_else(|e| panic!("cannot clone log file handle {}: {e}", path.display()));
    (file.into(), err.into())
}
