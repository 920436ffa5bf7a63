//! `chorus`: the client CLI — submit a task (optionally waiting for its outcome with a live
//! progress bar), show a task's state, print its outcome; list the kinds the live services
//! serve (or those a kinds file adds to the built-in ones), or check such a file; show and set
//! the limits of language models every worker enforces (`limits`); list the recent tasks
//! (`tasks`), draw a running task's graph (`graph`), look into and replay `chorus.dead` (`dead`),
//! serve the web dashboard (`dashboard`).

#[path = "chorus/dead.rs"]
mod dead;
#[path = "chorus/kinds.rs"]
mod kinds;
#[path = "chorus/limits.rs"]
mod limits;
#[path = "chorus/submit.rs"]
mod submit;
#[path = "chorus/tasks.rs"]
mod tasks;
#[path = "chorus/watch.rs"]
mod watch;

use std::{process::ExitCode, time::Duration};

use chorus_shared::{
    admin,
    client::{Client, ClientError},
    config::{ConnectArgs, EXIT_USAGE},
    error::StoreError,
    protocol::{Outcome, Status},
    store::Store,
};
use clap::{Parser, Subcommand};

use kinds::KindsCommand;
use submit::SubmitArgs;

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
        Command::Submit(args) => submit::submit(connect, args).await,
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
        Command::Cancel { id, reason } => submit::cancel(connect, &id, reason).await,
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
                outcome = watch::watch(&client, &id, limits) => outcome?,
                _ = tokio::signal::ctrl_c() => return Err(Failure::Interrupted(id)),
            };
            print_outcome(&outcome)
        }
        Command::Result { id } => result(connect, &id).await,
        Command::Kinds(command)
            if command.check.is_none() && command.kinds.kinds_file.is_none() =>
        {
            kinds::live_kinds(connect).await
        }
        Command::Kinds(command) => kinds::kinds(command).map_err(Failure::Usage),
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
