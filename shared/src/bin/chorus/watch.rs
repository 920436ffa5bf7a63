//! Following a task to its outcome: `chorus watch`, and `chorus submit --wait`'s progress bars
//! (one per worker type on a terminal, else a line whenever the progress changes).

use std::{collections::HashMap, io::IsTerminal, time::Duration};

use chorus_shared::{
    client::{Client, TaskStatus, TypeStatus},
    protocol::Outcome,
};
use indicatif::{MultiProgress, ProgressBar, ProgressStyle};

use super::{no_such_task, Failure};

/// How often `watch` reads the task's progress from Redis.
pub(super) const WATCH_POLL: Duration = Duration::from_millis(250);

/// How often `submit --wait` refreshes its progress bar from Redis (and looks for an outcome
/// whose reply was missed).
pub(super) const PROGRESS_TICK: Duration = Duration::from_millis(200);

/// One line of progress of a task, for logs and pipes.
pub(super) fn progress_line(status: &TaskStatus) -> String {
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
pub(super) fn bar_message(t: &TypeStatus) -> String {
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
pub(super) async fn watch(
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
pub(super) fn stall_notes(status: &TaskStatus) -> String {
    let notes: Vec<&str> = status
        .types
        .iter()
        .filter_map(|t| t.note.as_deref())
        .collect();
    notes.join("; ")
}

/// Waits for the outcome on the reply queue, drawing progress from Redis meanwhile. Redis is
/// also a fallback: an outcome stored there counts even if its reply was missed.
pub(super) async fn wait_for_outcome(
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
