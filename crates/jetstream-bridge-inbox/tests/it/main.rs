//! Integration tests of the inbox against the shared PostgreSQL (`bash .ci/services.sh`).

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod record;
