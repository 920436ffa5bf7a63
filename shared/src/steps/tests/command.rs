//! A process per call: answers, every failure class, and the process group on timeout/cancel.
#![allow(clippy::unwrap_used)]

use std::time::{Duration, Instant};

use serde_json::json;
use tokio_util::sync::CancellationToken;

use super::*;

fn step_py(args: &[&str]) -> Step {
    let mut argv = vec!["step.py"];
    argv.extend_from_slice(args);
    step(json!({"type": "command", "program": "python3", "args": argv, "grace_ms": 300}))
}

#[tokio::test]
async fn answers_with_its_stdout() {
    let answer = call(&step_py(&["echo"]), json!({"step": "handle", "x": [1, 2]}))
        .await
        .unwrap();
    assert_eq!(answer["echo"], json!({"step": "handle", "x": [1, 2]}));
}

#[tokio::test]
async fn the_environment_is_cleared_but_for_the_allow_list_and_env() {
    // The interpreter itself, not a launcher script (pyenv's shims are bash, which adds PWD).
    let python = std::process::Command::new("python3")
        .args(["-c", "import sys; print(sys.executable)"])
        .output()
        .unwrap();
    let python = String::from_utf8(python.stdout).unwrap();
    let step = step(json!({"type": "command", "program": python.trim(),
        "args": ["step.py", "env"], "env": {"FOO": "bar"}}));
    let answer = call(&step, json!({})).await.unwrap();
    assert_eq!(answer["FOO"], "bar");
    for name in answer["names"].as_array().unwrap() {
        let name = name.as_str().unwrap();
        assert!(
            ["PATH", "HOME", "LANG", "TZ", "FOO"].contains(&name) || name.starts_with("LC_"),
            "{name} leaked into the step's environment"
        );
    }
}

#[tokio::test]
async fn exit_75_is_retryable_with_the_stderr_tail() {
    assert_retryable(
        call(&step_py(&["exit", "75"]), json!({})).await,
        "last words of the step",
    );
}

#[tokio::test]
async fn another_exit_code_is_fatal_with_the_stderr_tail() {
    let result = call(&step_py(&["exit", "3"]), json!({})).await;
    assert_fatal(
        result,
        "exited with code 3; stderr: \"something went wrong\\nlast words",
    );
}

#[tokio::test]
async fn a_crash_by_signal_is_retryable() {
    assert_retryable(
        call(&step_py(&["crash"]), json!({})).await,
        "killed by signal 9",
    );
}

#[tokio::test]
async fn garbage_is_fatal_with_its_first_bytes_quoted() {
    assert_fatal(
        call(&step_py(&["garbage"]), json!({})).await,
        "\"this is not json {\"",
    );
}

#[tokio::test]
async fn an_oversized_answer_is_fatal() {
    // 10,000 bytes is the limit; the fixture writes 20,002.
    let result = call(&step_py(&["big", "20000"]), json!({})).await;
    assert_fatal(result, "more than the limit of 10000 bytes");
    assert!(call(&step_py(&["big", "9000"]), json!({})).await.is_ok());
}

#[tokio::test]
async fn a_reported_error_is_classified_by_its_retryable_flag() {
    assert_retryable(
        call(&step_py(&["report", "true"]), json!({})).await,
        "the input is odd",
    );
    assert_fatal(
        call(&step_py(&["report", "false"]), json!({})).await,
        "the input is odd",
    );
}

#[tokio::test]
async fn a_timeout_terminates_and_reaps_the_whole_group() {
    let pids = pid_file();
    // Long enough for Python to start and fork on a loaded CI machine.
    let step = step(json!({"type": "command", "program": "python3",
        "args": ["step.py", "hang", pids.to_str().unwrap()], "timeout_ms": 4000, "grace_ms": 300}));
    let started = Instant::now();
    let result = call(&step, json!({})).await;
    assert_retryable(result, "timed out after 4000 ms");
    // The fixtures ignore SIGTERM: only the SIGKILL after the grace ends them.
    assert!(started.elapsed() < Duration::from_secs(10));
    let (child, grandchild) = read_pids(&pids).await;
    assert_gone(child, grandchild).await;
}

#[tokio::test]
async fn cancelling_terminates_and_reaps_the_whole_group() {
    let pids = pid_file();
    let step = step_py(&["hang", pids.to_str().unwrap()]);
    let cancel = CancellationToken::new();
    let call = {
        let (step, cancel) = (step.clone(), cancel.clone());
        tokio::spawn(async move { step.call(b"{}", limits(), &cancel).await })
    };
    let (child, grandchild) = read_pids(&pids).await;
    assert_eq!(proc_state(grandchild).map(|s| s != 'Z'), Some(true));
    cancel.cancel();
    let result = tokio::time::timeout(Duration::from_secs(5), call)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(result, Err(StepError::Cancelled));
    assert_gone(child, grandchild).await;
}
