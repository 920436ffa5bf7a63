//! `chorus dead`: list, show, requeue and purge the dead letters of `chorus.dead`
//! (docs/operations.md#dead-letters). Needs a RabbitMQ user with the `admin` permissions of
//! deploy/acl/rabbitmq.permissions (read `chorus.dead`, write the default exchange).

use std::{
    io::{BufRead, IsTerminal, Write},
    time::Duration,
};

use chorus_shared::{
    admin::{dead, tasks::rfc3339},
    amqp::Publisher,
    error::BrokerError,
};
use clap::Subcommand;
use lapin::Connection;

/// Dead letters read per look by default (from the head of the queue).
const DEFAULT_LIMIT: usize = 1000;

/// `chorus dead ...`.
#[derive(Subcommand, Debug)]
pub enum DeadCommand {
    /// List the dead letters from the head of chorus.dead (none removed): key, queue of
    /// origin, reason, time, size.
    List {
        /// Most letters read.
        #[arg(long, default_value_t = DEFAULT_LIMIT)]
        limit: usize,
        /// Print JSON instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// Print one dead letter as JSON, with every header and its body (as UTF-8 text, bytes
    /// that are not replaced).
    Show {
        /// Its key, as `list` prints it.
        key: String,
        /// Most letters searched.
        #[arg(long, default_value_t = DEFAULT_LIMIT)]
        limit: usize,
    },
    /// Send dead letters back to the queue each came from, without their dead-letter headers;
    /// each is removed from chorus.dead only once the broker confirmed the copy.
    Requeue {
        /// Their keys, as `list` prints them.
        #[arg(required = true)]
        keys: Vec<String>,
        /// Most letters searched.
        #[arg(long, default_value_t = DEFAULT_LIMIT)]
        limit: usize,
    },
    /// Remove every dead letter, after a confirmation on the terminal unless --yes.
    Purge {
        /// Do not ask.
        #[arg(long)]
        yes: bool,
    },
}

/// What went wrong.
pub enum DeadError {
    /// Bad usage (exit 64).
    Usage(String),
    /// The broker failed (exit 69).
    Broker(BrokerError),
    /// Nothing found or done (exit 4), with what to say.
    NotFound(String),
}

impl From<BrokerError> for DeadError {
    fn from(error: BrokerError) -> Self {
        Self::Broker(error)
    }
}

/// Runs `command`; returns what to print on stdout.
///
/// # Errors
/// As [`DeadError`].
pub async fn run(
    connection: &Connection,
    publish_timeout: Duration,
    command: DeadCommand,
) -> Result<String, DeadError> {
    match command {
        DeadCommand::List { limit, json: true } => pretty(&dead::list(connection, limit).await?),
        DeadCommand::List { limit, json: false } => {
            Ok(table(&dead::list(connection, limit).await?))
        }
        DeadCommand::Show { key, limit } => match dead::show(connection, &key, limit).await? {
            Some((letter, body)) => pretty(&serde_json::json!({
                "letter": letter,
                "body": String::from_utf8_lossy(&body),
            })),
            None => Err(DeadError::NotFound(format!(
                "no dead letter {key:?} among the first {limit}"
            ))),
        },
        DeadCommand::Requeue { keys, limit } => {
            let publisher = Publisher::open(connection, publish_timeout).await?;
            let done = dead::requeue(connection, &publisher, &keys, limit).await?;
            let printed = pretty(&done)?;
            if done.iter().any(|r| r.error.is_some()) {
                println!("{printed}");
                return Err(DeadError::NotFound(
                    "some dead letters were not requeued".into(),
                ));
            }
            Ok(printed)
        }
        DeadCommand::Purge { yes } => {
            if !yes && !confirmed()? {
                return Err(DeadError::NotFound("not purged".into()));
            }
            let purged = dead::purge(connection).await?;
            Ok(format!("purged {purged} dead letter(s) from chorus.dead"))
        }
    }
}

/// Asks on the terminal; a non-terminal stdin needs --yes.
fn confirmed() -> Result<bool, DeadError> {
    if !std::io::stdin().is_terminal() {
        return Err(DeadError::Usage(
            "purge removes every dead letter for good: confirm with --yes when not on a terminal"
                .into(),
        ));
    }
    eprint!("Remove every message of chorus.dead for good? Type yes: ");
    drop(std::io::stderr().flush());
    let mut answer = String::new();
    std::io::stdin()
        .lock()
        .read_line(&mut answer)
        .map_err(|e| DeadError::Usage(format!("cannot read the answer: {e}")))?;
    Ok(answer.trim() == "yes")
}

/// The letters as an aligned table.
fn table(letters: &[dead::DeadLetter]) -> String {
    let mut lines = vec![format!(
        "{:<12}  {:<28}  {:<20}  {:>9}  REASON",
        "KEY", "QUEUE", "TIME", "SIZE"
    )];
    for l in letters {
        lines.push(format!(
            "{:<12}  {:<28}  {:<20}  {:>9}  {}",
            l.key,
            l.queue.as_deref().unwrap_or("-"),
            l.time_s
                .map_or("-".to_owned(), |s| rfc3339(s.saturating_mul(1000))),
            l.size,
            l.reason.as_deref().unwrap_or("-")
        ));
    }
    lines.join("\n")
}

/// `value` as pretty JSON.
fn pretty<T: serde::Serialize>(value: &T) -> Result<String, DeadError> {
    serde_json::to_string_pretty(value)
        .map_err(|e| DeadError::Usage(format!("cannot print as JSON: {e}")))
}
