//! Integration tests of the testkit against real servers: the shared NATS and PostgreSQL
//! (`bash .ci/services.sh`) and private `nats-server` / `postgres` processes.

// clippy.toml's allow-unwrap-in-tests covers `#[test]` fns only, not the helpers beside them.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod eventually;
mod fault_nats_cluster;
mod fault_nats_server;
mod fault_pg_server;
mod service;
mod shared_nats;
mod test_db;

/// Whether a process with this PID exists (a reaped child does not).
pub(crate) fn pid_alive(pid: u32) -> bool {
    std::path::Path::new(&format!("/proc/{pid}")).exists()
}
