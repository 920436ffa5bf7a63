//! `chorus submit` and `chorus cancel`: sending a task (its flags, its input) and its
//! cancellation.

use std::time::Duration;

use chorus_shared::{
    client::{CancelRequest, Client},
    config::ConnectArgs,
    protocol::{OnFailure, TaskOptions, TaskRequest},
};
use clap::Args;

use super::{
    print_json, print_outcome, watch::wait_for_outcome, Failure, DEFAULT_OUTCOME_TTL,
    DEFAULT_WAIT_SECS, EXIT_ALREADY_FINISHED, EXIT_NO_OUTCOME,
};

/// The flags of `chorus submit`.
#[derive(Args, Debug)]
pub(super) struct SubmitArgs {
    /// Kind of the task, e.g. range-sum or wordfreq.
    #[arg(long)]
    kind: String,
    /// Task input: JSON text, or @FILE to read JSON from a file.
    #[arg(long)]
    input: String,
    /// Task id (default: a new UUID). Submitting an id again runs nothing new: you get the
    /// same outcome.
    #[arg(long)]
    id: Option<String>,
    /// Wait for the outcome, with a progress bar on a terminal, and print it.
    #[arg(long)]
    wait: bool,
    /// Attempts per subtask (default 3).
    #[arg(long)]
    max_attempts: Option<u32>,
    /// Time limit of one subtask attempt, in ms (default 300000).
    #[arg(long)]
    timeout_ms: Option<u64>,
    /// What a failed subtask does to the task: fail (default) or continue (partial result).
    #[arg(long, value_parser = parse_on_failure)]
    on_failure: Option<OnFailure>,
    /// Most subtasks of the task in flight at once, across all workers (default: no cap).
    #[arg(long, value_parser = clap::value_parser!(u32).range(1..))]
    max_concurrency: Option<u32>,
    /// Time limit of the whole task, in ms; past it the task fails "deadline exceeded".
    #[arg(long)]
    deadline_ms: Option<u64>,
    /// Review rounds the kind may run, the first included (default 1: no refinement).
    #[arg(long)]
    max_rounds: Option<u32>,
    /// Subtasks packed per message, 1 to 1000 (default 1): for tiny subtasks. Workers run
    /// a batch side by side and publish its results together.
    #[arg(long)]
    batch_size: Option<u32>,
    /// Token budget of the whole task (prompt + completion over every step's usage); once
    /// spent no further subtask or model call starts and the task fails "token budget
    /// exceeded".
    #[arg(long, value_parser = clap::value_parser!(u64).range(1..))]
    max_tokens: Option<u64>,
    /// Publish subtask.<status> events on chorus.events for this task.
    #[arg(long)]
    subtask_events: bool,
    /// With --wait, give up waiting after this many seconds (the task goes on).
    #[arg(long, default_value_t = DEFAULT_WAIT_SECS)]
    wait_timeout_secs: u64,
}

pub(super) fn parse_on_failure(raw: &str) -> Result<OnFailure, String> {
    match raw {
        "fail" => Ok(OnFailure::Fail),
        "continue" => Ok(OnFailure::Continue),
        other => Err(format!("expected fail or continue, got {other:?}")),
    }
}

pub(super) fn read_input(raw: &str) -> Result<rmpv::Value, String> {
    let text = match raw.strip_prefix('@') {
        Some(path) => std::fs::read_to_string(path).map_err(|e| format!("--input {path}: {e}"))?,
        None => raw.to_owned(),
    };
    serde_json::from_str(&text).map_err(|e| format!("--input is not valid JSON: {e}"))
}

/// `chorus submit`: sends the task, then prints its id, or with `--wait` its outcome.
pub(super) async fn submit(connect: &ConnectArgs, args: SubmitArgs) -> Result<u8, Failure> {
    let input = read_input(&args.input).map_err(Failure::Usage)?;
    let id = args.id.unwrap_or_else(|| uuid::Uuid::new_v4().to_string());
    let options = TaskOptions {
        max_attempts: args.max_attempts,
        timeout_ms: args.timeout_ms,
        on_failure: args.on_failure,
        max_concurrency: args.max_concurrency,
        deadline_ms: args.deadline_ms,
        max_rounds: args.max_rounds,
        subtask_events: args.subtask_events.then_some(true),
        batch_size: args.batch_size,
        max_tokens: args.max_tokens,
    };
    options
        .resolve()
        .map_err(|e| Failure::Usage(e.to_string()))?;
    let request = TaskRequest {
        kind: args.kind,
        input,
        id: Some(id.clone()),
        options: (options != TaskOptions::default()).then_some(options),
        parent: None,
    };
    let client = Client::connect(connect).await?;
    if !args.wait {
        client.submit(&request, None).await?;
        print_json(&serde_json::json!({ "id": id })).map_err(Failure::Usage)?;
        return Ok(0);
    }
    let mut replies = client.reply_queue().await?;
    client.submit(&request, Some(&replies.name)).await?;
    // The id first, on stderr (stdout stays the outcome's JSON), so it is known even if the
    // wait is given up.
    eprintln!(
        "chorus: submitted task {id}; waiting for its outcome (Ctrl-C stops waiting, not the task)"
    );
    let limit = Duration::from_secs(args.wait_timeout_secs);
    let outcome = wait_for_outcome(&client, &mut replies, &id, limit).await?;
    print_outcome(&outcome)
}

/// `chorus cancel`: sends the cancellation of a task; says so, with a distinct exit code, when
/// the task is not known yet (4: sent, and kept for its claim) or already finished (6: nothing
/// sent).
pub(super) async fn cancel(
    connect: &ConnectArgs,
    id: &str,
    reason: Option<String>,
) -> Result<u8, Failure> {
    let client = Client::connect(connect).await?;
    match client.cancel_if_live(id, reason).await? {
        CancelRequest::Requested => {
            print_json(&serde_json::json!({ "id": id, "cancel": "requested" }))
                .map_err(Failure::Usage)?;
            Ok(0)
        }
        CancelRequest::NotKnownYet => {
            print_json(&serde_json::json!({ "id": id, "cancel": "kept" }))
                .map_err(Failure::Usage)?;
            eprintln!(
                "chorus: task {id:?} is not known yet; the cancel is kept for the synthesizers' \
                 outcome TTL (--outcome-ttl-secs, {} by default) and applies if it is submitted",
                DEFAULT_OUTCOME_TTL
            );
            Ok(EXIT_NO_OUTCOME)
        }
        CancelRequest::Finished(status) => {
            let status = status.map_or("unknown".to_owned(), |s| s.as_str().to_owned());
            print_json(
                &serde_json::json!({ "id": id, "cancel": "already finished", "status": status }),
            )
            .map_err(Failure::Usage)?;
            eprintln!("chorus: task {id:?} already finished ({status}); nothing to cancel");
            Ok(EXIT_ALREADY_FINISHED)
        }
    }
}
