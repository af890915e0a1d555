//! README statements the repository can check: the Layout section names every module and
//! directory there is, and figures quoted twice agree with the measurement they quote.
use std::path::Path;

const ROOT: &str = env!("CARGO_MANIFEST_DIR");

fn readme() -> String {
    std::fs::read_to_string(format!("{ROOT}/README.md")).unwrap()
}

fn section<'a>(text: &'a str, heading: &str) -> &'a str {
    let start = text.find(heading).unwrap_or_else(|| panic!("no {heading}"));
    let rest = &text[start + heading.len()..];
    &rest[..rest.find("\n## ").unwrap_or(rest.len())]
}

/// Every file and directory directly under src/, every deploy overlay and every top-level
/// directory of the repository is named in the Layout block.
#[test]
fn layout_names_every_module_and_directory() {
    let readme = readme();
    let layout = section(&readme, "## Layout");
    let mut missing = Vec::new();
    for entry in std::fs::read_dir(format!("{ROOT}/src")).unwrap() {
        let name = entry.unwrap().file_name().into_string().unwrap();
        let shown = name.trim_end_matches(".rs");
        if name == "lib.rs" {
            continue;
        }
        if !layout.contains(&format!("src/{name}"))
            && !layout.contains(&format!("{shown}.rs"))
            && !layout.contains(&format!("src/{shown}/"))
        {
            missing.push(format!("src/{name}"));
        }
    }
    for entry in std::fs::read_dir(format!("{ROOT}/deploy/kubernetes/overlays")).unwrap() {
        let name = entry.unwrap().file_name().into_string().unwrap();
        if !layout.contains(&name) {
            missing.push(format!("deploy/kubernetes/overlays/{name}"));
        }
    }
    for dir in ["src", "fixtures", "tests", "benches", "deploy", "config", "scripts", "fuzz"] {
        assert!(Path::new(ROOT).join(dir).is_dir(), "{dir}");
        if !layout.contains(&format!("{dir}/")) {
            missing.push(format!("{dir}/"));
        }
    }
    assert!(missing.is_empty(), "the Layout section does not name: {missing:?}");
}

/// The configuration table quotes gzip level 1's cost as the Performance section measured it.
#[test]
fn the_gzip_level_cost_is_quoted_as_measured() {
    let readme = readme();
    let flat = readme.replace('\n', " ");
    let measured = flat
        .split("gzip stays, at level 1: a ")
        .nth(1)
        .and_then(|rest| rest.split(" of level 6").next())
        .expect("the Performance section's gzip level 1 figure");
    let row =
        readme.lines().find(|l| l.starts_with("| `compression_level` |")).expect("the compression_level row");
    assert!(row.contains(&format!("level 1 costs a {measured} of")), "`{row}` does not say `a {measured}`");
}
