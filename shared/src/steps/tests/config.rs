//! Building steps: what a kinds file may say and what is refused, with the key named.
#![allow(clippy::unwrap_used)]

use serde_json::json;

use super::*;

fn build(spec: serde_json::Value) -> Result<Step, crate::steps::StepConfigError> {
    let spec: StepSpec = serde_json::from_value(spec).unwrap();
    Step::build(&spec, &fixtures())
}

fn refused_key(spec: serde_json::Value) -> String {
    match build(spec) {
        Err(error) => error.key,
        Ok(_) => panic!("built"),
    }
}

#[test]
fn unknown_keys_are_refused() {
    let spec = json!({"type": "command", "program": "python3", "argz": []});
    let error = serde_json::from_value::<StepSpec>(spec)
        .unwrap_err()
        .to_string();
    assert!(error.contains("unknown field `argz`"), "{error}");
    let spec = json!({"type": "http", "url": "http://x", "header": {}});
    assert!(serde_json::from_value::<StepSpec>(spec).is_err());
    assert!(serde_json::from_value::<StepSpec>(json!({"type": "shell", "program": "x"})).is_err());
}

#[test]
fn a_missing_program_names_the_key() {
    let error = build(json!({"type": "command", "program": "pyhton3"}))
        .err()
        .unwrap();
    assert_eq!(
        error.to_string(),
        "key \"program\": program \"pyhton3\" not found (searched PATH)"
    );
    assert_eq!(
        refused_key(json!({"type": "command", "program": "./missing.py"})),
        "program"
    );
    // Relative to the kinds file's directory, and executable.
    assert!(build(json!({"type": "command", "program": "./step.py"})).is_ok());
    assert_eq!(
        refused_key(json!({"type": "command", "program": "python3", "cwd": "nope"})),
        "cwd"
    );
}

#[test]
fn numbers_out_of_range_are_refused() {
    let pool = |size: usize| json!({"type": "command", "program": "python3", "mode": "pool", "pool_size": size});
    assert_eq!(refused_key(pool(0)), "pool_size");
    assert_eq!(refused_key(pool(257)), "pool_size");
    assert!(build(pool(256)).is_ok());
    assert_eq!(
        refused_key(json!({"type": "command", "program": "python3", "pool_size": 2})),
        "pool_size"
    );
    assert_eq!(
        refused_key(json!({"type": "command", "program": "python3", "timeout_ms": 0})),
        "timeout_ms"
    );
    assert_eq!(
        refused_key(json!({"type": "command", "program": "python3", "grace_ms": 0})),
        "grace_ms"
    );
}

#[test]
fn bad_urls_and_missing_variables_are_refused() {
    assert_eq!(
        refused_key(json!({"type": "http", "url": "not a url"})),
        "url"
    );
    assert_eq!(
        refused_key(json!({"type": "http", "url": "ftp://example.com/x"})),
        "url"
    );
    let spec = json!({"type": "http", "url": "https://example.com", "headers_from_env": {"Authorization": "CHORUS_STEPS_TEST_UNSET"}});
    assert_eq!(refused_key(spec), "headers_from_env.Authorization");
    let spec = json!({"type": "http", "url": "https://example.com", "signing_secret_env": "CHORUS_STEPS_TEST_UNSET"});
    assert_eq!(refused_key(spec), "signing_secret_env");
    let spec = json!({"type": "http", "url": "https://example.com", "headers": {"Bad Name": "x"}});
    assert_eq!(refused_key(spec), "headers.Bad Name");
    let spec = json!({"type": "http", "url": "https://example.com", "ca_file": "step.py"});
    assert_eq!(refused_key(spec), "ca_file");
}

#[test]
fn a_builtin_step_is_not_an_external_one() {
    assert_eq!(
        refused_key(json!({"type": "builtin", "kind": "range-sum"})),
        "type"
    );
}

#[test]
fn describe_says_what_runs() {
    let pool = build(
        json!({"type": "command", "program": "python3", "args": ["-u", "pool.py"], "mode": "pool"}),
    )
    .unwrap();
    let line = pool.describe();
    assert!(
        line.starts_with("command ") && line.ends_with("python3 -u pool.py (pool of 4)"),
        "{line}"
    );
    let http = build(json!({"type": "http", "url": "https://user:pw@example.com/v1"})).unwrap();
    assert_eq!(http.describe(), "http https://user@example.com/v1");
}

#[test]
fn a_step_can_be_shared_between_tasks() {
    fn shared<T: Send + Sync + Clone + 'static>() {}
    shared::<Step>();
}
