//! `chorus`: the client CLI — submit a task (optionally waiting for its outcome with a live
//! progress bar), show a task's state, print its outcome; list the kinds the live services
//! serve (or those a kinds file adds to the built-in ones), or check such a file; show and set
//! the limits of language models every worker enforces (`limits`); list the recent tasks
//! (`tasks`), draw a running task's graph (`graph`), look into and replay `chorus.dead` (`dead`),
//! serve the web dashboard (`dashboard`).

#[path = "chorus/dead.rs"]
mod dead;
#[path = "chorus/limits.rs"]
mod limits;
#[path = "chorus/tasks.rs"]
mod tasks;

use std::{io::IsTerminal, process::ExitCode, time::Duration};

use std::collections::HashMap;

use chorus_shared::{
    admin,
    client::{CancelRequest, Client, ClientError, TaskStatus, TypeStatus},
    config::{ConnectArgs, KindsArgs, DEFAULT_MAX_MESSAGE_BYTES, EXIT_USAGE},
    error::StoreError,
    kinds::Registry,
    protocol::{OnFailure, Outcome, Status, TaskOptions, TaskRequest},
    services,
    store::Store,
};
use clap::{Args, Parser, Subcommand};
use indicatif::{MultiProgress, ProgressBar, ProgressStyle};

/// Exit code for a `failed` outcome.
const EXIT_FAILED: u8 = 1;
/// Exit code for a `rejected` outcome.
const EXIT_REJECTED: u8 = 3;
/// Exit code when there is no such task or no outcome yet (or the wait timed out).
const EXIT_NO_OUTCOME: u8 = 4;
/// Exit code for a `cancelled` outcome.
const EXIT_CANCELLED: u8 = 5;
/// How long a synthesizer keeps a cancel of a task not known yet by default, as `cancel` says
/// it: the default `--outcome-ttl-secs` (`config::OutcomeArgs`).
const DEFAULT_OUTCOME_TTL: &str = "24 h";
/// Exit code of `cancel` when the task had already finished (nothing was sent).
const EXIT_ALREADY_FINISHED: u8 = 6;
/// Exit code when Ctrl-C stopped `submit --wait` or `watch` (128 + SIGINT, as shells report
/// it); the task goes on.
const EXIT_INTERRUPTED: u8 = 130;
/// Exit code when RabbitMQ or Redis cannot be used (BSD `EX_UNAVAILABLE`).
const EXIT_UNAVAILABLE: u8 = 69;

/// Longest wait for an outcome by default (`submit --wait`, `watch`), in seconds: an hour.
const DEFAULT_WAIT_SECS: u64 = 3600;
/// How often `watch` reads the task's progress from Redis.
const WATCH_POLL: Duration = Duration::from_millis(250);
/// How often `submit --wait` refreshes its progress bar from Redis (and looks for an outcome
/// whose reply was missed).
const PROGRESS_TICK: Duration = Duration::from_millis(200);

#[derive(Parser, Debug)]
#[command(
    name = "chorus",
    version,
    about = "Submit Chorus tasks and follow them.",
    after_help = "Exit codes: 0 succeeded or partial, 1 failed, 3 rejected, 4 no such task / no \
                  outcome yet / wait timed out / cancel of a task not known yet (sent and kept \
                  for its claim), 5 cancelled, 6 cancel (or graph) of a task \
                  already finished, 64 bad usage, 69 RabbitMQ or Redis unavailable, 130 interrupted \
                  (Ctrl-C; the task goes on)."
)]
struct Cli {
    #[command(flatten)]
    connect: ConnectArgs,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Submit a task; prints its id, or with --wait its outcome as JSON.
    Submit(SubmitArgs),
    /// Show a task's state and counters as JSON.
    Status {
        /// Task id.
        id: String,
    },
    /// Print a finished task's outcome as JSON.
    Result {
        /// Task id.
        id: String,
    },
    /// Cancel a task: queued subtasks are dropped, running handlers see their cancellation
    /// token, and the outcome is `cancelled` with the stats so far. A task already finished
    /// exits 6 (with its status) and nothing is sent. A task not known yet exits 4, but the
    /// cancel is sent and kept for the synthesizers' outcome TTL: a task submitted a moment
    /// ago and not claimed yet ends `cancelled` when it is.
    Cancel {
        /// Task id.
        id: String,
        /// Why, recorded in the outcome's errors.
        #[arg(long)]
        reason: Option<String>,
    },
    /// Follow a task live: a progress bar per worker type on a terminal, a plain line per change
    /// otherwise; prints the outcome as JSON at the end. An unknown task exits 4 at once.
    Watch {
        /// Task id.
        id: String,
        /// Wait up to this many seconds for a task Redis does not know yet (just submitted,
        /// not claimed by an orchestrator yet) before exiting 4.
        #[arg(long, default_value_t = 0)]
        wait_unknown_secs: u64,
        /// Give up after this many seconds (the task goes on).
        #[arg(long, default_value_t = DEFAULT_WAIT_SECS)]
        timeout_secs: u64,
    },
    /// List the kinds the live services of the deployment serve, as JSON, from their
    /// announcements in Redis (refreshed every 2 s): each definition (fingerprint) with its
    /// steps and the services (role, instance, worker types) running it; a kind with two live
    /// definitions, or that a role lacks, is flagged. With --kinds-file, list instead, as text,
    /// the kinds this machine's services would serve with that file (the built-in ones and the
    /// file's) and their steps, connecting to nothing. `chorus kinds check FILE` checks a kinds
    /// file.
    Kinds(KindsCommand),
    /// Show or set the limits of the models of `llm` steps (requests and tokens per minute,
    /// calls in flight) that every worker enforces, kept in Redis (docs/llm.md#limits).
    /// `set` and `clear` need a Redis user with the `limits-admin` rules.
    #[command(subcommand)]
    Limits(limits::LimitsCommand),
    /// List the recent tasks, newest first (id, kind, status, submitted, finished, progress),
    /// from the index the services keep in Redis (the last 7 days, at most 10,000 tasks).
    Tasks(tasks::TasksArgs),
    /// List, show, requeue or purge the dead letters of chorus.dead. Needs a RabbitMQ user
    /// with the `admin` permissions of deploy/acl/rabbitmq.permissions.
    #[command(subcommand)]
    Dead(dead::DeadCommand),
    /// Print a running task's subtasks as a dependency graph: each subtask's worker type and
    /// state (pending, released = queued or running, succeeded, failed, skipped) and an edge
    /// from each dependency to what waits for it, from the recorded plan. An unknown task exits
    /// 4; a finished one exits 6 (its plan is not kept past the outcome).
    Graph {
        /// Task id.
        id: String,
        /// dot (Graphviz: `chorus graph ID | dot -Tsvg > graph.svg`), mermaid or json.
        #[arg(long, default_value = "dot", value_parser = ["dot", "mermaid", "json"])]
        format: String,
    },
    /// Serve a web dashboard until Ctrl-C: the recent and running tasks (filter by kind and
    /// status), each task's progress per worker type, errors, tokens and its subtasks as a
    /// dependency graph coloured by state (live while it runs), and the dead letters of
    /// chorus.dead with a Requeue button each. It has NO authentication: it listens on loopback
    /// by default; to reach it from elsewhere use an SSH tunnel (`ssh -L 9620:127.0.0.1:9620
    /// host`) or a reverse proxy that authenticates (docs/operations.md#dashboard). Needs the
    /// RabbitMQ permissions of both `cli` and `admin` (deploy/acl/rabbitmq.permissions).
    Dashboard {
        /// Address to listen on, IP:PORT; one that is not loopback is served with a warning.
        #[arg(long, default_value = admin::dashboard::DEFAULT_LISTEN, value_name = "ADDR")]
        listen: std::net::SocketAddr,
    },
}

/// The flags of `chorus kinds`.
#[derive(Args, Debug)]
struct KindsCommand {
    #[command(flatten)]
    kinds: KindsArgs,
    #[command(subcommand)]
    check: Option<KindsCheck>,
}

/// `chorus kinds check FILE`.
#[derive(Subcommand, Debug)]
enum KindsCheck {
    /// Check a kinds file as a service would at start-up (programs found, URLs valid, env vars
    /// set, ...): exit 0 when it can be used, else one line naming the file, the kind and the
    /// key, and exit 64.
    Check {
        /// The kinds file.
        file: std::path::PathBuf,
    },
}

/// The flags of `chorus submit`.
#[derive(Args, Debug)]
struct SubmitArgs {
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

fn parse_on_failure(raw: &str) -> Result<OnFailure, String> {
    match raw {
        "fail" => Ok(OnFailure::Fail),
        "continue" => Ok(OnFailure::Continue),
        other => Err(format!("expected fail or continue, got {other:?}")),
    }
}

fn read_input(raw: &str) -> Result<rmpv::Value, String> {
    let text = match raw.strip_prefix('@') {
        Some(path) => std::fs::read_to_string(path).map_err(|e| format!("--input {path}: {e}"))?,
        None => raw.to_owned(),
    };
    serde_json::from_str(&text).map_err(|e| format!("--input is not valid JSON: {e}"))
}

fn exit_code_of(status: Status) -> u8 {
    match status {
        Status::Succeeded | Status::Partial => 0,
        Status::Failed => EXIT_FAILED,
        Status::Rejected => EXIT_REJECTED,
        Status::Cancelled => EXIT_CANCELLED,
    }
}

fn print_json<T: serde::Serialize>(value: &T) -> Result<(), String> {
    let text =
        serde_json::to_string_pretty(value).map_err(|e| format!("cannot print as JSON: {e}"))?;
    println!("{text}");
    Ok(())
}

enum Failure {
    Usage(String),
    Unavailable(ClientError),
    NoOutcome(String),
    /// Ctrl-C while waiting for task `0`.
    Interrupted(String),
}

impl From<ClientError> for Failure {
    fn from(error: ClientError) -> Self {
        Self::Unavailable(error)
    }
}

#[tokio::main]
async fn main() -> ExitCode {
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(error) if error.use_stderr() => {
            drop(error.print());
            return ExitCode::from(EXIT_USAGE as u8);
        }
        Err(error) => {
            drop(error.print());
            return ExitCode::SUCCESS;
        }
    };
    if let Err(message) = cli.connect.validate() {
        eprintln!("chorus: {message}");
        return ExitCode::from(EXIT_USAGE as u8);
    }
    match run(cli).await {
        Ok(code) => ExitCode::from(code),
        Err(Failure::Usage(message)) => {
            eprintln!("chorus: {message}");
            ExitCode::from(EXIT_USAGE as u8)
        }
        Err(Failure::Unavailable(error)) => {
            eprintln!("chorus: {error}");
            ExitCode::from(EXIT_UNAVAILABLE)
        }
        Err(Failure::NoOutcome(message)) => {
            eprintln!("chorus: {message}");
            ExitCode::from(EXIT_NO_OUTCOME)
        }
        Err(Failure::Interrupted(id)) => {
            eprintln!(
                "chorus: stopped waiting; task {id:?} goes on. Watch it with `chorus watch {id}`, \
                 cancel it with `chorus cancel {id}`."
            );
            ExitCode::from(EXIT_INTERRUPTED)
        }
    }
}

/// Runs the command; returns the exit code of what it found.
async fn run(cli: Cli) -> Result<u8, Failure> {
    let connect = &cli.connect;
    match cli.command {
        Command::Submit(args) => submit(connect, args).await,
        Command::Status { id } => {
            let client = Client::connect(connect).await?;
            match client.status(&id).await? {
                Some(status) => {
                    print_json(&status).map_err(Failure::Usage)?;
                    Ok(0)
                }
                None => Err(no_such_task(&id)),
            }
        }
        Command::Cancel { id, reason } => cancel(connect, &id, reason).await,
        Command::Watch {
            id,
            timeout_secs,
            wait_unknown_secs,
        } => {
            let client = Client::connect(connect).await?;
            let limits = (
                Duration::from_secs(timeout_secs),
                Duration::from_secs(wait_unknown_secs),
            );
            let outcome = tokio::select! {
                outcome = watch(&client, &id, limits) => outcome?,
                _ = tokio::signal::ctrl_c() => return Err(Failure::Interrupted(id)),
            };
            print_outcome(&outcome)
        }
        Command::Result { id } => result(connect, &id).await,
        Command::Kinds(command)
            if command.check.is_none() && command.kinds.kinds_file.is_none() =>
        {
            live_kinds(connect).await
        }
        Command::Kinds(command) => kinds(command).map_err(Failure::Usage),
        Command::Limits(command) => model_limits(connect, command).await,
        Command::Graph { id, format } => graph(connect, &id, &format).await,
        Command::Dead(command) => dead_letters(connect, command).await,
        Command::Dashboard { listen } => {
            // A long-running server: its requeues, template and event-stream errors are logged
            // (stderr, `RUST_LOG`), as the services log theirs.
            chorus_shared::telemetry::init(chorus_shared::config::LogFormat::Text);
            let client = Client::connect(connect).await?;
            admin::dashboard::serve(client, listen, chorus_shared::shutdown::on_signal())
                .await
                .map_err(Failure::Usage)?;
            Ok(0)
        }
        Command::Tasks(args) => {
            let store = connect_store(connect).await?;
            let shown = tasks::run(&store, &args)
                .await
                .map_err(|e| Failure::Unavailable(e.into()))?;
            println!("{shown}");
            Ok(0)
        }
    }
}

/// `chorus limits ...`: prints every model's limits as JSON.
async fn model_limits(
    connect: &ConnectArgs,
    command: limits::LimitsCommand,
) -> Result<u8, Failure> {
    let store = connect_store(connect).await?;
    match limits::run(&store, command).await {
        Ok(shown) => {
            print_json(&shown).map_err(Failure::Usage)?;
            Ok(0)
        }
        Err(limits::LimitsError::Usage(message)) => Err(Failure::Usage(message)),
        Err(limits::LimitsError::Unavailable(e)) => Err(Failure::Unavailable(e.into())),
    }
}

/// Connects to Redis alone; a failure names the address tried (password hidden).
async fn connect_store(connect: &ConnectArgs) -> Result<Store, Failure> {
    let redis = connect
        .redis()
        .map_err(|e| Failure::Unavailable(StoreError::Settings(e).into()))?;
    Store::connect_to(&redis, connect.redis_timeout())
        .await
        .map_err(|e| match e {
            StoreError::TlsRefused(_) => Failure::Unavailable(e.into()),
            other => Failure::Unavailable(ClientError::connecting("Redis", &redis, other)),
        })
}

/// `chorus kinds`: the kinds the live services announce, as JSON
/// (docs/operations.md#rolling-out-a-kind).
async fn live_kinds(connect: &ConnectArgs) -> Result<u8, Failure> {
    let store = connect_store(connect).await?;
    let live = services::read_live(&store)
        .await
        .map_err(|e| Failure::Unavailable(e.into()))?;
    print_json(&services::catalogue(&live)).map_err(Failure::Usage)?;
    Ok(0)
}

/// `chorus kinds --kinds-file F [check FILE]`: loads the kinds as a service would (with the default
/// `--max-message-bytes`), then lists them, or says the file is fine.
fn kinds(command: KindsCommand) -> Result<u8, String> {
    let checking = command.check.is_some();
    let kinds = match command.check {
        Some(KindsCheck::Check { file }) => KindsArgs {
            kinds_file: Some(file),
        },
        None => command.kinds,
    };
    let max_answer_bytes = usize::try_from(DEFAULT_MAX_MESSAGE_BYTES).unwrap_or(usize::MAX);
    let registry = kinds.registry(Registry::builtin(), max_answer_bytes)?;
    if let (Some(path), true) = (&kinds.kinds_file, checking) {
        let added = registry.names().len() - Registry::builtin().names().len();
        println!("{}: {added} kinds, all usable", path.display());
        return Ok(0);
    }
    for name in registry.names() {
        let Some(kind) = registry.get(&name) else {
            continue;
        };
        let steps = kind.steps();
        match (steps.is_empty(), kind.description()) {
            (true, _) => println!("{name}  (built-in, Rust)"),
            (false, Some(description)) => println!("{name}  {description}"),
            (false, None) => println!("{name}"),
        }
        for (step, runs) in steps {
            println!("    {step}: {runs}");
        }
    }
    Ok(0)
}

/// `chorus submit`: sends the task, then prints its id, or with `--wait` its outcome.
async fn submit(connect: &ConnectArgs, args: SubmitArgs) -> Result<u8, Failure> {
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
async fn cancel(connect: &ConnectArgs, id: &str, reason: Option<String>) -> Result<u8, Failure> {
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

/// `chorus dead ...`: connects to RabbitMQ alone (a failure names the URL tried) and runs it.
async fn dead_letters(connect: &ConnectArgs, command: dead::DeadCommand) -> Result<u8, Failure> {
    let nodes = connect
        .amqp_nodes()
        .map_err(|e| Failure::Unavailable(chorus_shared::error::BrokerError::Settings(e).into()))?;
    let timeout = connect.amqp_connect_timeout();
    let connection = chorus_shared::amqp::connect_any(&nodes, 0, "chorus dead", timeout)
        .await
        .map_err(|e| Failure::Unavailable(ClientError::connecting_any("RabbitMQ", &nodes, e)))?
        .connection;
    match dead::run(&connection, connect.publish_timeout(), command).await {
        Ok(shown) => {
            println!("{shown}");
            Ok(0)
        }
        Err(dead::DeadError::Usage(message)) => Err(Failure::Usage(message)),
        Err(dead::DeadError::Broker(e)) => Err(Failure::Unavailable(e.into())),
        Err(dead::DeadError::NotFound(message)) => Err(Failure::NoOutcome(message)),
    }
}

/// `chorus graph`: prints the task's graph in `format`.
async fn graph(connect: &ConnectArgs, id: &str, format: &str) -> Result<u8, Failure> {
    let store = connect_store(connect).await?;
    let graph = match admin::graph::read(&store, id).await {
        Ok(graph) => graph,
        Err(admin::graph::GraphError::Store(e)) => return Err(Failure::Unavailable(e.into())),
        Err(e @ admin::graph::GraphError::Unknown(_)) => {
            return Err(Failure::NoOutcome(e.to_string()))
        }
        Err(e @ admin::graph::GraphError::Finished(_)) => {
            eprintln!("chorus: {e}");
            return Ok(EXIT_ALREADY_FINISHED);
        }
    };
    match format {
        "mermaid" => print!("{}", admin::graph::to_mermaid(&graph)),
        "json" => print_json(&graph).map_err(Failure::Usage)?,
        _ => print!("{}", admin::graph::to_dot(&graph)),
    }
    Ok(0)
}

/// `chorus result`: prints the task's outcome, or says why there is none.
async fn result(connect: &ConnectArgs, id: &str) -> Result<u8, Failure> {
    let client = Client::connect(connect).await?;
    if let Some(outcome) = client.outcome(id).await? {
        return print_outcome(&outcome);
    }
    let state = client
        .status(id)
        .await?
        .map(|s| s.state)
        .unwrap_or("unknown");
    Err(Failure::NoOutcome(format!(
        "task {id:?} has no outcome yet (state: {state})"
    )))
}

/// Prints `outcome` as JSON; returns the exit code of its status.
fn print_outcome(outcome: &Outcome) -> Result<u8, Failure> {
    print_json(outcome).map_err(Failure::Usage)?;
    Ok(exit_code_of(outcome.status))
}

/// The failure of a command naming a task Redis does not know.
fn no_such_task(id: &str) -> Failure {
    Failure::NoOutcome(format!("no task {id:?} (unknown, or its record expired)"))
}

/// One line of progress of a task, for logs and pipes.
fn progress_line(status: &TaskStatus) -> String {
    let types: Vec<String> = status
        .types
        .iter()
        .map(|t| {
            let p = &t.progress;
            let mut line = format!(
                "{} {}/{} settled ({} running, {} queued, {} waiting, {} failed, {} skipped)",
                p.worker_type,
                p.settled(),
                p.total,
                t.running(),
                t.queued_here(),
                p.waiting(),
                p.failed,
                p.skipped
            );
            if let Some(note) = &t.note {
                line.push_str(&format!(" [{note}]"));
            }
            line
        })
        .collect();
    let mut line = format!(
        "{} {} round {} retries {}: {}",
        status.id,
        status.state,
        status.round,
        status.retries,
        types.join(" · ")
    );
    if let Some(usage) = status.usage_line() {
        line.push_str(&format!(" | {usage}"));
    }
    line
}

/// The message beside a worker type's bar: running (what workers hold, never the queued ones),
/// queued, waiting, failed, skipped, and why it does not progress.
fn bar_message(t: &TypeStatus) -> String {
    let p = &t.progress;
    format!(
        "{} running · {} queued · {} waiting · {} failed · {} skipped{}",
        t.running(),
        t.queued_here(),
        p.waiting(),
        p.failed,
        p.skipped,
        t.note
            .as_ref()
            .map(|n| format!(" · {n}"))
            .unwrap_or_default()
    )
}

/// Follows a task until it has an outcome: bars per worker type on a terminal, else a line
/// whenever the progress changes. `limits`: the longest wait for the outcome, and for a task
/// Redis does not know yet (zero: an unknown task fails at once).
async fn watch(
    client: &Client,
    id: &str,
    (limit, unknown_patience): (Duration, Duration),
) -> Result<Outcome, Failure> {
    let terminal = std::io::stderr().is_terminal();
    let bars = MultiProgress::new();
    let mut by_type: HashMap<String, ProgressBar> = HashMap::new();
    let style = ProgressStyle::with_template("{prefix:>12} [{bar:40}] {pos}/{len} {msg}")
        .unwrap_or_else(|_| ProgressStyle::default_bar())
        .progress_chars("=> ");
    let deadline = tokio::time::Instant::now() + limit;
    let mut last_line = String::new();
    let mut unknown_since: Option<tokio::time::Instant> = None;
    let mut usage_bar: Option<ProgressBar> = None;
    loop {
        if tokio::time::Instant::now() >= deadline {
            return Err(Failure::NoOutcome(format!(
                "gave up watching task {id:?} after {} s; it goes on",
                limit.as_secs()
            )));
        }
        match client.status(id).await? {
            None => {
                let since = *unknown_since.get_or_insert_with(tokio::time::Instant::now);
                if since.elapsed() >= unknown_patience {
                    return Err(no_such_task(id));
                }
            }
            Some(status) => {
                unknown_since = None;
                if terminal {
                    for t in &status.types {
                        let p = &t.progress;
                        let bar = by_type.entry(p.worker_type.clone()).or_insert_with(|| {
                            let bar = bars.add(ProgressBar::new(0));
                            bar.set_style(style.clone());
                            bar.set_prefix(p.worker_type.clone());
                            bar
                        });
                        bar.set_length(p.total);
                        bar.set_position(p.settled());
                        bar.set_message(bar_message(t));
                    }
                    if let Some(usage) = status.usage_line() {
                        usage_bar
                            .get_or_insert_with(|| bars.add(ProgressBar::new_spinner()))
                            .set_message(usage);
                    }
                } else {
                    let line = progress_line(&status);
                    if line != last_line {
                        eprintln!("{line}");
                        last_line = line;
                    }
                }
                if status.status.is_some() {
                    if let Some(outcome) = client.outcome(id).await? {
                        // `abandon`, not `finish`: finishing fills the bar, which after a
                        // cancel would show as settled what was only dropped.
                        for bar in by_type.values().chain(usage_bar.iter()) {
                            bar.abandon();
                        }
                        return Ok(outcome);
                    }
                }
            }
        }
        tokio::time::sleep(WATCH_POLL).await;
    }
}

/// Why a task does not progress (today: a worker type no worker serves), joined; empty when
/// nothing is known to hold it up.
fn stall_notes(status: &TaskStatus) -> String {
    let notes: Vec<&str> = status
        .types
        .iter()
        .filter_map(|t| t.note.as_deref())
        .collect();
    notes.join("; ")
}

/// Waits for the outcome on the reply queue, drawing progress from Redis meanwhile. Redis is
/// also a fallback: an outcome stored there counts even if its reply was missed.
async fn wait_for_outcome(
    client: &Client,
    replies: &mut chorus_shared::client::ReplyQueue,
    id: &str,
    limit: Duration,
) -> Result<Outcome, Failure> {
    let bar = if std::io::stderr().is_terminal() {
        ProgressBar::new(0)
    } else {
        ProgressBar::hidden()
    };
    bar.set_style(
        ProgressStyle::with_template(
            "{spinner} [{bar:40}] {pos}/{len} subtasks settled · {msg} · {elapsed}",
        )
        .unwrap_or_else(|_| ProgressStyle::default_bar())
        .progress_chars("=> "),
    );
    let deadline = tokio::time::Instant::now() + limit;
    let mut tick = tokio::time::interval(PROGRESS_TICK);
    let mut last_notes = String::new();
    let interrupt = tokio::signal::ctrl_c();
    tokio::pin!(interrupt);
    let outcome = loop {
        tokio::select! {
            reply = replies.next_outcome() => break reply?,
            _ = &mut interrupt => {
                bar.abandon();
                return Err(Failure::Interrupted(id.to_owned()));
            }
            _ = tick.tick() => {
                if tokio::time::Instant::now() >= deadline {
                    bar.abandon();
                    return Err(Failure::NoOutcome(format!("gave up waiting for task {id:?} after {} s; it goes on", limit.as_secs())));
                }
                if let Some(status) = client.status(id).await? {
                    bar.set_length(status.subtasks);
                    bar.set_position(status.settled);
                    let notes = stall_notes(&status);
                    if notes.is_empty() {
                        bar.set_message(status.state);
                    } else {
                        bar.set_message(format!("{} · {notes}", status.state));
                    }
                    if notes != last_notes && !notes.is_empty() {
                        // Said once, also without a terminal, so a script's log shows it.
                        bar.suspend(|| eprintln!("chorus: task {id} is not progressing: {notes}"));
                    }
                    last_notes = notes;
                    if status.status.is_some() {
                        if let Some(outcome) = client.outcome(id).await? {
                            break outcome;
                        }
                    }
                }
            }
        }
    };
    bar.finish_and_clear();
    Ok(outcome)
}
