//! podometer: per-container and per-pod CPU, memory, block I/O and network metrics, pushed as
//! OTLP.
//!
//! Data path: [`sources`] fill a [`model::Sweep`], [`model::StartTimes`] stamps counters,
//! [`processors`] change it, [`exporters`] push it; [`pipeline`] wires them from [`config`].

pub mod agent_counters;
pub mod config;
pub mod exporters;
pub mod fdlimit;
#[cfg(feature = "fuzzing")]
#[doc(hidden)]
pub mod fuzzing;
pub mod glob;
pub mod health;
pub mod model;
pub mod pipeline;
pub mod processors;
pub mod resource;
pub mod self_telemetry_otlp;
pub mod semconv;
pub mod sources;
pub mod views;
