//! Shell-style globs (`*` and `?`) for interface and metric names; enough for config filters
//! without pulling in a regex engine.
//!
//! Hand-written on purpose: `filter`'s `exclude_metrics` runs every point of every container
//! through these each sweep. Against `wildmatch` 2.7 (the crate with the same `*`/`?`-only
//! syntax; `globset` needs Rust 1.88, `glob::Pattern` adds `[...]` classes that would change
//! what existing patterns mean), callgrind on a release build counts 680 instructions per
//! metric name against 4 patterns (24 names of a container, 7 of them dropped) here and
//! 1,363 with `wildmatch`: 16k more instructions per container and sweep, more than half of
//! the cgroup source's own 27k (docs/performance.md).

use serde::{Deserialize, Deserializer};

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Glob(String);

impl Glob {
    pub fn new(pattern: &str) -> Glob {
        Glob(pattern.to_owned())
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }

    pub fn matches(&self, text: &str) -> bool {
        glob_match(self.0.as_bytes(), text.as_bytes())
    }
}

impl<'de> Deserialize<'de> for Glob {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Glob, D::Error> {
        String::deserialize(d).map(Glob)
    }
}

/// Iterative matcher with single-star backtracking: linear in practice, no recursion.
fn glob_match(pattern: &[u8], text: &[u8]) -> bool {
    let (mut p, mut t) = (0, 0);
    let mut star: Option<(usize, usize)> = None;
    while t < text.len() {
        if p < pattern.len() && (pattern[p] == b'?' || pattern[p] == text[t]) {
            p += 1;
            t += 1;
        } else if p < pattern.len() && pattern[p] == b'*' {
            star = Some((p, t));
            p += 1;
        } else if let Some((sp, st)) = star {
            p = sp + 1;
            t = st + 1;
            star = Some((sp, st + 1));
        } else {
            return false;
        }
    }
    pattern[p..].iter().all(|&c| c == b'*')
}

#[cfg(test)]
mod tests {
    use super::Glob;

    #[test]
    fn matches_stars_and_question_marks() {
        assert!(Glob::new("veth*").matches("veth1234"));
        assert!(Glob::new("*").matches(""));
        assert!(Glob::new("eth?").matches("eth0"));
        assert!(!Glob::new("eth?").matches("eth10"));
        assert!(Glob::new("container.*.time").matches("container.cpu.time"));
        assert!(!Glob::new("container.*.time").matches("container.cpu.usage"));
        assert!(Glob::new("lo").matches("lo"));
        assert!(!Glob::new("lo").matches("lo0"));
        assert!(Glob::new("a*b*c").matches("aXbYbZc"));
    }
}
