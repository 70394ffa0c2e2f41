//! Integration tests: the real relay on loopback ports with a temporary SQLite file, and a real
//! HTTP server standing in for the CRM.

mod helpers;

mod admin;
mod alerts;
mod answers;
mod architecture;
#[cfg(feature = "bench")]
mod bench;
mod check_lint;
mod cli;
mod connectors;
mod consent;
mod console;
mod contracts;
mod crash;
mod dashboard;
mod delivery;
mod env_file;
mod erasure;
mod first_hour;
mod handoff;
mod hardening;
mod hostile_crm;
mod ingest;
mod lifecycle;
mod lost_hooks;
mod migration;
mod multistep;
mod oauth;
mod pacing;
mod properties;
mod reconcile;
mod scale_out;
mod steps;
mod store_contract;
mod triage;
mod types;
mod vectors;
mod vendors;
