//! The `chorus` CLI as a newcomer meets it: `submit --wait` names its task and says why it does
//! not progress, Ctrl-C leaves the task running and says how to follow it, `watch` and `cancel`
//! of unknown or finished tasks answer at once with their own exit codes, `watch` counts as
//! running only what workers hold, and connection errors name the address tried.

#![allow(clippy::unwrap_used)]

use std::{process::Stdio, time::Duration};

use chorus_tests::{binary, TestEnv};
use serde_json::Value;
use tokio::io::{AsyncBufReadExt, BufReader};

/// A `chorus` process of `env` with its stderr piped, for tests that read it while it runs.
fn spawn_cli(env: &TestEnv, args: &[&str]) -> tokio::process::Child {
    tokio::process::Command::new(binary("chorus"))
        .args(args)
        .env_remove("CHORUS_AMQP_URL")
        .env_remove("CHORUS_REDIS_URL")
        .envs(env.url_vars())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap()
}

/// Runs `chorus` to its end; its exit code, stdout and stderr.
async fn cli_all(env: &TestEnv, args: &[&str]) -> (i32, String, String) {
    let child = spawn_cli(env, args);
    let output = tokio::time::timeout(Duration::from_secs(60), child.wait_with_output())
        .await
        .unwrap()
        .unwrap();
    (
        output.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&output.stdout).into_owned(),
        String::from_utf8_lossy(&output.stderr).into_owned(),
    )
}

#[tokio::test(flavor = "multi_thread")]
async fn submit_wait_names_the_task_says_why_it_stalls_and_ctrl_c_leaves_it_running() {
    let mut env = TestEnv::new("cli-stall").await;
    env.spawn("chorus-orchestrator", &[]);
    env.spawn("chorus-synthesizer", &[]);
    let input = r#"{"start": 0, "end": 10, "parts": 2, "types": ["writer"]}"#;
    let args = [
        "submit",
        "--kind",
        "range-sum",
        "--id",
        "stall",
        "--input",
        input,
        "--wait",
    ];
    let mut child = spawn_cli(&env, &args);
    let mut lines = BufReader::new(child.stderr.take().unwrap()).lines();
    let first = tokio::time::timeout(Duration::from_secs(30), lines.next_line())
        .await
        .unwrap()
        .unwrap()
        .unwrap_or_default();
    assert!(
        first.contains("submitted task stall"),
        "first line: {first}"
    );
    let mut seen = vec![first];
    let stalled = tokio::time::timeout(Duration::from_secs(30), async {
        while let Some(line) = lines.next_line().await.unwrap() {
            seen.push(line.clone());
            if line.contains("no worker serves type \"writer\"") {
                return;
            }
        }
    })
    .await;
    assert!(stalled.is_ok(), "never said why it stalls: {seen:?}");

    let pid = child.id().unwrap().to_string();
    let killed = std::process::Command::new("kill")
        .args(["-INT", &pid])
        .status()
        .unwrap();
    assert!(killed.success());
    let mut rest = Vec::new();
    while let Some(line) = lines.next_line().await.unwrap() {
        rest.push(line);
    }
    let status = tokio::time::timeout(Duration::from_secs(10), child.wait())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(status.code(), Some(130), "{rest:?}");
    let said = rest.join("\n");
    assert!(said.contains("goes on"), "{said}");
    assert!(said.contains("chorus watch stall"), "{said}");
    assert!(said.contains("chorus cancel stall"), "{said}");

    // The task goes on after Ctrl-C.
    let (code, out) = env.cli(&["status", "stall"]).await;
    assert_eq!(code, 0, "{out}");
    let state: Value = serde_json::from_str(&out).unwrap();
    assert_ne!(state["state"], "finished", "{state}");

    // Cancel: a live task is cancelled (0), then a finished one says so (6), one not known yet
    // 4 (the cancel is sent and kept for its claim).
    let (code, out) = env.cli(&["cancel", "stall"]).await;
    assert_eq!(code, 0, "{out}");
    let (code, out) = env.cli(&["watch", "stall", "--timeout-secs", "30"]).await;
    assert_eq!(code, 5, "{out}");
    let (code, out, err) = cli_all(&env, &["cancel", "stall"]).await;
    assert_eq!(code, 6, "{out} {err}");
    assert!(err.contains("already finished (cancelled)"), "{err}");
    let (code, out, err) = cli_all(&env, &["cancel", "never-submitted"]).await;
    assert_eq!(code, 4, "{out} {err}");
    assert!(
        err.contains("task \"never-submitted\" is not known yet; the cancel is kept"),
        "{err}"
    );
    let said: Value = serde_json::from_str(&out).unwrap();
    assert_eq!(said["cancel"], "kept", "{said}");
}

#[tokio::test(flavor = "multi_thread")]
async fn watch_of_an_unknown_task_exits_4_at_once() {
    let env = TestEnv::new("cli-unknown").await;
    let started = std::time::Instant::now();
    let (code, out, err) = cli_all(&env, &["watch", "nobody-knows"]).await;
    assert_eq!(code, 4, "{out} {err}");
    assert!(err.contains("no task \"nobody-knows\""), "{err}");
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "took {:?}",
        started.elapsed()
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn watch_counts_as_running_only_what_the_workers_hold() {
    let mut env = TestEnv::new("cli-running").await;
    env.spawn("chorus-orchestrator", &[]);
    env.spawn("chorus-synthesizer", &[]);
    // Two slots and the default prefetch (32 here): the worker holds all 20 subtasks at once,
    // and "running" must still never count more than the two that run.
    env.spawn("chorus-worker", &["--types", "default:2"]);
    let input = r#"{"start": 0, "end": 200, "parts": 20, "delay_ms": 300}"#;
    let (code, out) = env
        .cli(&[
            "submit",
            "--kind",
            "range-sum",
            "--id",
            "busy",
            "--input",
            input,
        ])
        .await;
    assert_eq!(code, 0, "{out}");
    let (code, out, err) = cli_all(
        &env,
        &[
            "watch",
            "busy",
            "--timeout-secs",
            "50",
            "--wait-unknown-secs",
            "20",
        ],
    )
    .await;
    assert_eq!(code, 0, "{out} {err}");
    let mut counted = 0;
    for line in err.lines() {
        let Some((_, after)) = line.split_once(" settled (") else {
            continue;
        };
        let running: u64 = after.split(' ').next().unwrap().parse().unwrap();
        assert!(running <= 2, "more running than the 2 slots: {line}");
        counted += 1;
    }
    assert!(counted > 0, "no progress line: {err}");
    assert!(err.contains(" queued, "), "{err}");
}

#[tokio::test(flavor = "multi_thread")]
async fn connection_errors_name_the_address_tried_without_its_password() {
    let env = TestEnv::new("cli-address").await;
    let output = tokio::process::Command::new(binary("chorus"))
        .args(["status", "x"])
        .env("CHORUS_AMQP_URL", "amqp://guest:guest@127.0.0.1:1/%2f")
        .env("CHORUS_REDIS_URL", "redis://:hunter2@127.0.0.1:1")
        .output()
        .await
        .unwrap();
    drop(env);
    let err = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(69), "{err}");
    assert!(
        err.contains("cannot connect to Redis at redis://:***@127.0.0.1:1"),
        "{err}"
    );
    assert!(!err.contains("hunter2"), "{err}");
}
