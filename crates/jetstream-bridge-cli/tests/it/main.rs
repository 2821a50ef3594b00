//! Integration tests of the jetstream-bridge command line.
