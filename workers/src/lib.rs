//! Background work of mithril: owner notices, credential invalidation and reminders
//! before secrets expire, shared by `mithril serve` (in-process) and the
//! `mithril-workers` binary. What the API shares with it (job payloads, the queue, the
//! credential rule, settings) is in `kernel`.
pub mod claim;
mod failure;
mod handle;
pub mod local_time;
pub mod mail;
pub mod notify;
pub mod poll;
pub mod probe;
pub mod prune;
pub mod remind;
pub mod run;
