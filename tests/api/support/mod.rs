//! The test harness: the app under test, calls over HTTP, assertions and polls, a real
//! SMTP server, Redis, and `mithril serve` as a child process.
mod app;
mod assert;
mod calls;
mod processes;
pub mod proxy;
mod seeding;
pub mod serve;
mod shared_redis;
pub mod smtp;

pub use app::*;
pub use assert::*;
pub use calls::*;
pub use processes::*;
pub use seeding::*;
pub use shared_redis::*;
