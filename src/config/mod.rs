//! The YAML configuration, in the OpenTelemetry Collector's shape.

pub mod duration;
