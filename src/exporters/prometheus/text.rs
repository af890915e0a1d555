//! Writing the Prometheus text exposition format 0.0.4 and OpenMetrics 1.0 into a `String`.
//! Pure: no I/O, no allocation per sample beyond the output buffer's growth.

use std::fmt::Write;
use std::time::{SystemTime, UNIX_EPOCH};

use crate::model::{AttrValue, Value};

/// The two exposition formats.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    /// `text/plain; version=0.0.4`: what every Prometheus understands.
    Text,
    /// `application/openmetrics-text; version=1.0.0`, sent when the scraper asks for it.
    OpenMetrics,
}

pub const TEXT_CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";
pub const OPENMETRICS_CONTENT_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

impl Format {
    /// Picks the format from an `Accept` header: OpenMetrics when it is listed with a
    /// non-zero quality, else the classic text format.
    pub fn from_accept(accept: Option<&str>) -> Format {
        let Some(accept) = accept else { return Format::Text };
        for item in accept.split(',') {
            let mut parts = item.split(';').map(str::trim);
            let media = parts.next().unwrap_or_default();
            if !media.eq_ignore_ascii_case("application/openmetrics-text") {
                continue;
            }
            let zero_quality = parts.any(|p| {
                p.strip_prefix("q=").and_then(|q| q.trim().parse::<f64>().ok()).is_some_and(|q| q <= 0.0)
            });
            if !zero_quality {
                return Format::OpenMetrics;
            }
        }
        Format::Text
    }

    pub fn content_type(self) -> &'static str {
        match self {
            Format::Text => TEXT_CONTENT_TYPE,
            Format::OpenMetrics => OPENMETRICS_CONTENT_TYPE,
        }
    }
}

/// The type line of a metric family.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FamilyKind {
    /// Sample names end in `_total`.
    Counter,
    Gauge,
    /// `target_info`: an OpenMetrics info metric, a gauge of 1 in the text format.
    Info,
}

/// Accumulates one exposition.
pub struct Writer {
    pub out: String,
    format: Format,
    /// The timestamp suffix of every sample (` 1700000000123` or ` 1700000000.123`), or empty.
    timestamp: String,
}

impl Writer {
    /// `time`: the instant every sample is stamped with, or `None` for no timestamps (the
    /// scraper then uses the scrape's time).
    pub fn new(format: Format, time: Option<SystemTime>, capacity: usize) -> Writer {
        let timestamp = match time {
            None => String::new(),
            Some(t) => {
                let ms = t.duration_since(UNIX_EPOCH).map(|d| d.as_millis()).unwrap_or(0);
                match format {
                    Format::Text => format!(" {ms}"),
                    Format::OpenMetrics => format!(" {}.{:03}", ms / 1000, ms % 1000),
                }
            }
        };
        Writer { out: String::with_capacity(capacity), format, timestamp }
    }

    /// `# HELP` and `# TYPE` of a family. `name` is the sample name (with `_total` for
    /// counters); OpenMetrics names the family without it.
    pub fn family(&mut self, name: &str, kind: FamilyKind, help: &str) {
        let (family, ty) = match (self.format, kind) {
            (Format::Text, FamilyKind::Counter) => (name, "counter"),
            (Format::Text, FamilyKind::Gauge | FamilyKind::Info) => (name, "gauge"),
            (Format::OpenMetrics, FamilyKind::Counter) => {
                (name.strip_suffix("_total").unwrap_or(name), "counter")
            }
            (Format::OpenMetrics, FamilyKind::Gauge) => (name, "gauge"),
            (Format::OpenMetrics, FamilyKind::Info) => (name.strip_suffix("_info").unwrap_or(name), "info"),
        };
        self.out.push_str("# HELP ");
        self.out.push_str(family);
        self.out.push(' ');
        for c in help.chars() {
            match c {
                '\\' => self.out.push_str("\\\\"),
                '\n' => self.out.push_str("\\n"),
                '"' if self.format == Format::OpenMetrics => self.out.push_str("\\\""),
                c => self.out.push(c),
            }
        }
        self.out.push_str("\n# TYPE ");
        self.out.push_str(family);
        self.out.push(' ');
        self.out.push_str(ty);
        self.out.push('\n');
    }

    /// Starts a sample line: the name and the opening brace. Follow with [`Writer::label`]
    /// calls and [`Writer::end_sample`].
    pub fn start_sample(&mut self, name: &str) {
        self.out.push_str(name);
        self.out.push('{');
    }

    /// One `name="value"` pair; `first` leaves out the comma.
    pub fn label(&mut self, first: bool, name: &str, value: &str) {
        if !first {
            self.out.push(',');
        }
        self.out.push_str(name);
        self.out.push_str("=\"");
        escape_label_value(&mut self.out, value);
        self.out.push('"');
    }

    pub fn end_sample(&mut self, value: Value) {
        self.out.push_str("} ");
        write_value(&mut self.out, value);
        self.out.push_str(&self.timestamp);
        self.out.push('\n');
    }

    /// The finished exposition (OpenMetrics ends with `# EOF`).
    pub fn finish(mut self) -> String {
        if self.format == Format::OpenMetrics {
            self.out.push_str("# EOF\n");
        }
        self.out
    }
}

fn escape_label_value(out: &mut String, value: &str) {
    // A byte scan: most values (ids, names) need no escaping, and this is per label of every
    // sample.
    if !value.bytes().any(|b| matches!(b, b'\\' | b'"' | b'\n')) {
        out.push_str(value);
        return;
    }
    for c in value.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '"' => out.push_str("\\\""),
            '\n' => out.push_str("\\n"),
            c => out.push(c),
        }
    }
}

/// Integers as integers; floats in Rust's shortest form that parses back to the same `f64`
/// (never an exponent, which both formats would accept too).
pub fn write_value(out: &mut String, value: Value) {
    match value {
        // itoa: the same digits as `{v}` without the formatting machinery, per sample.
        Value::Int(v) => out.push_str(itoa::Buffer::new().format(v)),
        Value::Double(v) if v.is_nan() => out.push_str("NaN"),
        Value::Double(v) if v.is_infinite() => out.push_str(if v > 0.0 { "+Inf" } else { "-Inf" }),
        Value::Double(v) => {
            let _ = write!(out, "{v}");
        }
    }
}

/// An attribute value as a label value: strings as they are, arrays as JSON (what the
/// OpenTelemetry → Prometheus rules ask for non-string values).
pub fn attr_text(value: &AttrValue) -> std::borrow::Cow<'_, str> {
    match value {
        AttrValue::Str(s) => std::borrow::Cow::Borrowed(s),
        AttrValue::Int(i) => std::borrow::Cow::Owned(i.to_string()),
        AttrValue::Bool(b) => std::borrow::Cow::Borrowed(if *b { "true" } else { "false" }),
        AttrValue::StrArray(items) => {
            std::borrow::Cow::Owned(serde_json::to_string(items).unwrap_or_else(|_| "[]".to_owned()))
        }
    }
}

/// A Prometheus label name from an attribute key: every character outside `[a-zA-Z0-9_]`
/// becomes `_`, runs of `_` collapse, and a leading digit gets a `key_` prefix.
pub fn sanitize_label(key: &str) -> String {
    let mut out = String::with_capacity(key.len() + 4);
    if key.starts_with(|c: char| c.is_ascii_digit()) {
        out.push_str("key_");
    }
    for c in key.chars() {
        let c = if c.is_ascii_alphanumeric() || c == '_' { c } else { '_' };
        if c == '_' && out.ends_with('_') {
            continue;
        }
        out.push(c);
    }
    if out.is_empty() {
        out.push('_');
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn accept_header_chooses_openmetrics_only_when_asked() {
        assert_eq!(Format::from_accept(None), Format::Text);
        assert_eq!(Format::from_accept(Some("text/plain;version=0.0.4")), Format::Text);
        // What Prometheus 2.42 sends.
        let prom = "application/openmetrics-text;version=1.0.0,application/openmetrics-text;version=0.0.1;q=0.75,text/plain;version=0.0.4;q=0.5,*/*;q=0.1";
        assert_eq!(Format::from_accept(Some(prom)), Format::OpenMetrics);
        assert_eq!(Format::from_accept(Some("application/openmetrics-text; q=0")), Format::Text);
    }

    #[test]
    fn families_samples_and_escaping_in_both_formats() {
        let t = UNIX_EPOCH + Duration::from_millis(1_700_000_000_123);
        for (format, family, ts) in
            [(Format::Text, "x_total", " 1700000000123"), (Format::OpenMetrics, "x", " 1700000000.123")]
        {
            let mut w = Writer::new(format, Some(t), 0);
            w.family("x_total", FamilyKind::Counter, "a \\ help\nline");
            w.start_sample("x_total");
            w.label(true, "a", "q\"u\\o\nte");
            w.label(false, "b", "plain");
            w.end_sample(Value::Double(0.1));
            let text = w.finish();
            assert!(
                text.starts_with(&format!("# HELP {family} a \\\\ help\\nline\n# TYPE {family} counter\n")),
                "{text}"
            );
            assert!(
                text.contains(&format!("x_total{{a=\"q\\\"u\\\\o\\nte\",b=\"plain\"}} 0.1{ts}\n")),
                "{text}"
            );
            assert_eq!(text.ends_with("# EOF\n"), format == Format::OpenMetrics);
        }
    }

    #[test]
    fn values_round_trip_and_label_names_are_sanitized() {
        let mut s = String::new();
        for v in [Value::Int(-3), Value::Double(1e21), Value::Double(1.0 / 3.0), Value::Double(f64::NAN)] {
            write_value(&mut s, v);
            s.push(' ');
        }
        assert_eq!(s, "-3 1000000000000000000000 0.3333333333333333 NaN ");
        assert_eq!("0.3333333333333333".parse::<f64>().unwrap(), 1.0 / 3.0);
        assert_eq!(sanitize_label("k8s.pod.uid"), "k8s_pod_uid");
        assert_eq!(sanitize_label("a..b/c"), "a_b_c");
        assert_eq!(sanitize_label("9x"), "key_9x");
        assert_eq!(attr_text(&AttrValue::StrArray(vec!["a".into(), "b\"".into()])), "[\"a\",\"b\\\"\"]");
    }
}
