//! `podometer check-config`: every shipped config passes; each kind of mistake gives one line
//! `FILE:LINE:COLUMN: key.path: reason` and exit status 1.

use std::path::Path;
use std::process::Command;

fn check_config(path: &Path, env: &[(&str, &str)]) -> (i32, String) {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_podometer"));
    cmd.arg("check-config").arg("-c").arg(path);
    for (k, v) in env {
        cmd.env(k, v);
    }
    let out = cmd.output().expect("run podometer");
    (out.status.code().unwrap_or(-1), String::from_utf8_lossy(&out.stdout).into_owned())
}

#[test]
fn built_in_default_and_every_file_under_config_pass() {
    let out = Command::new(env!("CARGO_BIN_EXE_podometer")).arg("check-config").output().unwrap();
    assert!(out.status.success(), "default config: {}", String::from_utf8_lossy(&out.stdout));
    assert!(String::from_utf8_lossy(&out.stdout).contains("pipeline default:"));

    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("config");
    let mut checked = 0;
    for entry in std::fs::read_dir(&dir).unwrap() {
        let path = entry.unwrap().path();
        if path.extension().and_then(|e| e.to_str()) != Some("yaml") {
            continue;
        }
        let (code, stdout) = check_config(&path, &[]);
        assert_eq!(code, 0, "{}: {stdout}", path.display());
        assert!(stdout.contains("pipeline "), "{}: {stdout}", path.display());
        checked += 1;
    }
    assert!(checked >= 1, "no yaml files under config/");
}

/// The DaemonSet's config (`deploy/kubernetes/base/agent.yaml`, shipped as the ConfigMap)
/// parses and validates with the variable it references set, and says which one it needs (a
/// node name from the downward API); the annotated example in docs/configuration.md has only
/// real keys.
#[test]
fn the_deployed_config_and_the_readme_example_parse_and_validate() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let agent = std::fs::read_to_string(root.join("deploy/kubernetes/base/agent.yaml")).unwrap();
    let env = |name: &str| (name == "NODE_NAME").then(|| "node-1".to_owned());
    let config = podometer::config::parse("agent.yaml", &agent, env).unwrap_or_else(|e| panic!("{e}"));
    let described = config.describe();
    assert!(described.contains("pipeline default:"), "{described}");
    let unset = podometer::config::parse("agent.yaml", &agent, |_| None).unwrap_err().to_string();
    assert!(unset.contains("NODE_NAME"), "the missing variable is named: {unset}");

    // The first ```yaml block of docs/configuration.md.
    let readme = std::fs::read_to_string(root.join("docs/configuration.md")).unwrap();
    let section = &readme[readme.find("# Configuration").expect("a Configuration heading")..];
    let block = section.split("```yaml\n").nth(1).and_then(|b| b.split("```").next()).expect("a yaml block");
    // An unknown key, a wrong type, a bad value or an unused component anywhere in it fails here.
    podometer::config::parse("docs/configuration.md", block, |_| None)
        .unwrap_or_else(|e| panic!("docs/configuration.md example: {e}"));
}

/// Whatever the key, its name and place come back: the message is built from the input, not a
/// fixed list (checked here on keys made up for the test, at three depths).
#[test]
fn unknown_keys_are_named_wherever_they_are() {
    let dir = tempfile::tempdir().unwrap();
    let made_up = format!("zz{}", std::process::id());
    for (yaml, key_path) in [
        (format!("{made_up}: 1\nsources: {{cgroups: }}\n{VALID_TAIL}"), made_up.clone()),
        (format!("sources:\n  netns: {{{made_up}: 1}}\n  cgroups:\n{VALID_TAIL}"), format!("sources.netns.{made_up}")),
        (
            format!("sources: {{cgroups: }}\nexporters:\n  otlp: {{retry: {{{made_up}: 1s}}}}\npipelines:\n  main: {{sources: [cgroups], exporters: [otlp]}}\n"),
            format!("exporters.otlp.retry.{made_up}"),
        ),
    ] {
        let path = dir.path().join("unknown.yaml");
        std::fs::write(&path, &yaml).unwrap();
        let (code, stdout) = check_config(&path, &[]);
        assert_eq!(code, 1, "{yaml}: {stdout}");
        assert!(stdout.contains(&format!(": {key_path}: unknown field")), "{key_path} not named: {stdout}");
    }
}

/// An unset variable and a malformed reference are each reported with the variable's name and
/// the place of the reference.
#[test]
fn environment_substitution_errors_name_the_variable_and_its_place() {
    let dir = tempfile::tempdir().unwrap();
    let var = format!("PODOMETER_TEST_UNSET_{}", std::process::id());
    let path = dir.path().join("env.yaml");
    std::fs::write(&path, format!("sources:\n  cgroups:\n    root: /x/${{env:{var}}}\n{VALID_TAIL}"))
        .unwrap();
    let (code, stdout) = check_config(&path, &[]);
    assert_eq!(code, 1, "{stdout}");
    assert!(stdout.contains(&var) && stdout.contains(":3:"), "variable and line: {stdout}");
    let (code, stdout) = check_config(&path, &[(&var, "/sys/fs/cgroup")]);
    assert_eq!(code, 0, "set, it passes: {stdout}");
}

const VALID_TAIL: &str =
    "exporters:\n  file: {path: \"-\"}\npipelines:\n  main: {sources: [cgroups], exporters: [file]}\n";

/// (name, yaml, expected `LINE:COLUMN: key.path: ` after the file name, a word of the reason)
fn cases() -> Vec<(&'static str, String, &'static str, &'static str)> {
    vec![
        ("unknown top-level key", format!("intervall: 5s\nsources: {{cgroups: }}\n{VALID_TAIL}"), "1:1: intervall: ", "unknown field"),
        (
            "unknown key in a component",
            format!("sources:\n  cgroups: {{rooot: /x}}\n{VALID_TAIL}"),
            "2:13: sources.cgroups.rooot: ",
            "unknown field",
        ),
        (
            "unknown component type",
            format!("sources:\n  cgroups:\n  kafka/x: {{}}\n{VALID_TAIL}"),
            "3:12: sources.kafka/x: ",
            "unknown source type `kafka`",
        ),
        (
            "wrong type",
            format!("sources:\n  cgroups: {{root: [1, 2]}}\n{VALID_TAIL}"),
            "2:19: sources.cgroups.root: ",
            "expected",
        ),
        ("bad duration", format!("interval: 10 parsecs\nsources: {{cgroups: }}\n{VALID_TAIL}"), "1:11: interval: ", "not a duration"),
        (
            "undefined reference",
            "sources: {cgroups: }\nexporters: {file: }\npipelines:\n  main: {sources: [cgroups], exporters: [file, otlp/x]}\n".into(),
            "4:48: pipelines.main.exporters[1]: ",
            "`otlp/x` is not defined",
        ),
        (
            "unused component",
            format!("sources:\n  cgroups:\n  netns/spare:\n{VALID_TAIL}"),
            "3:3: sources.netns/spare: ",
            "used by no pipeline",
        ),
        (
            "netns without cgroups before it",
            "sources: {cgroups: , netns: }\nexporters: {file: }\npipelines:\n  main: {sources: [netns, cgroups], exporters: [file]}\n"
                .into(),
            "4:20: pipelines.main.sources[0]: ",
            "list a cgroups source before it",
        ),
        (
            "unset environment variable",
            format!("interval: ${{env:PODOMETER_TEST_UNSET_VAR}}\nsources: {{cgroups: }}\n{VALID_TAIL}"),
            "1:11: (top level): ",
            "PODOMETER_TEST_UNSET_VAR is not set",
        ),
        ("YAML syntax error", format!("sources: {{cgroups: \n{VALID_TAIL}"), "*", "expected"),
        (
            "no pipelines",
            "sources: {cgroups: }\nexporters: {file: }\n".into(),
            "*",
            "pipelines",
        ),
    ]
}

#[test]
fn each_kind_of_mistake_gives_one_clear_line_and_exit_1() {
    let dir = tempfile::tempdir().unwrap();
    for (name, yaml, position, reason) in cases() {
        let path = dir.path().join("bad.yaml");
        std::fs::write(&path, &yaml).unwrap();
        let (code, stdout) = check_config(&path, &[]);
        assert_eq!(code, 1, "{name}: exit status; output: {stdout}");
        let lines: Vec<&str> = stdout.lines().collect();
        assert_eq!(lines.len(), 1, "{name}: expected one line, got: {stdout}");
        let line = lines[0];
        if position == "*" {
            // Only the shape is fixed: FILE:LINE:COLUMN: with a real line number.
            let rest = line
                .strip_prefix(&format!("{}:", path.display()))
                .unwrap_or_else(|| panic!("{name}: {line}"));
            let fields: Vec<&str> = rest.splitn(3, ':').collect();
            let line_no: u64 =
                fields[0].parse().unwrap_or_else(|_| panic!("{name}: no line number in `{line}`"));
            assert!(line_no >= 1, "{name}: {line}");
            assert!(fields[1].parse::<u64>().is_ok(), "{name}: no column in `{line}`");
        } else {
            let prefix = format!("{}:{position}", path.display());
            assert!(line.starts_with(&prefix), "{name}: `{line}` should start with `{prefix}`");
        }
        assert!(line.contains(reason), "{name}: `{line}` should say `{reason}`");
    }
}

#[test]
fn environment_variables_are_substituted_before_parsing() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("env.yaml");
    std::fs::write(
        &path,
        format!("interval: ${{env:PODOMETER_TEST_INTERVAL:-10s}}\nsources: {{cgroups: }}\n{VALID_TAIL}"),
    )
    .unwrap();
    let (code, stdout) = check_config(&path, &[("PODOMETER_TEST_INTERVAL", "3s")]);
    assert_eq!(code, 0, "{stdout}");
    assert!(stdout.contains("interval: 3s"), "{stdout}");
    let (code, stdout) = check_config(&path, &[]);
    assert_eq!(code, 0, "{stdout}");
    assert!(stdout.contains("interval: 10s"), "{stdout}");
}

#[test]
fn several_problems_are_all_reported() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("many.yaml");
    std::fs::write(
        &path,
        "sources: {cgroups: , netns/x: }\nexporters: {file: , file/b: }\npipelines:\n  main: {sources: [cgroups, nope], exporters: [file]}\n",
    )
    .unwrap();
    let (code, stdout) = check_config(&path, &[]);
    assert_eq!(code, 1);
    assert_eq!(stdout.lines().count(), 3, "{stdout}");
    assert!(stdout.contains("pipelines.main.sources[1]: source `nope` is not defined"), "{stdout}");
    assert!(stdout.contains("sources.netns/x: defined but used by no pipeline"), "{stdout}");
    assert!(stdout.contains("exporters.file/b: defined but used by no pipeline"), "{stdout}");
}
