//! The user guides in `docs/`, compiled: each `rust` block of each guide is a doc test of this
//! crate (`cargo test -p jetstream-bridge-guides --doc`), so a guide cannot drift from the API.
//! Not published; nothing to use here.

macro_rules! guides {
    ($($name:ident => $path:literal),* $(,)?) => {
        $(
            #[cfg(doctest)]
            #[doc = include_str!($path)]
            struct $name;
        )*
    };
}

guides! {
    GettingStarted => "../../../docs/GETTING_STARTED.md",
    Production => "../../../docs/PRODUCTION.md",
    Consumer => "../../../docs/CONSUMER.md",
    Outbox => "../../../docs/OUTBOX.md",
    Health => "../../../docs/HEALTH.md",
    Topology => "../../../docs/TOPOLOGY.md",
    Testing => "../../../docs/TESTING.md",
    Wire => "../../../docs/WIRE.md",
    MigratingFromRuby => "../../../docs/MIGRATING_FROM_RUBY.md",
    Reliability => "../../../docs/RELIABILITY.md",
    Readme => "../../../README.md",
}
