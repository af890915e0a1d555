//! The one parser of container image references (`registry:5000/team/app:1.2@sha256:…`), for
//! every metadata processor, following the Docker/OCI reference grammar
//! (`name [":" tag] ["@" digest]`, github.com/distribution/reference).

use crate::model::is_container_id;

/// The tag a runtime pulls when a reference names neither a tag nor a digest (the grammar's
/// `TagNameOnly` normalisation, applied by Docker, containerd, CRI-O and Podman alike): `nginx`
/// runs `nginx:latest`. A reference with only a digest has no tag.
pub const DEFAULT_TAG: &str = "latest";

/// An image reference split into its parts: `registry:port/path/name:tag@digest`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ImageRef<'a> {
    /// Registry and repository, as written (`registry:5000/team/app`, `busybox`).
    pub name: &'a str,
    /// The tag as written, else [`DEFAULT_TAG`] when there is no digest either.
    pub tag: Option<&'a str>,
    pub digest: Option<&'a str>,
}

/// Splits an image reference. The tag is after the last `:` of the last path component, so a
/// registry port (`host:5000/app`) is not taken for a tag. `None` for an empty reference or
/// a bare image id (`sha256:…`, or 64 hex digits), which names no image.
pub fn parse_image_reference(reference: &str) -> Option<ImageRef<'_>> {
    let reference = reference.trim();
    let (rest, digest) = match reference.split_once('@') {
        Some((rest, digest)) => (rest, Some(digest).filter(|d| !d.is_empty())),
        None => (reference, None),
    };
    if rest.is_empty() || rest.starts_with("sha256:") || is_container_id(rest) {
        return None;
    }
    let last_slash = rest.rfind('/').map_or(0, |i| i + 1);
    let (name, tag) = match rest[last_slash..].rfind(':') {
        Some(i) => (&rest[..last_slash + i], Some(&rest[last_slash + i + 1..]).filter(|t| !t.is_empty())),
        None => (rest, None),
    };
    if name.is_empty() || name.ends_with('/') {
        return None;
    }
    let tag = tag.or(digest.is_none().then_some(DEFAULT_TAG));
    Some(ImageRef { name, tag, digest })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn image_references_split_into_name_tag_and_digest() {
        type Parts<'a> = Option<(&'a str, Option<&'a str>, Option<&'a str>)>;
        let cases: &[(&str, Parts)] = &[
            ("busybox", Some(("busybox", Some("latest"), None))),
            ("busybox:1.36", Some(("busybox", Some("1.36"), None))),
            ("docker.io/library/busybox:1.36", Some(("docker.io/library/busybox", Some("1.36"), None))),
            ("localhost/bb:1", Some(("localhost/bb", Some("1"), None))),
            (
                "registry.example:5000/team/app",
                Some(("registry.example:5000/team/app", Some("latest"), None)),
            ),
            ("registry.example:5000/team/app:v2", Some(("registry.example:5000/team/app", Some("v2"), None))),
            ("ghcr.io/o/app:v1@sha256:abcd", Some(("ghcr.io/o/app", Some("v1"), Some("sha256:abcd")))),
            ("ghcr.io/o/app@sha256:abcd", Some(("ghcr.io/o/app", None, Some("sha256:abcd")))),
            ("app:", Some(("app", Some("latest"), None))),
            ("sha256:0123abcd", None),
            (&"a".repeat(64), None),
            ("", None),
            (":tag", None),
            ("host:5000/", None),
        ];
        for (input, expected) in cases {
            let got = parse_image_reference(input).map(|r| (r.name, r.tag, r.digest));
            assert_eq!(got, *expected, "{input}");
        }
    }
}
