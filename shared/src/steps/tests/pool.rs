//! Pool mode: reuse, replacement after a crash or garbage, the group on timeout/cancel, drop.
#![allow(clippy::unwrap_used)]

use std::time::Duration;

use serde_json::json;
use tokio_util::sync::CancellationToken;

use super::*;

fn pool(size: usize) -> Step {
    step(
        json!({"type": "command", "mode": "pool", "pool_size": size, "program": "python3",
        "args": ["pool.py"], "grace_ms": 300, "timeout_ms": 3000}),
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
    let result = call(&step, json!({"mode": "hang", "pidfile": pids})).await;
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
