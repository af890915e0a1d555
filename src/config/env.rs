//! `${env:NAME}` and `${env:NAME:-default}` substitution, applied to the file's text before it
//! is parsed (as the OpenTelemetry Collector does). `$${` stands for a literal `${`. Comments
//! are left alone, so documentation in a config file may show the syntax.

#[derive(Debug, PartialEq, Eq)]
pub struct SubstitutionError {
    pub line: u64,
    pub column: u64,
    pub reason: String,
}

pub fn substitute(text: &str, env: &impl Fn(&str) -> Option<String>) -> Result<String, SubstitutionError> {
    let mut out = String::with_capacity(text.len());
    let mut offset = 0;
    for line in text.split_inclusive('\n') {
        let code_len = comment_start(line).unwrap_or(line.len());
        out.push_str(&substitute_span(text, offset, &line[..code_len], env)?);
        out.push_str(&line[code_len..]);
        offset += line.len();
    }
    Ok(out)
}

/// Where a YAML comment starts on this line: a `#` at the start or after white space, outside
/// quotes.
fn comment_start(line: &str) -> Option<usize> {
    let (mut single, mut double) = (false, false);
    let mut prev = ' ';
    for (i, c) in line.char_indices() {
        match c {
            '\'' if !double => single = !single,
            '"' if !single && prev != '\\' => double = !double,
            '#' if !single && !double && (prev == ' ' || prev == '\t' || i == 0) => return Some(i),
            _ => {}
        }
        prev = c;
    }
    None
}

/// Substitutes within `span`, which starts at byte `base` of `text` (for positions).
fn substitute_span(
    text: &str,
    base: usize,
    span: &str,
    env: &impl Fn(&str) -> Option<String>,
) -> Result<String, SubstitutionError> {
    let mut out = String::with_capacity(span.len());
    let mut rest = span;
    while let Some(i) = rest.find('$') {
        out.push_str(&rest[..i]);
        let tail = &rest[i..];
        if let Some(after) = tail.strip_prefix("$${") {
            out.push_str("${");
            rest = after;
        } else if let Some(body_start) = tail.strip_prefix("${") {
            let offset = base + span.len() - tail.len();
            let (line, column) = position(text, offset);
            let Some(end) = body_start.find('}') else {
                return Err(SubstitutionError { line, column, reason: "`${` is not closed by `}`".into() });
            };
            let body = &body_start[..end];
            let Some(spec) = body.strip_prefix("env:") else {
                return Err(SubstitutionError {
                    line,
                    column,
                    reason: format!("`${{{body}}}` is not `${{env:NAME}}` or `${{env:NAME:-default}}`"),
                });
            };
            let (name, default) = match spec.split_once(":-") {
                Some((name, default)) => (name, Some(default)),
                None => (spec, None),
            };
            if name.is_empty() || !name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_') {
                return Err(SubstitutionError {
                    line,
                    column,
                    reason: format!("`{name}` is not an environment variable name"),
                });
            }
            match (env(name), default) {
                (Some(value), _) => out.push_str(&value),
                (None, Some(default)) => out.push_str(default),
                (None, None) => {
                    return Err(SubstitutionError {
                        line,
                        column,
                        reason: format!(
                            "environment variable {name} is not set and `${{env:{name}}}` has no default"
                        ),
                    })
                }
            }
            rest = &body_start[end + 1..];
        } else {
            out.push('$');
            rest = &tail[1..];
        }
    }
    out.push_str(rest);
    Ok(out)
}

/// 1-based line and column of a byte offset.
fn position(text: &str, offset: usize) -> (u64, u64) {
    let before = &text[..offset];
    let line = before.matches('\n').count() as u64 + 1;
    let column = before.rsplit('\n').next().map(|l| l.chars().count()).unwrap_or(0) as u64 + 1;
    (line, column)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(name: &str) -> Option<String> {
        (name == "HOST").then(|| "10.0.0.1".to_owned())
    }

    #[test]
    fn substitutes_set_variables_defaults_and_escapes() {
        let text = "a: ${env:HOST}:4317\nb: ${env:PORT:-4318}\nc: $${env:HOST}\nd: $5";
        assert_eq!(substitute(text, &env).unwrap(), "a: 10.0.0.1:4317\nb: 4318\nc: ${env:HOST}\nd: $5");
    }

    #[test]
    fn unset_variable_without_default_names_it_and_its_position() {
        let err = substitute("x: 1\ny: ${env:NOPE}", &env).unwrap_err();
        assert_eq!((err.line, err.column), (2, 4));
        assert!(err.reason.contains("NOPE"), "{}", err.reason);
    }

    #[test]
    fn comments_are_left_alone() {
        let text = "# use ${env:NAME} here\na: '#${env:HOST}' # ${env:NOPE}\n";
        assert_eq!(substitute(text, &env).unwrap(), "# use ${env:NAME} here\na: '#10.0.0.1' # ${env:NOPE}\n");
    }

    #[test]
    fn malformed_references_are_errors() {
        assert!(substitute("${env:A", &env).is_err());
        assert!(substitute("${file:/x}", &env).is_err());
        assert!(substitute("${env:A-B}", &env).is_err());
    }
}
