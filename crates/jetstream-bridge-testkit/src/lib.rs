//! Test support for jetstream-bridge (filled in progress).
