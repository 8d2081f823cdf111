//! Background work of mithril: owner notices, credential invalidation and reminders
//! before secrets expire, shared by `mithril serve` (in-process) and the
//! `mithril-workers` binary.
pub mod credentials;
pub mod db;
pub mod jobs;
pub mod local_time;
pub mod logs;
pub mod mail;
pub mod notify;
pub mod poll;
pub mod prune;
pub mod queue;
pub mod redis_connect;
pub mod remind;
pub mod run;
pub mod settings;
