//! What both binaries of mithril share (`mithril`, the API, and `mithril-workers`): the
//! credential-state rule that keeps a retired secret retired, the job payloads and the
//! queue they travel on, connections to the database and Redis, the settings both read
//! and the log set-up. It knows nothing of HTTP or of how a job is handled.
pub mod credentials;
pub mod db;
pub mod health;
pub mod jobs;
pub mod logs;
pub mod metrics;
pub mod queue;
pub mod redis_connect;
pub mod settings;
pub mod thresholds;
pub mod trace;
