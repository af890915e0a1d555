//! Statements of the README and docs/ that the repository can check: the layout in
//! docs/architecture.md names every module and directory there is, figures quoted in two places
//! agree with the measurement they quote, the README's example configuration is valid, and
//! every relative link resolves.
use std::collections::BTreeSet;
use std::path::Path;

const ROOT: &str = env!("CARGO_MANIFEST_DIR");

fn read(path: &str) -> String {
    std::fs::read_to_string(format!("{ROOT}/{path}")).unwrap_or_else(|e| panic!("{path}: {e}"))
}

/// The text from `heading` to the next heading of the same or a higher level.
fn section<'a>(text: &'a str, heading: &str) -> &'a str {
    let start = text.find(heading).unwrap_or_else(|| panic!("no {heading}"));
    let rest = &text[start + heading.len()..];
    let level = heading.chars().take_while(|&c| c == '#').count();
    let end = rest
        .match_indices("\n#")
        .find(|(i, _)| rest[i + 1..].chars().take_while(|&c| c == '#').count() <= level)
        .map_or(rest.len(), |(i, _)| i);
    &rest[..end]
}

fn names_in(dir: &str) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(format!("{ROOT}/{dir}"))
        .unwrap_or_else(|e| panic!("{dir}: {e}"))
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    names.sort();
    names
}

/// Every file and directory directly under src/, every module under src/sources/,
/// src/processors/ and src/exporters/, every deploy overlay and every top-level directory is
/// named in the Layout block of docs/architecture.md; every `src/` path the block names exists.
/// The listing is read at test time, so a file added, moved or renamed fails here until the
/// block says so.
#[test]
fn layout_names_every_module_and_directory() {
    let doc = read("docs/architecture.md");
    let layout = section(&doc, "## Layout");
    let mut missing = Vec::new();
    for name in names_in("src") {
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
    for dir in ["src/sources", "src/processors", "src/exporters"] {
        let line = layout
            .lines()
            .find(|l| l.starts_with(&format!("{dir}/")))
            .unwrap_or_else(|| panic!("the Layout block has no line for {dir}/"));
        for name in names_in(dir) {
            let module = name.trim_end_matches(".rs");
            if module == "mod" {
                continue;
            }
            let named = line.split(|c: char| !(c.is_alphanumeric() || c == '_')).any(|word| word == module);
            if !named {
                missing.push(format!("{dir}/{name}"));
            }
        }
    }
    for name in names_in("deploy/kubernetes/overlays") {
        if !layout.contains(&name) {
            missing.push(format!("deploy/kubernetes/overlays/{name}"));
        }
    }
    for dir in ["src", "fixtures", "tests", "benches", "deploy", "config", "scripts", "fuzz", "docs", "bench"]
    {
        assert!(Path::new(ROOT).join(dir).is_dir(), "{dir}");
        if !layout.contains(&format!("{dir}/")) {
            missing.push(format!("{dir}/"));
        }
    }
    assert!(missing.is_empty(), "the Layout section does not name: {missing:?}");

    // Every src/ path the whole document names, in the block or in the prose, exists.
    let stale: Vec<&str> = doc
        .split(|c: char| c.is_whitespace() || c == ',' || c == '`' || c == '(' || c == ')' || c == ':')
        .filter(|word| word.starts_with("src/"))
        .filter(|path| !Path::new(ROOT).join(path).exists())
        .collect();
    assert!(stale.is_empty(), "the Layout section names paths that do not exist: {stale:?}");
}

/// The OTLP configuration table quotes gzip level 1's cost as the performance document
/// measured it.
#[test]
fn the_gzip_level_cost_is_quoted_as_measured() {
    let performance = read("docs/performance.md");
    let flat = performance.replace('\n', " ");
    let measured = flat
        .split("gzip stays, at level 1: a ")
        .nth(1)
        .and_then(|rest| rest.split(" of level 6").next())
        .expect("the performance document's gzip level 1 figure");
    let exporters = read("docs/exporters.md");
    let row = exporters
        .lines()
        .find(|l| l.starts_with("| `compression_level` |"))
        .expect("the compression_level row");
    assert!(row.contains(&format!("level 1 costs a {measured} of")), "`{row}` does not say `a {measured}`");
}

/// One run's cells of the node benchmark's spread table: (podometer µs at N = 100 / 500 /
/// 1,000, RSS MiB at the same N).
fn spread_row(performance: &str, run: &str) -> (Vec<f64>, Vec<f64>) {
    let row = performance
        .lines()
        .find(|l| l.starts_with(&format!("| {run} | ")))
        .unwrap_or_else(|| panic!("no row for run {run} in the spread table"));
    let cells: Vec<&str> = row.split('|').map(str::trim).collect();
    let numbers = |cell: &str| -> Vec<f64> {
        cell.split(" (")
            .next()
            .unwrap()
            .split(" / ")
            .map(|n| n.replace(',', "").parse().unwrap_or_else(|_| panic!("`{n}` in `{row}`")))
            .collect()
    };
    // | run | podometer µs (ratio) | sweep thread ÷ floor | I/O threads µs | RSS MiB | …
    (numbers(cells[2]), numbers(cells[5]))
}

/// The README's and the deploy document's headline costs are the range of the current runs'
/// measurements in the performance document's spread table, not numbers of their own.
#[test]
fn headline_figures_are_the_measured_range() {
    let performance = read("docs/performance.md");
    let current = section(&performance, "## The whole agent on a node");
    let runs: Vec<(Vec<f64>, Vec<f64>)> = ["9", "10"].iter().map(|r| spread_row(current, r)).collect();
    let cpu: Vec<f64> = runs.iter().flat_map(|(cpu, _)| cpu.iter().copied()).collect();
    let min = cpu.iter().copied().fold(f64::INFINITY, f64::min);
    let max = cpu.iter().copied().fold(f64::NEG_INFINITY, f64::max);
    let rss_500: Vec<f64> = runs.iter().map(|(_, rss)| rss[1]).collect();
    let rss_min = rss_500.iter().copied().fold(f64::INFINITY, f64::min);
    let rss_max = rss_500.iter().copied().fold(f64::NEG_INFINITY, f64::max);

    let readme = read("README.md").replace('\n', " ");
    let cpu_range = format!("{min:.1}–{max:.1} µs");
    let rss_range = format!("{rss_min:.1}–{rss_max:.1} MiB");
    assert!(readme.contains(&cpu_range), "the README does not quote the measured {cpu_range}");
    assert!(readme.contains(&rss_range), "the README does not quote the measured {rss_range}");
    let intro = performance[..performance.find("\n## ").expect("sections")].replace('\n', " ");
    assert!(intro.contains(&format!("**{cpu_range}**")), "the performance summary does not say {cpu_range}");
    assert!(intro.contains(&format!("**{rss_range}**")), "the performance summary does not say {rss_range}");

    // The DaemonSet's sizing rounds the same range to whole microseconds.
    let deploy = read("docs/deploy.md").replace('\n', " ");
    let rounded = format!("costs {}–{} µs of CPU per container per sweep", min.floor(), max.ceil());
    assert!(deploy.contains(&rounded), "docs/deploy.md does not say `{rounded}`");
}

/// The image size the README quotes is the one the deploy document records from
/// `scripts/image.sh`, in MiB.
#[test]
fn the_image_size_is_quoted_as_measured() {
    let deploy = read("docs/deploy.md").replace('\n', " ");
    let kib: f64 = deploy
        .split(" KiB as `scripts/image.sh` printed it")
        .next()
        .and_then(|before| before.rsplit('(').next())
        .map(|n| n.replace(',', ""))
        .and_then(|n| n.parse().ok())
        .expect("the image size in KiB in docs/deploy.md");
    let mib = format!("{:.1} MiB", kib / 1024.0);
    assert!(deploy.contains(&format!("— {mib} (")), "docs/deploy.md's MiB figure is not {mib}");
    let readme = read("README.md").replace('\n', " ");
    assert!(readme.contains(&format!("shell, {mib})")), "the README does not quote the image as {mib}");
}

/// The README's minimal configuration is a valid configuration.
#[test]
fn the_readme_configuration_is_valid() {
    let readme = read("README.md");
    let section = section(&readme, "## A minimal configuration");
    let block = section.split("```yaml\n").nth(1).and_then(|b| b.split("```").next()).expect("a yaml block");
    let config = podometer::config::parse("README.md", block, |_| None)
        .unwrap_or_else(|e| panic!("the README's configuration: {e}"));
    let described = config.describe();
    assert!(described.contains("pipeline default:"), "{described}");
}

/// GitHub's anchor for a heading: lower case, punctuation dropped, spaces as hyphens.
fn anchor(heading: &str) -> String {
    heading
        .trim()
        .to_lowercase()
        .chars()
        .filter_map(|c| match c {
            ' ' => Some('-'),
            c if c.is_alphanumeric() || c == '-' || c == '_' => Some(c),
            _ => None,
        })
        .collect()
}

fn anchors(markdown: &str) -> BTreeSet<String> {
    let mut in_code = false;
    let mut found = BTreeSet::new();
    for line in markdown.lines() {
        if line.starts_with("```") {
            in_code = !in_code;
        } else if !in_code && line.starts_with('#') {
            found.insert(anchor(line.trim_start_matches('#')));
        }
    }
    found
}

/// Every relative link in the README and docs/ names a file or directory that exists, and a
/// `#fragment` into a Markdown file names one of its headings.
#[test]
fn every_relative_link_resolves() {
    let mut documents = vec!["README.md".to_owned(), "deploy/README.md".to_owned()];
    documents
        .extend(names_in("docs").into_iter().filter(|n| n.ends_with(".md")).map(|n| format!("docs/{n}")));
    let mut broken = Vec::new();
    let mut checked = 0;
    for doc in &documents {
        let text = read(doc);
        let base = Path::new(doc).parent().unwrap();
        for link in text.split("](").skip(1).filter_map(|rest| rest.split(')').next()) {
            if link.contains("://") || link.starts_with("mailto:") {
                continue;
            }
            let (path, fragment) = link.split_once('#').unwrap_or((link, ""));
            let target = if path.is_empty() { Path::new(doc).to_path_buf() } else { base.join(path) };
            // Normalise `..` so the target reads as a path from the repository root.
            let mut parts: Vec<&str> = Vec::new();
            for part in target.to_str().unwrap().split('/') {
                match part {
                    ".." => {
                        parts.pop();
                    }
                    "." | "" => {}
                    p => parts.push(p),
                }
            }
            let target = parts.join("/");
            let full = Path::new(ROOT).join(&target);
            if !full.exists() {
                broken.push(format!("{doc}: ({link})"));
                continue;
            }
            checked += 1;
            if !fragment.is_empty() && target.ends_with(".md") && !anchors(&read(&target)).contains(fragment)
            {
                broken.push(format!("{doc}: ({link}): no such heading"));
            }
        }
    }
    assert!(checked > 50, "only {checked} links found");
    assert!(broken.is_empty(), "links that do not resolve: {broken:#?}");
}
