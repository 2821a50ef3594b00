//! Project tasks for jetstream-bridge. Run `cargo xtask --help`.
#![allow(clippy::print_stdout)]

fn main() {}
