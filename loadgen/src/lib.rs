//! keel-loadgen: a load generator for memcached-text servers (Keel, memcached) with HDR latency
//! reports. It is an independent client: it shares no code with keel-node, so a bug in the
//! server's protocol handling cannot hide behind the same bug here.
//!
//! Seams: [`config::Workload`] (what to run), [`run::run`] (run it and write the reports),
//! [`protocol::parse_reply`] (the pure reply parser), [`report::Summary`] (the JSON summary that
//! `compare`, `plot` and `report` read), [`html::page`] (the report page).

pub mod config;
pub mod dist;
pub mod engine;
pub mod html;
pub mod plot;
pub mod protocol;
pub mod report;
pub mod run;
pub mod stats;
pub mod value;
