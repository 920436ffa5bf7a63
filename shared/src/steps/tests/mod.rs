//! Tests of the steps module: real Python processes (tests/fixtures/steps/) and a real HTTP
#![allow(clippy::unwrap_used)]
//! server, no mocks. Split by runner; the helpers here.

mod command;
mod config;
mod http;
mod pool;

use std::path::{Path, PathBuf};
use std::time::Duration;

use tokio_util::sync::CancellationToken;

use super::{CallLimits, Step, StepError, StepSpec};

/// The fixtures' directory.
fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/fixtures/steps")
}

/// A step from its spec written as JSON (the serde form of the kinds file's TOML table).
fn step(spec: serde_json::Value) -> Step {
    let spec: StepSpec = serde_json::from_value(spec).unwrap();
    Step::build(&spec, &fixtures()).unwrap()
}

fn limits() -> CallLimits {
    CallLimits {
        timeout: Duration::from_secs(20),
        max_answer_bytes: 10_000,
    }
}

async fn call(step: &Step, request: serde_json::Value) -> Result<serde_json::Value, StepError> {
    let request = serde_json::to_vec(&request).unwrap();
    let answer = step
        .call(&request, limits(), &CancellationToken::new())
        .await?;
    Ok(serde_json::from_slice(&answer).unwrap())
}

fn assert_retryable(result: Result<serde_json::Value, StepError>, needle: &str) {
    match result {
        Err(StepError::Retryable { message, .. }) => {
            assert!(message.contains(needle), "{message:?} lacks {needle:?}")
        }
        other => panic!("expected a retryable error with {needle:?}, got {other:?}"),
    }
}

fn assert_fatal(result: Result<serde_json::Value, StepError>, needle: &str) {
    match result {
        Err(StepError::Fatal { message }) => {
            assert!(message.contains(needle), "{message:?} lacks {needle:?}")
        }
        other => panic!("expected a fatal error with {needle:?}, got {other:?}"),
    }
}

/// A fresh path for a fixture's pid file.
fn pid_file() -> PathBuf {
    std::env::temp_dir().join(format!("chorus-steps-{}.pids", uuid::Uuid::new_v4()))
}

/// The two pids (step process, its grandchild) a hanging fixture wrote, once it has.
async fn read_pids(path: &Path) -> (u32, u32) {
    for _ in 0..200 {
        if let Ok(text) = std::fs::read_to_string(path) {
            let mut pids = text.split_whitespace().map(|p| p.parse::<u32>().unwrap());
            let _ = std::fs::remove_file(path);
            return (pids.next().unwrap(), pids.next().unwrap());
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("the fixture never wrote {}", path.display());
}

/// The state letter of `/proc/<pid>/stat` (`R`, `S`, `Z`, ...), or `None` when there is no
/// such process.
fn proc_state(pid: u32) -> Option<char> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    stat.rsplit_once(')')?.1.trim_start().chars().next()
}

/// Our own child is reaped (no process, not even a zombie); a grandchild, reparented to the
/// init process, no longer runs (gone, or a zombie waiting for init).
async fn assert_gone(child: u32, grandchild: u32) {
    for _ in 0..100 {
        let child_gone = proc_state(child).is_none();
        let grandchild_dead = matches!(proc_state(grandchild), None | Some('Z' | 'X'));
        if child_gone && grandchild_dead {
            return;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    panic!(
        "left behind: child {child} state {:?}, grandchild {grandchild} state {:?}",
        proc_state(child),
        proc_state(grandchild)
    );
}
