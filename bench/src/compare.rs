//! The services' default flags against the raw baseline and the tuned flags, side by side: at
//! one task size, rounds of the baseline, Chorus with no flags (what a user who starts the
//! services as the README says gets) and Chorus with the benchmark's former tuned flags, taken
//! in turns so that all three see the same minutes of the machine (issue 20).

use anyhow::Result;
use serde::Serialize;

use crate::{broker, raw::baseline, reset, run_once, Cli, Stat, System};

/// `--publish-batch` of the orchestrator in the tuned configuration.
const TUNED_PUBLISH_BATCH: &str = "1000";
/// `--concurrency` of the synthesizer in the tuned configuration.
const TUNED_SYNTHESIZER_CONCURRENCY: &str = "256";

/// The flags the services under measurement get.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Flags {
    /// None: each service's defaults.
    Defaults,
    /// The benchmark's flags from before the defaults were made fast: the worker's
    /// `--concurrency` and `--prefetch` both `--worker-concurrency` (100), the synthesizer's
    /// `--concurrency` 256, the orchestrator's `--publish-batch` 1000.
    Tuned,
}

impl Flags {
    /// The command-line flags of service `bin` (a binary's name), but for the worker's
    /// `--prefetch` ([`Flags::worker_prefetch`]).
    pub(crate) fn args(self, cli: &Cli, bin: &str) -> Vec<String> {
        let args: Vec<String> = match (self, bin) {
            (Self::Defaults, _) => Vec::new(),
            (Self::Tuned, "chorus-orchestrator") => {
                vec!["--publish-batch".into(), TUNED_PUBLISH_BATCH.into()]
            }
            (Self::Tuned, "chorus-worker") => {
                vec!["--concurrency".into(), cli.worker_concurrency.to_string()]
            }
            (Self::Tuned, "chorus-synthesizer") => {
                vec!["--concurrency".into(), TUNED_SYNTHESIZER_CONCURRENCY.into()]
            }
            (Self::Tuned, _) => Vec::new(),
        };
        args
    }

    /// The workers' `--prefetch`, when these flags set it (a measurement may override it).
    pub(crate) fn worker_prefetch(self, cli: &Cli) -> Option<u16> {
        match self {
            Self::Defaults => None,
            Self::Tuned => Some(cli.worker_concurrency),
        }
    }

    /// The flags as a line of the printed table.
    fn describe(self, cli: &Cli) -> String {
        let line = |bin: &str| {
            let mut args = self.args(cli, bin);
            if bin == "chorus-worker" {
                if let Some(prefetch) = self.worker_prefetch(cli) {
                    args.extend(["--prefetch".to_owned(), prefetch.to_string()]);
                }
            }
            format!("{bin} {}", args.join(" "))
        };
        ["chorus-orchestrator", "chorus-worker", "chorus-synthesizer"]
            .map(line)
            .join(", ")
    }
}

/// One round: the three rates, measured one after the other.
#[derive(Debug, Serialize)]
pub(crate) struct Round {
    baseline_msgs_per_s: f64,
    defaults_subtasks_per_s: f64,
    tuned_subtasks_per_s: f64,
    defaults_ratio: f64,
    tuned_ratio: f64,
}

/// The side-by-side measurement: every round, and the median (min–max) over them.
#[derive(Debug, Serialize)]
pub(crate) struct SideBySide {
    subtasks: u64,
    tuned_flags: String,
    rounds: Vec<Round>,
    baseline_msgs_per_s: Stat,
    defaults_subtasks_per_s: Stat,
    tuned_subtasks_per_s: Stat,
    defaults_ratio: Stat,
    tuned_ratio: Stat,
}

/// Runs `--repeat` rounds of the baseline, then one task of `n` no-op subtasks with the default
/// flags, then one with the tuned flags, each Chorus run on fresh services (one of each).
///
/// # Errors
/// A service that cannot start, a broker or Redis error, or a wrong outcome.
pub(crate) async fn measure(cli: &Cli, n: u64) -> Result<SideBySide> {
    let mut rounds = Vec::new();
    for round in 1..=cli.repeat.max(1) {
        eprintln!("side by side, round {round}: baseline, default flags, tuned flags, {n} each");
        let base = baseline(&broker(cli)?, n).await?;
        let defaults = chorus(cli, n, Flags::Defaults).await?;
        let tuned = chorus(cli, n, Flags::Tuned).await?;
        rounds.push(Round {
            baseline_msgs_per_s: base,
            defaults_subtasks_per_s: defaults,
            tuned_subtasks_per_s: tuned,
            defaults_ratio: defaults / base,
            tuned_ratio: tuned / base,
        });
    }
    let over = |figure: fn(&Round) -> f64| Stat::of(&rounds.iter().map(figure).collect::<Vec<_>>());
    Ok(SideBySide {
        subtasks: n,
        tuned_flags: Flags::Tuned.describe(cli),
        baseline_msgs_per_s: over(|r| r.baseline_msgs_per_s),
        defaults_subtasks_per_s: over(|r| r.defaults_subtasks_per_s),
        tuned_subtasks_per_s: over(|r| r.tuned_subtasks_per_s),
        defaults_ratio: over(|r| r.defaults_ratio),
        tuned_ratio: over(|r| r.tuned_ratio),
        rounds,
    })
}

/// One task of `n` subtasks through one orchestrator, one worker and one synthesizer started
/// with `flags` on emptied Redis and queues; subtasks per second.
async fn chorus(cli: &Cli, n: u64, flags: Flags) -> Result<f64> {
    reset(cli).await?;
    let _system = System::start_with(cli, 1, None, None, flags)?;
    run_once(cli, n, None).await
}

/// Prints the rounds and the medians, ratios within each round.
pub(crate) fn print(table: &SideBySide) {
    println!();
    println!(
        "default flags against the baseline, one task of {} subtasks, {} rounds in turns (baseline, defaults, tuned):",
        table.subtasks,
        table.rounds.len()
    );
    println!("tuned flags: {}", table.tuned_flags);
    println!(
        "{:>6} {:>16} {:>20} {:>14} {:>20} {:>14}",
        "round",
        "baseline msg/s",
        "defaults subtasks/s",
        "defaults ratio",
        "tuned subtasks/s",
        "tuned ratio"
    );
    for (index, round) in table.rounds.iter().enumerate() {
        println!(
            "{:>6} {:>16.0} {:>20.0} {:>14.2} {:>20.0} {:>14.2}",
            index + 1,
            round.baseline_msgs_per_s,
            round.defaults_subtasks_per_s,
            round.defaults_ratio,
            round.tuned_subtasks_per_s,
            round.tuned_ratio
        );
    }
    println!(
        "median (min–max): baseline {} msg/s; defaults {} subtasks/s, ratio {:.2} ({:.2}–{:.2}); tuned {} subtasks/s, ratio {:.2} ({:.2}–{:.2})",
        table.baseline_msgs_per_s,
        table.defaults_subtasks_per_s,
        table.defaults_ratio.median,
        table.defaults_ratio.min,
        table.defaults_ratio.max,
        table.tuned_subtasks_per_s,
        table.tuned_ratio.median,
        table.tuned_ratio.min,
        table.tuned_ratio.max
    );
}
