//! The deploy files of `deploy/systemd/` and `deploy/docker/` (docs/deployment.md): the units pass
//! `systemd-analyze verify` against the built binaries and keep their sandbox and stop settings;
//! the Dockerfile passes hadolint and builds every binary into a non-root image; the compose
//! file matches the Compose Specification's schema and brings up what Chorus needs. No Docker
//! engine runs here: the image is not built by these tests.
#![allow(clippy::unwrap_used)]

use std::{collections::HashMap, path::Path};

use chorus_tests::{
    binary,
    deploy::{
        check_env, listen_port, run, seconds, shutdown_grace_secs, tools, yaml_documents, SERVICES,
    },
    repo_dir,
};
use serde_json::Value;

/// The units of `deploy/systemd/`, each with the binary it starts and the address its HTTP
/// listener is given (`%i`: the worker template's instance name is the port).
const UNITS: [(&str, &str, &str); 3] = [
    (
        "chorus-orchestrator.service",
        "chorus-orchestrator",
        "127.0.0.1:9610",
    ),
    ("chorus-worker@.service", "chorus-worker", "127.0.0.1:%i"),
    (
        "chorus-synthesizer.service",
        "chorus-synthesizer",
        "127.0.0.1:9612",
    ),
];

/// `[Section]` → key → every value given to it, in order (systemd's keys may repeat).
type Unit = HashMap<String, HashMap<String, Vec<String>>>;

fn read_unit(name: &str) -> Unit {
    let text = std::fs::read_to_string(repo_dir().join("deploy/systemd").join(name)).unwrap();
    let mut unit = Unit::new();
    let mut section = String::new();
    for line in text.lines().map(str::trim) {
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        if let Some(name) = line.strip_prefix('[').and_then(|l| l.strip_suffix(']')) {
            section = name.to_owned();
            continue;
        }
        let (key, value) = line
            .split_once('=')
            .unwrap_or_else(|| panic!("{name}: {line}"));
        unit.entry(section.clone())
            .or_default()
            .entry(key.to_owned())
            .or_default()
            .push(value.to_owned());
    }
    unit
}

fn values<'a>(unit: &'a Unit, section: &str, key: &str) -> &'a [String] {
    unit.get(section)
        .and_then(|keys| keys.get(key))
        .map_or(&[], Vec::as_slice)
}

/// `systemd-analyze verify` needs the binaries of `ExecStart=` to exist: the units are copied
/// with `/usr/local/bin/` replaced by the freshly built binaries, nothing else changed, and the
/// worker template is verified through an instance of it. Any line it prints fails the test
/// (an unknown key or a bad value is only a warning to it).
#[test]
fn systemd_units_pass_systemd_analyze_verify() {
    let dir = std::env::temp_dir().join(format!("chorus-units-{}", uuid::Uuid::new_v4().simple()));
    std::fs::create_dir_all(&dir).unwrap();
    for (name, program, _) in UNITS {
        let text = std::fs::read_to_string(repo_dir().join("deploy/systemd").join(name)).unwrap();
        let installed = format!("ExecStart=/usr/local/bin/{program}\n");
        assert_eq!(text.matches(&installed).count(), 1, "{name}: {installed}");
        let built = format!("ExecStart={}\n", binary(program).display());
        std::fs::write(dir.join(name), text.replace(&installed, &built)).unwrap();
    }
    let units: Vec<String> = [
        "chorus-orchestrator.service",
        "chorus-worker@9621.service",
        "chorus-synthesizer.service",
    ]
    .iter()
    .map(|name| dir.join(name).to_str().unwrap().to_owned())
    .collect();
    let mut args = vec!["verify", "--man=no"];
    args.extend(units.iter().map(String::as_str));
    let (ok, output) = run(Path::new("systemd-analyze"), &args);
    std::fs::remove_dir_all(&dir).unwrap();
    assert!(
        ok && output.trim().is_empty(),
        "systemd-analyze verify:\n{output}"
    );
}

#[test]
fn systemd_units_are_sandboxed_and_outwait_the_drain() {
    let grace = shutdown_grace_secs();
    for (name, program, listen) in UNITS {
        let unit = read_unit(name);
        let service = |key: &str| values(&unit, "Service", key);
        assert_eq!(
            service("ExecStart"),
            [format!("/usr/local/bin/{program}")],
            "{name}"
        );
        for (key, want) in [
            ("DynamicUser", "yes"),
            ("NoNewPrivileges", "yes"),
            ("ProtectSystem", "strict"),
            ("ProtectHome", "yes"),
            ("PrivateTmp", "yes"),
            ("PrivateDevices", "yes"),
            ("CapabilityBoundingSet", ""),
            ("Restart", "on-failure"),
            ("KillSignal", "SIGTERM"),
            ("KillMode", "mixed"),
        ] {
            assert_eq!(service(key), [want], "{name}: {key}");
        }
        let stop = seconds(&service("TimeoutStopSec")[0]);
        assert!(
            stop > grace,
            "{name}: TimeoutStopSec {stop} s, the drain takes up to {grace} s"
        );
        assert_eq!(
            service("EnvironmentFile")[0],
            "/etc/chorus/chorus.env",
            "{name}"
        );
        assert!(
            service("Environment").contains(&format!("CHORUS_HTTP_LISTEN={listen}")),
            "{name}: CHORUS_HTTP_LISTEN={listen}"
        );
        for key in ["Wants", "After"] {
            assert_eq!(
                values(&unit, "Unit", key),
                ["network-online.target"],
                "{name}: {key}"
            );
        }
        assert_eq!(
            values(&unit, "Install", "WantedBy"),
            ["multi-user.target"],
            "{name}"
        );
    }
}

#[test]
fn dockerfile_passes_hadolint() {
    let (ok, output) = run(
        &tools().join("hadolint"),
        &["--no-color", "deploy/docker/Dockerfile"],
    );
    assert!(ok && output.trim().is_empty(), "hadolint:\n{output}");
}

/// The Dockerfile's instructions, continuation lines joined and comments left out.
fn dockerfile_instructions() -> Vec<String> {
    let text = std::fs::read_to_string(repo_dir().join("deploy/docker/Dockerfile")).unwrap();
    let mut instructions = Vec::new();
    let mut current = String::new();
    for line in text.lines() {
        let line = line.trim();
        if line.starts_with('#') || line.is_empty() {
            continue;
        }
        match line.strip_suffix('\\') {
            Some(part) => current.push_str(part),
            None => {
                current.push_str(line);
                instructions.push(std::mem::take(&mut current));
            }
        }
    }
    instructions
}

#[test]
fn dockerfile_builds_every_binary_into_a_non_root_runtime() {
    let instructions = dockerfile_instructions();
    let stages: Vec<usize> = (0..instructions.len())
        .filter(|&i| instructions[i].starts_with("FROM "))
        .collect();
    assert_eq!(stages.len(), 2, "a builder stage and a runtime stage");
    assert!(
        instructions[stages[0]].ends_with(" AS builder"),
        "{}",
        instructions[stages[0]]
    );
    let build = instructions
        .iter()
        .find(|i| i.contains("cargo build"))
        .expect("a cargo build");
    assert!(
        build.contains("--release") && build.contains("--locked"),
        "{build}"
    );
    for package in [
        "chorus-orchestrator",
        "chorus-worker",
        "chorus-synthesizer",
        "chorus-shared",
    ] {
        assert!(
            build.contains(&format!("-p {package} ")),
            "{build}: {package}"
        );
    }
    for program in [
        "chorus-orchestrator",
        "chorus-worker",
        "chorus-synthesizer",
        "chorus",
    ] {
        assert!(
            build.contains(&format!("target/release/{program} ")),
            "{build}: {program}"
        );
    }
    let runtime = &instructions[stages[1]..];
    assert!(runtime
        .iter()
        .any(|i| i == "COPY --from=builder /out/ /usr/local/bin/"));
    let users: Vec<&String> = runtime.iter().filter(|i| i.starts_with("USER ")).collect();
    let user = users.last().expect("a USER in the runtime stage");
    let uid: u32 = user["USER ".len()..]
        .split(':')
        .next()
        .unwrap()
        .parse()
        .unwrap();
    assert!(
        uid > 0,
        "{user}: a numeric non-root user (Kubernetes' runAsNonRoot checks it)"
    );
    let ignore = std::fs::read_to_string(repo_dir().join(".dockerignore")).unwrap();
    for path in ["target/", ".chorus/", ".git/"] {
        assert!(ignore.lines().any(|l| l == path), ".dockerignore: {path}");
    }
}

#[test]
fn compose_file_matches_the_compose_specification() {
    let (ok, output) = run(
        &tools().join("check-jsonschema"),
        &[
            "--builtin-schema",
            "vendor.compose-spec",
            "deploy/docker/compose.yaml",
        ],
    );
    assert!(ok, "check-jsonschema:\n{output}");
}

fn text(value: &Value) -> String {
    match value {
        Value::String(s) => s.clone(),
        Value::Array(items) => items.iter().map(text).collect::<Vec<_>>().join(" "),
        other => other.to_string(),
    }
}

#[test]
fn compose_file_runs_redis_append_only_and_the_services_non_root_with_health_checks() {
    let compose = yaml_documents("deploy/docker/compose.yaml").remove(0);
    let services = &compose["services"];
    let redis = text(&services["redis"]["command"]);
    for setting in ["--appendonly yes", "--maxmemory-policy noeviction"] {
        assert!(redis.contains(setting), "redis: {redis}: {setting}");
    }
    assert!(
        redis.contains("--appendfsync everysec") || redis.contains("--appendfsync always"),
        "redis: {redis}: appendfsync (docs/reliability.md)"
    );
    assert!(
        text(&services["redis"]["volumes"]).contains(":/data"),
        "redis keeps /data"
    );
    assert!(services["rabbitmq"]["healthcheck"]["test"].is_array());
    let rabbitmq_conf = std::fs::read_to_string(repo_dir().join("deploy/docker/rabbitmq.conf"));
    assert!(rabbitmq_conf.unwrap().contains("consumer_timeout"));
    let grace = shutdown_grace_secs();
    for (program, port) in SERVICES {
        let name = program.trim_start_matches("chorus-");
        let service = &services[name];
        assert_eq!(service["command"][0], program, "{name}");
        let listen = service["environment"]["CHORUS_HTTP_LISTEN"]
            .as_str()
            .unwrap();
        assert_eq!(listen_port(listen), ("0.0.0.0", port), "{name}");
        let check = text(&service["healthcheck"]["test"]);
        assert!(
            check.contains(&format!("http://127.0.0.1:{port}/readyz")),
            "{name}: {check}"
        );
        let uid: u32 = text(&service["user"])
            .split(':')
            .next()
            .unwrap()
            .parse()
            .unwrap();
        assert!(uid > 0, "{name}: runs as root");
        assert_eq!(service["read_only"], true, "{name}");
        assert_eq!(service["cap_drop"], serde_json::json!(["ALL"]), "{name}");
        assert!(
            seconds(&text(&service["stop_grace_period"])) > grace,
            "{name}"
        );
        for dependency in ["rabbitmq", "redis"] {
            let condition = &service["depends_on"][dependency]["condition"];
            assert_eq!(condition, "service_healthy", "{name}: {dependency}");
        }
        assert!(
            service["environment"]["CHORUS_AMQP_URL"].is_string(),
            "{name}"
        );
        assert!(
            service["environment"]["CHORUS_REDIS_URL"].is_string(),
            "{name}"
        );
    }
    // `--scale worker=N` needs a worker without a fixed name or host port.
    let worker = services["worker"].as_object().unwrap();
    assert!(!worker.contains_key("container_name") && !worker.contains_key("ports"));
}

/// `NAME=` assignments of an environment file, commented-out examples (`#NAME=`) included.
fn env_file_names(text: &str) -> Vec<&str> {
    text.lines()
        .map(|line| line.trim_start_matches('#'))
        .filter_map(|line| line.split_once('=').map(|(name, _)| name))
        .filter(|name| !name.is_empty() && name.chars().all(|c| c.is_ascii_uppercase() || c == '_'))
        .collect()
}

#[test]
fn deploy_files_set_only_variables_the_services_read() {
    let dir = repo_dir().join("deploy/systemd");
    let shared = std::fs::read_to_string(dir.join("chorus.env.example")).unwrap();
    let worker = std::fs::read_to_string(dir.join("worker.env.example")).unwrap();
    assert!(env_file_names(&shared).contains(&"CHORUS_AMQP_URL"));
    assert!(env_file_names(&worker).contains(&"CHORUS_TYPES"));
    for (name, program, _) in UNITS {
        check_env("chorus.env.example", program, env_file_names(&shared));
        let unit = read_unit(name);
        let set = values(&unit, "Service", "Environment");
        check_env(
            name,
            program,
            set.iter().map(|e| e.split('=').next().unwrap()),
        );
    }
    check_env(
        "worker.env.example",
        "chorus-worker",
        env_file_names(&worker),
    );
    let compose = yaml_documents("deploy/docker/compose.yaml").remove(0);
    for (program, _) in SERVICES {
        let service = &compose["services"][program.trim_start_matches("chorus-")];
        let names = service["environment"].as_object().unwrap().keys();
        check_env("compose.yaml", program, names.map(String::as_str));
    }
    let cli = compose["services"]["chorus"]["environment"]
        .as_object()
        .unwrap();
    check_env("compose.yaml", "chorus", cli.keys().map(String::as_str));
}
