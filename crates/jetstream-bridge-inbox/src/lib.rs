#![doc = include_str!("../README.md")]
#![cfg_attr(docsrs, feature(doc_cfg))]

mod admin;
mod error;
mod store;

pub use admin::InboxSummary;
pub use error::{InboxError, InboxErrorKind, Result};
pub use store::{Inbox, InboxEntry, InboxPayload, InboxStatus, Recorded};
