//! Kinds defined in a kinds file (`--kinds-file`), run by the real three services with real
//! Python processes and real HTTP servers: every step type, the failure classes, cancellation
//! and the defaults (docs/kinds.md).
#![allow(clippy::unwrap_used)]

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use chorus_tests::servers::{free_port, Server};
use chorus_tests::{repo_dir, TestEnv};
use serde_json::{json, Value};

/// The steps tests' endpoint (/429 with Retry-After: 3, /500, ...) on a free port.
fn steps_fixture() -> Server {
    Server::python(&repo_dir().join("tests/fixtures/steps/http_server.py"), &[])
}

/// The word-count example's endpoint (examples/kinds/server.py) on a free port.
fn example() -> Server {
    let port = free_port().to_string();
    Server::python(&repo_dir().join("examples/kinds/server.py"), &[&port])
}

/// A kinds file for the tests in a fresh directory: `scripted` (command planner, review and
/// synthesis; a call handler and a pool handler), HTTP kinds against `http` (the steps
/// fixture) and `words` (the example's endpoint), and `sums` (builtin steps).
fn kinds_file(http: &Server, words: &Server) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("chorus-kinds-{}", uuid::Uuid::new_v4().simple()));
    std::fs::create_dir_all(&dir).unwrap();
    let step = repo_dir().join("tests/fixtures/kinds/step.py");
    let step = step.display();
    let (port, words) = (http.port, words.port);
    let text = format!(
        r#"
[kinds.scripted]
planner = {{ type = "command", program = "python3", args = ["{step}"] }}
review = {{ type = "command", program = "python3", args = ["{step}"] }}
synthesis = {{ type = "command", program = "python3", args = ["{step}"] }}
handlers.default = {{ type = "command", program = "python3", args = ["{step}"], grace_ms = 200 }}
handlers.pooled = {{ type = "command", mode = "pool", pool_size = 2, program = "python3", args = ["{step}", "pool"], grace_ms = 200 }}

[kinds.words]
handlers.default = {{ type = "http", url = "http://127.0.0.1:{words}/count" }}

[kinds.http-429]
handlers.default = {{ type = "http", url = "http://127.0.0.1:{port}/429" }}

[kinds.http-500]
handlers.default = {{ type = "http", url = "http://127.0.0.1:{port}/500" }}

[kinds.http-refused]
handlers.default = {{ type = "http", url = "http://127.0.0.1:1/", timeout_ms = 2000 }}

[kinds.sums]
planner = {{ type = "builtin", kind = "range-sum" }}
handlers.default = {{ type = "builtin", kind = "range-sum" }}
synthesis = {{ type = "builtin", kind = "range-sum" }}
"#
    );
    let path = dir.join("kinds.toml");
    std::fs::write(&path, text).unwrap();
    path
}

/// The three services with `--kinds-file path`; the worker serves `default` and `pooled`.
fn start(env: &mut TestEnv, path: &Path) {
    let file = path.to_str().unwrap();
    env.spawn("chorus-orchestrator", &["--kinds-file", file]);
    env.spawn(
        "chorus-worker",
        &[
            "--kinds-file",
            file,
            "--types",
            "default,pooled",
            "--retry-base-delay-ms",
            "20",
            "--retry-max-delay-ms",
            "200",
            // Small enough for the oversized-answer case to stay quick.
            "--max-message-bytes",
            "65536",
        ],
    );
    env.spawn("chorus-synthesizer", &["--kinds-file", file]);
}

/// Submits a task and waits for its outcome: exit code and outcome.
async fn run(env: &TestEnv, kind: &str, input: &Value, extra: &[&str]) -> (i32, Value) {
    let input = input.to_string();
    let mut args = vec!["submit", "--kind", kind, "--input", &input, "--wait"];
    args.extend_from_slice(extra);
    let (code, stdout) = env.cli(&args).await;
    let outcome = serde_json::from_str(&stdout).unwrap_or_else(|_| panic!("{code}: {stdout}"));
    (code, outcome)
}

/// The message of an outcome's first error.
fn first_error(outcome: &Value) -> String {
    outcome["errors"][0]["message"]
        .as_str()
        .unwrap_or_default()
        .to_owned()
}

#[tokio::test(flavor = "multi_thread")]
async fn the_csv_stats_example_computes_exact_statistics_with_a_pool_handler() {
    let mut env = TestEnv::new("kindscsv").await;
    let path = repo_dir().join("examples/kinds/kinds.toml");
    start(&mut env, &path);
    let input = json!({"files": ["north.csv", "south.csv"], "chunk_rows": 2});
    let (code, outcome) = run(&env, "csv-stats", &input, &[]).await;
    assert_eq!(code, 0, "{outcome}");
    // north: 100, 250, 40 (areas 10, 5, 8); south: 310, 90 (areas 12, 3). Chunks of 2 rows:
    // north 2 + 1, south 2.
    assert_eq!(outcome["stats"]["subtasks"], 3, "{outcome}");
    assert_eq!(
        outcome["output"],
        json!({
            "population": {"count": 5, "sum": 790, "min": 40, "max": 310, "mean": 158.0},
            "area": {"count": 5, "sum": 38, "min": 3, "max": 12, "mean": 7.6},
        })
    );
    // A planner's {"error": ...} rejects the task with its message.
    let (code, outcome) = run(&env, "csv-stats", &json!({"files": ["../secret"]}), &[]).await;
    assert_eq!(code, 3, "{outcome}");
    assert!(first_error(&outcome).contains("no CSV file"), "{outcome}");
}

#[tokio::test(flavor = "multi_thread")]
async fn every_step_type_runs_through_the_services() {
    let (http, words) = (steps_fixture(), example());
    let mut env = TestEnv::new("kindssteps").await;
    start(&mut env, &kinds_file(&http, &words));
    // Command planner and synthesis; call and pool handlers; depends_on; a spawn; a child.
    let input = json!({"subtasks": [
        {"input": {"value": "a"}},
        {"id": "p", "worker_type": "pooled", "input": {"value": "b"}, "depends_on": ["0"]},
        {"id": "s", "input": {"mode": "spawn", "value": "c",
                              "spawn": [{"id": "s1", "worker_type": "pooled", "input": {"value": "d"}}]}},
        {"id": "k", "child": {"kind": "range-sum", "input": {"start": 0, "end": 4, "parts": 1}}}
    ]});
    let (code, outcome) = run(&env, "scripted", &input, &[]).await;
    assert_eq!(code, 0, "{outcome}");
    let outputs = outcome["output"]["outputs"].as_array().unwrap();
    let by_id = |id: &str| {
        outputs
            .iter()
            .find(|o| o["id"] == id)
            .unwrap_or_else(|| panic!("no {id} in {outcome}"))["output"]
            .clone()
    };
    assert_eq!(by_id("0")["value"], "a");
    assert_eq!(by_id("p")["value"], "b");
    assert_eq!(
        by_id("p")["deps"],
        json!([{"id": "0", "output": by_id("0")}])
    );
    assert_eq!(by_id("s1")["value"], "d");
    assert_eq!(by_id("k")["sum"], 6);
    assert_eq!(outcome["output"]["failures"], json!([]));
    // An HTTP handler (the example's endpoint), default planner and synthesis.
    let (code, outcome) = run(&env, "words", &json!({"items": ["a b c", "d"]}), &[]).await;
    assert_eq!(code, 0, "{outcome}");
    assert_eq!(outcome["output"], json!([{"words": 3}, {"words": 1}]));
    let (code, outcome) = run(&env, "words", &json!({"item": []}), &[]).await;
    assert_eq!(code, 3, "{outcome}");
    assert!(first_error(&outcome).contains("input.items"), "{outcome}");
    // Builtin steps.
    let (code, outcome) = run(
        &env,
        "sums",
        &json!({"start": 0, "end": 10, "parts": 2}),
        &[],
    )
    .await;
    assert_eq!(code, 0, "{outcome}");
    assert_eq!(outcome["output"]["sum"], 45);
    // A review round from a command review: subtask 0 is redone with the reviewer's input.
    let input = json!({"subtasks": [{"input": {"value": "draft"}}, {"input": {"value": "x"}}]});
    let (code, outcome) = run(&env, "scripted", &input, &["--max-rounds", "2"]).await;
    assert_eq!(code, 0, "{outcome}");
    assert_eq!(
        outcome["output"]["outputs"][0]["output"]["value"], "revised",
        "{outcome}"
    );
    assert_eq!(
        outcome["output"]["outputs"][1]["output"]["value"], "x",
        "{outcome}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn failures_are_classified_the_same_for_every_step() {
    let (http, words) = (steps_fixture(), example());
    let mut env = TestEnv::new("kindsfail").await;
    start(&mut env, &kinds_file(&http, &words));
    // The failing subtask "0" beside one that succeeds, so that the synthesis runs (with
    // `on_failure: continue`) and reports the failure.
    let one = |input: Value, worker_type: &str| json!({"subtasks": [{"worker_type": worker_type, "input": input}, {"input": {}}]});
    let continue_ = ["--on-failure", "continue", "--max-attempts", "3"];
    // Exit 3: fatal at once, one attempt, the stderr tail in the error.
    for worker_type in ["default", "pooled"] {
        let (_, outcome) = run(
            &env,
            "scripted",
            &one(json!({"mode": "exit", "code": 3}), worker_type),
            &continue_,
        )
        .await;
        let failure = &outcome["output"]["failures"][0];
        assert!(
            failure["error"]
                .as_str()
                .unwrap()
                .contains("handler gives up"),
            "{outcome}"
        );
        assert_eq!(outcome["stats"]["retries"], 0, "{outcome}");
    }
    // A crash: retried, then failed.
    let (_, outcome) = run(
        &env,
        "scripted",
        &one(json!({"mode": "crash"}), "default"),
        &continue_,
    )
    .await;
    assert_eq!(outcome["stats"]["retries"], 2, "{outcome}");
    assert_eq!(outcome["output"]["failures"][0]["id"], "0", "{outcome}");
    // Garbage: fatal, its first bytes quoted.
    let (_, outcome) = run(
        &env,
        "scripted",
        &one(json!({"mode": "garbage"}), "pooled"),
        &continue_,
    )
    .await;
    assert_eq!(outcome["stats"]["retries"], 0, "{outcome}");
    let error = outcome["output"]["failures"][0]["error"]
        .as_str()
        .unwrap()
        .to_owned();
    assert!(error.contains("garbage from the handler"), "{error}");
    // An answer over the worker's --max-message-bytes: fatal, its first bytes quoted, from a
    // process per call and from a pool alike.
    for worker_type in ["default", "pooled"] {
        let (_, outcome) = run(
            &env,
            "scripted",
            &one(json!({"mode": "big", "bytes": 100_000}), worker_type),
            &continue_,
        )
        .await;
        assert_eq!(outcome["stats"]["retries"], 0, "{outcome}");
        let error = outcome["output"]["failures"][0]["error"]
            .as_str()
            .unwrap()
            .to_owned();
        assert!(
            error.contains("more than the limit of 65536 bytes") && error.contains("xxxx"),
            "{error}"
        );
    }
    // HTTP 500 and a refused connection: retried until out of attempts.
    for kind in ["http-500", "http-refused"] {
        let (code, outcome) =
            run(&env, kind, &json!({"items": [1]}), &["--max-attempts", "2"]).await;
        assert_eq!(code, 1, "{kind}: {outcome}");
        assert_eq!(outcome["stats"]["retries"], 1, "{kind}: {outcome}");
    }
    // HTTP 429 with Retry-After: 3: the retry waits at least that long (the worker's own
    // backoff is at most 200 ms here).
    let started = Instant::now();
    let (code, outcome) = run(
        &env,
        "http-429",
        &json!({"items": [1]}),
        &["--max-attempts", "2"],
    )
    .await;
    assert_eq!(code, 1, "{outcome}");
    assert_eq!(outcome["stats"]["retries"], 1, "{outcome}");
    assert!(first_error(&outcome).contains("429"), "{outcome}");
    assert!(
        started.elapsed() >= Duration::from_secs(3),
        "{:?}",
        started.elapsed()
    );
}

/// The pids a hanging step wrote to `pidfile`, once it has.
async fn pids_in(pidfile: &Path) -> Vec<u32> {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        if let Ok(text) = std::fs::read_to_string(pidfile) {
            return text
                .split_whitespace()
                .map(|p| p.parse().unwrap())
                .collect();
        }
        assert!(
            Instant::now() < deadline,
            "no pidfile {}",
            pidfile.display()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Whether process `pid` is gone (zombies count as present: it must have been reaped).
async fn gone(pid: u32, within: Duration) -> bool {
    let deadline = Instant::now() + within;
    while Instant::now() < deadline {
        if !Path::new(&format!("/proc/{pid}")).exists() {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    false
}

#[tokio::test(flavor = "multi_thread")]
async fn a_hang_times_out_and_a_cancellation_stops_a_pool_call_with_its_process_group() {
    let (http, words) = (steps_fixture(), example());
    let mut env = TestEnv::new("kindshang").await;
    start(&mut env, &kinds_file(&http, &words));
    let dir = std::env::temp_dir().join(format!("chorus-hang-{}", uuid::Uuid::new_v4().simple()));
    std::fs::create_dir_all(&dir).unwrap();
    // A call handler that hangs past the subtask's timeout: the group is killed and reaped.
    let pidfile = dir.join("timeout.pids");
    let input = json!({"subtasks": [{"input": {"mode": "hang", "pidfile": pidfile}}]});
    let (code, outcome) = run(
        &env,
        "scripted",
        &input,
        &["--timeout-ms", "1500", "--max-attempts", "1"],
    )
    .await;
    assert_eq!(code, 1, "{outcome}");
    for pid in pids_in(&pidfile).await {
        assert!(
            gone(pid, Duration::from_secs(5)).await,
            "pid {pid} survived the timeout"
        );
    }
    // A pool call running when its task's deadline passes (its own timeout is far off): the
    // task fails for its deadline and the call's processes go.
    let pidfile = dir.join("deadline.pids");
    let input = json!({"subtasks": [{"worker_type": "pooled", "input": {"mode": "hang", "pidfile": pidfile}}]});
    let (code, outcome) = run(
        &env,
        "scripted",
        &input,
        &[
            "--deadline-ms",
            "2000",
            "--timeout-ms",
            "60000",
            "--max-attempts",
            "1",
        ],
    )
    .await;
    assert_eq!(code, 1, "{outcome}");
    assert!(outcome.to_string().contains("deadline"), "{outcome}");
    for pid in pids_in(&pidfile).await {
        assert!(
            gone(pid, Duration::from_secs(5)).await,
            "pid {pid} survived the deadline"
        );
    }
    // A pool call running when its task is cancelled: its processes go.
    let pidfile = dir.join("cancel.pids");
    let input = json!({"subtasks": [{"worker_type": "pooled", "input": {"mode": "hang", "pidfile": pidfile}}]}).to_string();
    let (code, _) = env
        .cli(&[
            "submit",
            "--id",
            "hung-pool",
            "--kind",
            "scripted",
            "--input",
            &input,
        ])
        .await;
    assert_eq!(code, 0);
    let pids = pids_in(&pidfile).await;
    let (code, _) = env.cli(&["cancel", "hung-pool"]).await;
    assert_eq!(code, 0);
    for pid in pids {
        assert!(
            gone(pid, Duration::from_secs(10)).await,
            "pid {pid} survived the cancellation"
        );
    }
    let (code, stdout) = env
        .cli(&["watch", "hung-pool", "--timeout-secs", "20"])
        .await;
    assert_eq!(code, 5, "{stdout}");
    std::fs::remove_dir_all(&dir).unwrap();
}

#[tokio::test(flavor = "multi_thread")]
async fn a_bad_kinds_file_stops_every_service_with_one_line() {
    let env = TestEnv::new("kindsbad").await;
    let dir = std::env::temp_dir().join(format!("chorus-bad-{}", uuid::Uuid::new_v4().simple()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("kinds.toml");
    std::fs::write(
        &path,
        "[kinds.stats.handlers.default]\ntype = \"command\"\nprogram = \"pyhton3\"\n",
    )
    .unwrap();
    let file = path.to_str().unwrap();
    let expected = format!(
        "kinds file {file}: kind \"stats\", key \"handlers.default.program\": program \"pyhton3\" not found (searched PATH)\n"
    );
    for bin in ["chorus-orchestrator", "chorus-worker", "chorus-synthesizer"] {
        let output = env.run_to_exit(bin, &["--kinds-file", file]).await;
        assert_eq!(output.status.code(), Some(64), "{bin}");
        let stderr = String::from_utf8(output.stderr).unwrap();
        // Logging is up by then: the refusal is the last line.
        let last = stderr.lines().last().unwrap_or_default();
        assert_eq!(
            format!("{last}\n"),
            format!("{bin}: {expected}"),
            "{stderr}"
        );
    }
    let output = env.run_to_exit("chorus", &["kinds", "check", file]).await;
    assert_eq!(output.status.code(), Some(64));
    assert_eq!(
        String::from_utf8(output.stderr).unwrap(),
        format!("chorus: {expected}")
    );
    let example = repo_dir().join("examples/kinds/kinds.toml");
    let (code, stdout) = env
        .cli(&["kinds", "check", example.to_str().unwrap()])
        .await;
    assert_eq!(code, 0, "{stdout}");
    let (code, stdout) = env
        .cli(&["kinds", "--kinds-file", example.to_str().unwrap()])
        .await;
    assert_eq!(code, 0, "{stdout}");
    assert!(stdout.contains("csv-stats"), "{stdout}");
    assert!(stdout.contains("(pool of 2)"), "{stdout}");
    assert!(stdout.contains("range-sum  (built-in, Rust)"), "{stdout}");
    std::fs::remove_dir_all(&dir).unwrap();
}
