//! The `watch` collector: HTTP ingestion of training telemetry, durable SQLite storage, the
//! `tg-watch` detectors run on ingestion, Prometheus `/metrics`, a dashboard and a webhook.
//!
//! Design: evidence lives outside the training job. Each run has its own bearer token (issued
//! once at registration, stored only as a SHA-256 hash), so a compromised job can write only its
//! own run and never read or rewrite another's. A batch is committed to SQLite (WAL,
//! `synchronous=FULL`) together with the incidents it revealed *before* it is acknowledged;
//! batches that arrive together share one commit and its fsync (group commit, `commit.rs`).
//! Detector state lives in memory and is rebuilt by replaying the stored events at start-up.
//! The server binds loopback unless told otherwise. Reads (incidents, runs, metrics, dashboard)
//! need a separate read token when one is configured ([`Config::read_token`]), so that a job's
//! own credentials cannot learn what the detectors saw and adapt (an insider did exactly that);
//! without one, anyone who can reach the collector can read.
//!
//! The router is built by [`router`] without a socket; [`serve`] runs it; [`Client`] is the
//! blocking client the CLI uses.

mod app;
mod client;
mod collector;
mod commit;
mod dashboard;
mod decode;
mod error;
mod metrics;
mod store;
mod webhook;

pub use app::{MAX_BODY_BYTES, router, serve, serve_blocking};
pub use client::{Client, ClientError};
pub use collector::{
    Collector, Config, DEFAULT_MAX_BATCH_EVENTS, MAX_INCIDENTS_LISTED, RunSummary, now_unix_s,
};
pub use error::Error;
pub use store::RunInfo;
pub use webhook::ATTEMPTS as WEBHOOK_ATTEMPTS;
