//! Failpoints for the fault-injection suite: named places where a test can make a process
//! abort or stall, to prove that a crash exactly there loses nothing.
//!
//! Set `CHORUS_FAILPOINTS=name=action[;name=action...]` with action `abort` (the process dies on
//! the spot, like a SIGKILL) or `sleep-ms:N`. Unset in production: a failpoint is then one
//! lookup in an empty map.

use std::{collections::HashMap, sync::LazyLock, time::Duration};

/// Environment variable holding the failpoint configuration.
pub const ENV: &str = "CHORUS_FAILPOINTS";

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Action {
    Abort,
    Sleep(Duration),
}

static CONFIGURED: LazyLock<HashMap<String, Action>> = LazyLock::new(|| {
    std::env::var(ENV)
        .map(|raw| parse(&raw))
        .unwrap_or_default()
});

fn parse(raw: &str) -> HashMap<String, Action> {
    let mut points = HashMap::new();
    for entry in raw.split(';').map(str::trim).filter(|e| !e.is_empty()) {
        let Some((name, action)) = entry.split_once('=') else {
            tracing::warn!(entry, "ignoring failpoint without an action");
            continue;
        };
        let action = match action.split_once(':') {
            None if action == "abort" => Action::Abort,
            Some(("sleep-ms", ms)) => match ms.parse() {
                Ok(ms) => Action::Sleep(Duration::from_millis(ms)),
                Err(_) => {
                    tracing::warn!(entry, "ignoring failpoint with a bad duration");
                    continue;
                }
            },
            _ => {
                tracing::warn!(entry, "ignoring failpoint with an unknown action");
                continue;
            }
        };
        points.insert(name.to_owned(), action);
    }
    points
}

/// Triggers the failpoint `name` if it is configured.
pub async fn hit(name: &str) {
    if let Some(pause) = triggered(name) {
        tokio::time::sleep(pause).await;
    }
}

/// [`hit`] from blocking code (a planner or synthesis): a sleep blocks the thread.
pub fn hit_blocking(name: &str) {
    if let Some(pause) = triggered(name) {
        std::thread::sleep(pause);
    }
}

/// Aborts the process at `name` if that is its action; else the pause it asks for, if any.
fn triggered(name: &str) -> Option<std::time::Duration> {
    match CONFIGURED.get(name) {
        None => None,
        Some(Action::Abort) => {
            tracing::error!(failpoint = name, "failpoint: aborting the process");
            std::process::abort();
        }
        Some(Action::Sleep(duration)) => {
            tracing::warn!(
                failpoint = name,
                ms = duration.as_millis() as u64,
                "failpoint: sleeping"
            );
            Some(*duration)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn configuration_is_parsed_and_bad_entries_skipped() {
        let points = parse("a=abort; b=sleep-ms:250;c=explode;d");
        assert_eq!(points.get("a"), Some(&Action::Abort));
        assert_eq!(
            points.get("b"),
            Some(&Action::Sleep(Duration::from_millis(250)))
        );
        assert_eq!(points.len(), 2);
    }
}
