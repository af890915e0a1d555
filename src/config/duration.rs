//! Durations in config files are human strings: `10s`, `500ms`, `1m30s`.

use std::time::Duration;

use serde::{Deserialize, Deserializer};

pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
    let text = String::deserialize(d)?;
    humantime::parse_duration(&text).map_err(|e| {
        serde::de::Error::custom(format!("`{text}` is not a duration like `10s` or `500ms`: {e}"))
    })
}

pub fn deserialize_option<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Duration>, D::Error> {
    deserialize(d).map(Some)
}

/// A duration that must not be zero (a sweep interval of zero would spin).
pub fn deserialize_positive<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
    let duration = deserialize(d)?;
    if duration.is_zero() {
        return Err(serde::de::Error::custom("must be greater than zero"));
    }
    Ok(duration)
}
