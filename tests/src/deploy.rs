//! What the tests of the deploy files share (`tests/tests/deploy_files.rs`,
//! `tests/tests/deploy_kubernetes.rs`): the validators of `deploy/deploy-lint.sh`, YAML read as
//! JSON, the services' drain time.

use std::{
    path::{Path, PathBuf},
    process::Command,
    sync::OnceLock,
};

use serde_json::Value;

use crate::{binary, repo_dir};

/// The three services' binaries and the port each one's HTTP listener takes by default
/// (the lead's design of issue 19: orchestrator 9610, worker 9611, synthesizer 9612).
pub const SERVICES: [(&str, u16); 3] = [
    ("chorus-orchestrator", 9610),
    ("chorus-worker", 9611),
    ("chorus-synthesizer", 9612),
];

/// The bin directory of `.chorus/deploy-venv` (hadolint, check-jsonschema, kubernetes-validate,
/// python with PyYAML), installed once per test process by `deploy/deploy-lint.sh` (a no-op
/// when it is up to date, as after `deploy/test.sh`).
pub fn tools() -> &'static Path {
    static TOOLS: OnceLock<PathBuf> = OnceLock::new();
    TOOLS.get_or_init(|| {
        let output = Command::new(repo_dir().join("deploy/deploy-lint.sh"))
            .output()
            .unwrap();
        assert!(
            output.status.success(),
            "deploy/deploy-lint.sh failed: {}",
            String::from_utf8_lossy(&output.stderr)
        );
        PathBuf::from(String::from_utf8(output.stdout).unwrap().trim())
    })
}

/// Runs a tool of [`tools`] (or any program) and returns whether it succeeded and everything
/// it printed, stdout then stderr.
pub fn run(program: &Path, args: &[&str]) -> (bool, String) {
    let output = Command::new(program)
        .args(args)
        .current_dir(repo_dir())
        .output()
        .unwrap_or_else(|e| panic!("cannot run {}: {e}", program.display()));
    let mut text = String::from_utf8_lossy(&output.stdout).into_owned();
    text.push_str(&String::from_utf8_lossy(&output.stderr));
    (output.status.success(), text)
}

/// Every document of a YAML file of the repository, as JSON (PyYAML's safe loader, which also
/// resolves the compose file's anchors and `<<` merge keys).
pub fn yaml_documents(path: &str) -> Vec<Value> {
    let python = tools().join("python");
    let script = "import json, sys, yaml\n\
                  with open(sys.argv[1], encoding='utf-8') as f:\n    \
                  json.dump([d for d in yaml.safe_load_all(f) if d is not None], sys.stdout)";
    let file = repo_dir().join(path);
    let (ok, text) = run(&python, &["-c", script, file.to_str().unwrap()]);
    assert!(ok, "{path} is not YAML: {text}");
    serde_json::from_str(&text).unwrap()
}

/// The services' default `--shutdown-grace-secs`, read from `chorus-orchestrator --help`:
/// what a supervisor must wait for, at least, before it kills a stopping service.
pub fn shutdown_grace_secs() -> u64 {
    let (ok, help) = run(&binary("chorus-orchestrator"), &["--help"]);
    assert!(ok, "{help}");
    let after = help
        .split("--shutdown-grace-secs")
        .nth(1)
        .expect("--shutdown-grace-secs in --help");
    let default = after
        .split("[default: ")
        .nth(1)
        .and_then(|rest| rest.split(']').next())
        .expect("a default of --shutdown-grace-secs");
    default.parse().unwrap()
}

/// Seconds of a duration written as compose and systemd write them: `45`, `45s`, `1m30s`.
pub fn seconds(text: &str) -> u64 {
    let mut total = 0;
    let mut number = String::new();
    for c in text.trim().chars() {
        if c.is_ascii_digit() {
            number.push(c);
            continue;
        }
        let value: u64 = number
            .parse()
            .unwrap_or_else(|_| panic!("bad duration {text:?}"));
        number.clear();
        total += match c {
            'h' => value * 3600,
            'm' => value * 60,
            's' => value,
            _ => panic!("bad duration {text:?}"),
        };
    }
    if !number.is_empty() {
        total += number.parse::<u64>().unwrap();
    }
    total
}

/// The port of a `HOST:PORT` listen address (`CHORUS_HTTP_LISTEN`), with its host.
pub fn listen_port(address: &str) -> (&str, u16) {
    let (host, port) = address
        .rsplit_once(':')
        .unwrap_or_else(|| panic!("no port in {address:?}"));
    (
        host,
        port.parse()
            .unwrap_or_else(|_| panic!("bad port in {address:?}")),
    )
}

/// The environment variables a binary reads (`[env: NAME]` of its `--help`).
pub fn env_names(program: &str) -> Vec<String> {
    let (ok, help) = run(&binary(program), &["--help"]);
    assert!(ok, "{program} --help: {help}");
    help.split("[env: ")
        .skip(1)
        .map(|rest| rest.split(['=', ']']).next().unwrap().to_owned())
        .collect()
}

/// Fails on a `CHORUS_` variable of a deploy file that `program` does not read (a misspelt
/// setting would be ignored without a word). `CHORUS_HTTP_LISTEN` counts once the binary has
/// the listener (`--http-listen`, issue 19's first point, built apart from the deploy files).
pub fn check_env<'a>(file: &str, program: &str, names: impl IntoIterator<Item = &'a str>) {
    let known = env_names(program);
    let listener = known.iter().any(|n| n == "CHORUS_HTTP_LISTEN");
    for name in names {
        if !name.starts_with("CHORUS_") || (name == "CHORUS_HTTP_LISTEN" && !listener) {
            continue;
        }
        assert!(
            known.iter().any(|n| n == name),
            "{file}: {program} reads no {name}"
        );
    }
}
