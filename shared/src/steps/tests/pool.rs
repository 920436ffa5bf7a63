//! Pool mode: reuse, replacement after a crash or garbage, the group on timeout/cancel, drop.
#![allow(clippy::unwrap_used)]

use std::time::Duration;

use serde_json::json;
use tokio_util::sync::CancellationToken;

use super::*;

fn pool(size: usize) -> Step {
    step(
        json!({"type": "command", "mode": "pool", "pool_size": size, "program": "python3",
        "args": ["pool.py"], "grace_ms": 300, "timeout_ms": 15000}),
    )
}

async fn pid(step: &Step) -> u32 {
    let answer = call(step, json!({"mode": "echo"})).await.unwrap();
    u32::try_from(answer["pid"].as_u64().unwrap()).unwrap()
}

#[tokio::test]
async fn one_process_answers_successive_calls() {
    let step = pool(1);
    let first = pid(&step).await;
    assert_eq!(pid(&step).await, first);
    // A pretty-printed request still goes as one line.
    let request = serde_json::to_vec_pretty(&json!({"mode": "echo", "a": [1, 2]})).unwrap();
    let answer = step
        .call(&request, limits(), &CancellationToken::new())
        .await
        .unwrap();
    let answer: serde_json::Value = serde_json::from_slice(&answer).unwrap();
    assert_eq!(
        (answer["pid"].as_u64(), answer["echo"]["a"].clone()),
        (Some(first.into()), json!([1, 2]))
    );
    step.shutdown().await;
    assert_eq!(proc_state(first), None);
}

#[tokio::test]
async fn a_crashed_process_is_replaced() {
    let step = pool(1);
    let first = pid(&step).await;
    assert_retryable(
        call(&step, json!({"mode": "crash"})).await,
        "killed by signal 9",
    );
    assert_eq!(
        proc_state(first),
        None,
        "the crashed process was not reaped"
    );
    let second = pid(&step).await;
    assert_ne!(second, first);
}

#[tokio::test]
async fn exit_codes_are_classified() {
    let step = pool(1);
    let result = call(&step, json!({"mode": "exit", "code": 75})).await;
    assert_retryable(
        result,
        "exited with code 75; stderr: \"pool process exits\"",
    );
    assert_fatal(
        call(&step, json!({"mode": "exit", "code": 2})).await,
        "exited with code 2",
    );
    assert!(pid(&step).await > 0);
}

#[tokio::test]
async fn garbage_is_fatal_and_its_process_replaced() {
    let step = pool(1);
    let first = pid(&step).await;
    assert_fatal(
        call(&step, json!({"mode": "garbage"})).await,
        "\"garbage, not json\"",
    );
    assert_ne!(pid(&step).await, first);
}

#[tokio::test]
async fn a_reported_error_keeps_the_process() {
    let step = pool(1);
    let first = pid(&step).await;
    assert_fatal(
        call(&step, json!({"mode": "report"})).await,
        "cannot handle this",
    );
    assert_eq!(pid(&step).await, first);
}

#[tokio::test]
async fn an_oversized_answer_is_fatal_and_its_process_replaced() {
    let step = pool(1);
    let first = pid(&step).await;
    let result = call(&step, json!({"mode": "big", "n": 50_000})).await;
    assert_fatal(result, "more than the limit of 10000 bytes");
    assert_eq!(proc_state(first), None);
    assert_ne!(pid(&step).await, first);
}

#[tokio::test]
async fn a_timeout_kills_the_group_and_the_process_is_replaced() {
    let step = pool(1);
    let first = pid(&step).await;
    let pids = pid_file();
    // The caller's limit, smaller than the step's own 15 s, is the one that applies.
    let request = serde_json::to_vec(&json!({"mode": "hang", "pidfile": pids})).unwrap();
    let limits = CallLimits {
        timeout: Duration::from_secs(3),
        ..limits()
    };
    let result = step.call(&request, limits, &CancellationToken::new()).await;
    let result = result.map(|answer| serde_json::from_slice(&answer).unwrap());
    assert_retryable(result, "timed out after 3000 ms");
    let (child, grandchild) = read_pids(&pids).await;
    assert_eq!(child, first);
    assert_gone(child, grandchild).await;
    assert_ne!(pid(&step).await, first);
}

#[tokio::test]
async fn cancelling_a_call_kills_its_process_group() {
    let step = pool(2);
    let pids = pid_file();
    let cancel = CancellationToken::new();
    let call = {
        let (step, cancel) = (step.clone(), cancel.clone());
        let request = serde_json::to_vec(&json!({"mode": "hang", "pidfile": pids})).unwrap();
        tokio::spawn(async move { step.call(&request, limits(), &cancel).await })
    };
    let (child, grandchild) = read_pids(&pids).await;
    // The other process of the pool keeps serving meanwhile.
    assert_ne!(pid(&step).await, child);
    cancel.cancel();
    let result = tokio::time::timeout(Duration::from_secs(5), call)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(result, Err(StepError::Cancelled));
    assert_gone(child, grandchild).await;
}

#[tokio::test]
async fn dropping_the_last_clone_ends_the_processes() {
    let step = pool(1);
    let first = pid(&step).await;
    let clone = step.clone();
    drop(step);
    assert_eq!(pid(&clone).await, first, "a clone shares the pool");
    drop(clone);
    // The group is killed at once; tokio reaps the dropped child in the background.
    for _ in 0..100 {
        if matches!(proc_state(first), None | Some('Z')) {
            return;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    panic!("pool process {first} outlived its step");
}

#[tokio::test]
async fn a_process_that_died_while_idle_is_replaced_before_the_call() {
    let step = pool(1);
    let first = pid(&step).await;
    let pid = rustix::process::Pid::from_raw(i32::try_from(first).unwrap()).unwrap();
    rustix::process::kill_process(pid, rustix::process::Signal::KILL).unwrap();
    for _ in 0..100 {
        if matches!(proc_state(first), None | Some('Z')) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let answer = call(&step, json!({"mode": "echo"})).await.unwrap();
    assert_ne!(answer["pid"].as_u64(), Some(first.into()));
}

/// The pid file a test process acting as the service writes its pool process's pid to.
const SERVICE_ENV: &str = "CHORUS_STEPS_TEST_SERVICE_PIDFILE";

#[test]
#[ignore = "the service process of the_steps_die_with_their_service, which runs it"]
fn service_that_gets_killed() {
    let Ok(path) = std::env::var(SERVICE_ENV) else {
        return;
    };
    let runtime = tokio::runtime::Runtime::new().unwrap();
    runtime.block_on(async {
        // The step hangs without reading its stdin, so only the parent-death signal ends it
        // (a closed stdin would end a well-behaved pool process by itself).
        let _ = call(&pool(1), json!({"mode": "hang", "pidfile": path})).await;
    });
}

#[tokio::test]
async fn the_steps_die_with_their_service() {
    let pids = pid_file();
    let mut service = std::process::Command::new(std::env::current_exe().unwrap())
        .args([
            "--exact",
            "steps::tests::pool::service_that_gets_killed",
            "--ignored",
        ])
        .env(SERVICE_ENV, &pids)
        .stdout(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let (step_pid, grandchild) = read_pids(&pids).await;
    assert!(matches!(proc_state(step_pid), Some(state) if state != 'Z'));
    service.kill().unwrap();
    service.wait().unwrap();
    let mut ended = false;
    for _ in 0..250 {
        ended = matches!(proc_state(step_pid), None | Some('Z'));
        if ended {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // The signal is not inherited by what the step forks (prctl(2)): clean up what is left.
    for pid in [grandchild, step_pid] {
        if let Some(pid) = rustix::process::Pid::from_raw(i32::try_from(pid).unwrap()) {
            let _ = rustix::process::kill_process(pid, rustix::process::Signal::KILL);
        }
    }
    assert!(
        ended,
        "pool process {step_pid} outlived its SIGKILLed service"
    );
}

#[test]
fn a_pool_process_outlives_the_blocking_thread_that_started_it() {
    // The parent-death signal follows the thread that forked: a pool process forked from a
    // blocking thread (where file kinds' planners run) would die when that thread idles out.
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .thread_keep_alive(Duration::from_millis(50))
        .enable_all()
        .build()
        .unwrap();
    let step = pool(1);
    let first = runtime.block_on(async {
        let step = step.clone();
        tokio::task::spawn_blocking(move || tokio::runtime::Handle::current().block_on(pid(&step)))
            .await
            .unwrap()
    });
    std::thread::sleep(Duration::from_millis(500));
    assert_eq!(runtime.block_on(pid(&step)), first);
}
