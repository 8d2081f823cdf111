//! Black-box tests over real HTTP: the real app on port 0, a fresh database per test
//! (SQLite by default; PostgreSQL when `MITHRIL_TEST_POSTGRES_URL` is set).
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod access;
mod apply_policy;
mod bounds;
mod cache;
mod cli;
mod concurrency;
mod connections_read;
mod connections_write;
mod context;
mod edge;
mod envelope;
mod idempotency;
mod leaks;
mod lifecycle;
mod lifetime;
mod mail;
mod measure;
mod namespace;
mod notices;
mod openapi;
mod operations;
mod refresh_secret;
mod reminders;
mod retention;
mod rotation_effects;
mod seed;
mod shutdown;
mod sightings;
mod support;
mod traces;
mod upgrade;
mod verify;
mod workers_probe;
