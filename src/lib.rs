//! lbx-relay receives encrypted Learnybox webhooks, stores each event durably, and delivers it to
//! the CRM and automation APIs its routes name, with retries, deduplication and replay.
//!
//! # Layout
//! The modules follow a request through the relay, and import one another without cycles
//! (`tests/it/architecture.rs` checks it; README's "Architecture" draws the layers):
//! - [`http`] receives (`POST /hooks/{source}`, given only the ingest context) and serves the
//!   admin API (given the wired [`relay::Relay`]);
//! - [`ingest`] runs one body through [`crypto`] (envelope detection, AES-256-CBC), [`event`]
//!   (type and id), [`dedup`], [`routing`] and into the [`store`] in one transaction, then hands
//!   the new deliveries to delivery's [`delivery::Producer`];
//! - [`delivery`] workers claim stored deliveries, render them with [`templates`], send them and
//!   settle the outcome, seeing only the `DeliveryContext`;
//! - [`config`] reads routes.toml, [`compiled`] holds one loaded configuration, [`relay`] wires the
//!   parts' contexts (and only it does), [`app`] binds and serves them, [`clock`] is where every
//!   part reads "now" (and the only module that reads the system time), [`cli`] is the command
//!   line, [`preflight`] what `check` reports and `serve` refuses, [`fields`] the payload fields a
//!   route reads, [`telemetry`] the logs and metrics, [`housekeeping`] the silence alert, gauges
//!   and retention purge, [`alerts`] the `[alerts]` webhook, both reading what ingest and
//!   delivery record in [`signals`]; [`rate_window`] is the sliding
//!   window both the delivery gates and the PostgreSQL store use; [`reconcile`] compares
//!   Learnybox's API with the events received and recovers the missing ones through ingest; the
//!   load tool (`bench`) is built only with the `bench` feature.

pub mod alerts;
pub mod app;
#[cfg(feature = "bench")]
pub mod bench;
pub mod cli;
pub mod clock;
pub mod compiled;
pub mod config;
pub mod console;
pub mod coverage;
pub mod crypto;
pub mod dedup;
pub mod delivery;
pub mod email;
pub mod erasure;
pub mod event;
pub mod fields;
pub mod follow;
pub mod housekeeping;
pub mod http;
pub mod ingest;
pub mod init;
pub mod lint;
pub mod preflight;
pub mod proxy;
pub mod rate_window;
pub mod reconcile;
pub mod relay;
pub mod routing;
pub mod secrets;
pub mod signals;
pub mod store;
pub mod suggest;
pub mod telemetry;
pub mod templates;
