//! Headers and endpoints as the OTLP exporter and self-telemetry take and show them: the
//! `OTEL_EXPORTER_OTLP_HEADERS` list, the one check of a header, and what logs show of a
//! header or an endpoint URL (never a secret).

use std::borrow::Cow;

use url::Url;

use crate::config::percent_decode;

/// Header names with every value shown as `<redacted>`.
pub struct RedactedHeaders<'a, I: Iterator<Item = &'a str> + Clone>(pub I);

impl<'a, I: Iterator<Item = &'a str> + Clone> std::fmt::Debug for RedactedHeaders<'a, I> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_map().entries(self.0.clone().map(|k| (k, "<redacted>"))).finish()
    }
}

/// The URL without the password of its `user:password@` (the user stays, to tell endpoints
/// apart): what logs, errors and `Debug` show of an endpoint. The `url` crate finds the
/// userinfo (WHATWG parsing, as reqwest reads the endpoint); a URL with a password comes back
/// in its normalized form, any other unchanged.
pub fn redact_url(endpoint: &str) -> Cow<'_, str> {
    // A gRPC endpoint may be `host:port`, which `url` would read as scheme `host`: parse it
    // as the http URL tonic makes of it.
    const IMPLIED: &str = "http://";
    let schemeless = !endpoint.contains("://");
    let parsed = if schemeless { Url::parse(&format!("{IMPLIED}{endpoint}")) } else { Url::parse(endpoint) };
    match parsed {
        Ok(url) if url.password().is_none() => endpoint.into(),
        Ok(mut url) => {
            // Cannot fail: a URL with a password has a host.
            let _ = url.set_password(Some("***"));
            let shown = url.as_str();
            let shown = if schemeless { shown.strip_prefix(IMPLIED).unwrap_or(shown) } else { shown };
            shown.to_owned().into()
        }
        // Where userinfo would end in text that is not a URL is a guess: show none of it.
        Err(_) if endpoint.contains('@') => "<not shown: has userinfo but is not a valid URL>".into(),
        Err(_) => endpoint.into(),
    }
}

/// The one check of a header (gRPC metadata) entry, for validation and both transports: a
/// valid header name that is not binary gRPC metadata (`-bin`), and a value of visible ASCII,
/// space and tab. The reason never quotes the value: it is often a secret.
pub fn check_header(name: &str, value: &str) -> Result<(http::HeaderName, http::HeaderValue), String> {
    let key = http::HeaderName::from_bytes(name.as_bytes())
        .map_err(|_| format!("`{}` is not a valid header name", name.escape_debug()))?;
    if key.as_str().ends_with("-bin") {
        return Err("binary gRPC metadata (a name ending in -bin) is not supported".to_owned());
    }
    let value = http::HeaderValue::from_str(value).map_err(|_| {
        "the value is not a valid header value (visible ASCII, spaces and tabs only)".to_owned()
    })?;
    Ok((key, value))
}

/// Every header, checked; the error names the bad header and why.
pub fn header_map(headers: &[(String, String)]) -> Result<http::HeaderMap, (String, String)> {
    let mut map = http::HeaderMap::with_capacity(headers.len());
    for (name, value) in headers {
        let (k, v) = check_header(name, value).map_err(|reason| (name.clone(), reason))?;
        map.insert(k, v);
    }
    Ok(map)
}

const BAD_ESCAPE: &str = "has a bad %-escape (a % and two hex digits) or is not UTF-8";

/// Parses `k=v,k2=v2` (W3C baggage-like, values URL-decoded) as the OTLP spec defines
/// `OTEL_EXPORTER_OTLP_HEADERS`. Errors name the entry by position and key, never by value.
pub fn parse_env_headers(text: &str) -> Result<Vec<(String, String)>, String> {
    let mut out = Vec::new();
    for (i, item) in text.split(',').enumerate() {
        if item.trim().is_empty() {
            continue;
        }
        let n = i + 1;
        let (k, v) = item.split_once('=').ok_or_else(|| format!("entry {n} is not key=value"))?;
        let k = percent_decode(k.trim()).ok_or_else(|| format!("entry {n}: the key {BAD_ESCAPE}"))?;
        let v = percent_decode(v.trim())
            .ok_or_else(|| format!("entry {n} (`{}`): the value {BAD_ESCAPE}", k.escape_debug()))?;
        if k.is_empty() {
            return Err(format!("entry {n} has an empty key"));
        }
        out.push((k, v));
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_lose_their_password_and_keep_the_rest() {
        assert_eq!(redact_url("http://u:p@h:1/a@b"), "http://u:***@h:1/a@b");
        assert_eq!(
            redact_url("https://u:p%40ss@[::1]:4318/v1/metrics?k=v"),
            "https://u:***@[::1]:4318/v1/metrics?k=v"
        );
        assert_eq!(redact_url("u:secret@h:4317"), "u:***@h:4317/");
        assert_eq!(redact_url(":secret@h:4317"), ":***@h:4317/");
        // Nothing to hide: unchanged, not normalized.
        for same in ["h:4317", "http://h:4318/v1/metrics?a=b@c", "HTTP://H:4318", "http://user@h:4318"] {
            assert_eq!(redact_url(same), same);
        }
        let bad = redact_url("http://u:secret@h:99999");
        assert!(!bad.contains("secret"), "{bad}");
        assert_eq!(redact_url("http://h:99999"), "http://h:99999");
    }

    #[test]
    fn env_headers_are_percent_decoded_and_bad_escapes_name_the_entry_not_the_value() {
        let pairs = parse_env_headers("api-key=se%20cret, x-b%3Dc = 1 ,,").unwrap();
        assert_eq!(
            pairs,
            [("api-key".to_owned(), "se cret".to_owned()), ("x-b=c".to_owned(), "1".to_owned())]
        );
        for bad in ["a=%2", "a=%zz", "a=%+f", "a=%ff", "%=1"] {
            let e = parse_env_headers(bad).unwrap_err();
            assert!(e.starts_with("entry 1") && e.contains("%-escape"), "{bad}: {e}");
            assert!(!e.contains('%') || !e.contains(bad), "{bad}: the value is quoted: {e}");
        }
    }
}
