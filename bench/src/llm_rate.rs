//! The "rate under a shared limit" measurement (issue 18, Performance: "with a limit of N
//! requests per minute across three worker processes, the achieved rate is within 5 % of N and
//! never above it plus the burst"): three worker processes run one task of `--llm-rate-calls`
//! `llm` subtasks on a model declaring `requests_per_minute = N` and `burst = B`, against
//! llm-katan (echo backend, no injected latency), whose `/metrics` request counter is polled
//! every [`POLL`] to see when the calls reached the provider. REPORTED, not asserted: the
//! achieved rate against N, and the most calls seen in windows of 1 s, 10 s and W (60 s when
//! the run lasts that long, else the longest whole second the run allows) against N·w/60 + B.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use chorus_shared::protocol::TaskOptions;
use serde::Serialize;
use serde_json::json;

use crate::llm::{Katan, KEY_VAR, MODEL};
use crate::{compare::Flags, reset, Cli, Submitter, System, SETTLE};

/// The kind of the kinds file [`write_kinds_file`] writes.
const KIND: &str = "llm-rate";
/// Worker processes sharing the limit (the three).
const WORKERS: usize = 3;
/// How often llm-katan's request counter is read.
const POLL: Duration = Duration::from_millis(50);
/// Calls of the warm-up task (each process connects, and seeds the limits in Redis).
const WARM_UP_CALLS: usize = 6;
/// Most calls in flight: enough that the limit, not the calls' own time, sets the pace, few
/// enough that a call's wait for its turn (in flight / rate) stays far below its time limit.
const MAX_IN_FLIGHT: u64 = 30;
/// Shortest windows reported besides the longest one, s.
const SHORT_WINDOWS_S: [u64; 2] = [1, 10];
const SECONDS_PER_MINUTE: f64 = 60.0;
/// Longest wait for the calls to reach llm-katan after the task is submitted.
const RUN_TIMEOUT: Duration = Duration::from_secs(1800);
/// The tolerance of the achieved rate around N, per cent.
const TOLERANCE_PERCENT: f64 = 5.0;

/// Most calls seen in any window of `seconds` against the limit's allowance.
#[derive(Debug, Serialize)]
pub struct Window {
    seconds: u64,
    /// Most calls counted between two polls at most `seconds` apart.
    most_calls: u64,
    /// N·seconds/60 + B: the most a token bucket lets start in such a window.
    allowed: f64,
    within: bool,
}

/// The whole measurement, as printed and written to the JSON table.
#[derive(Debug, Serialize)]
pub struct RateTable {
    requests_per_minute: u32,
    burst: u32,
    calls: u64,
    workers: usize,
    max_in_flight: u64,
    poll_ms: u64,
    /// From the first call to the last as llm-katan counted them (each at the midpoint of the
    /// two polls around it), s.
    run_s: f64,
    /// (calls − burst) / `run_s`, per minute: the bucket starts full, so the first `burst`
    /// calls start at once and the rest at the refill rate.
    achieved_rpm: f64,
    /// `achieved_rpm` / N.
    ratio: f64,
    within_5_percent: bool,
    /// 1 s, 10 s and the longest window (the last).
    windows: Vec<Window>,
}

/// Runs the measurement; `None` when `--llm-rate-calls` is 0.
///
/// # Errors
/// llm-katan or a service that cannot start, a broker or Redis error, a task that does not
/// succeed with every call counted, or calls that do not all reach llm-katan in time.
pub async fn measure(cli: &Cli) -> Result<Option<RateTable>> {
    let (rpm, burst, calls) = (cli.llm_rate_rpm, cli.llm_rate_burst, cli.llm_rate_calls);
    if calls == 0 {
        return Ok(None);
    }
    std::env::set_var(KEY_VAR, "bench");
    let in_flight = (u64::from(rpm) / 6).clamp(3, MAX_IN_FLIGHT);
    let katan = Katan::start(&cli.llm_katan, 0, usize::try_from(in_flight)?).await?;
    let kinds_file = write_kinds_file(&katan.base_url(), rpm, burst)?;
    // A previous run's limits in Redis would win over the file's (HSETNX): start empty.
    reset(cli).await?;
    let system = System::start_with(cli, WORKERS, None, Some(&kinds_file), Flags::Tuned)?;
    let mut submitter = Submitter::connect(cli).await?;
    tokio::time::sleep(SETTLE).await;
    run_task(&mut submitter, WARM_UP_CALLS, in_flight).await?;
    // Until the bucket is full again, so the run starts as after any quiet spell.
    let refill = f64::from(burst) * SECONDS_PER_MINUTE / f64::from(rpm);
    tokio::time::sleep(Duration::from_secs_f64(refill) + Duration::from_secs(1)).await;
    let http = reqwest::Client::new();
    let metrics = format!("http://127.0.0.1:{}/metrics", katan.port);
    let before = requests(&http, &metrics).await?;
    eprintln!(
        "llm rate: {calls} calls under {rpm} rpm (burst {burst}) across {WORKERS} workers, {in_flight} in flight"
    );
    let calls = u64::try_from(calls)?;
    let (samples, _) = futures::try_join!(
        poll(&http, &metrics, before, calls),
        run_task(&mut submitter, usize::try_from(calls)?, in_flight)
    )?;
    drop(system);
    drop(std::fs::remove_file(&kinds_file));
    Ok(Some(summarize(&samples, rpm, burst, calls, in_flight)))
}

/// llm-katan's count of chat completions so far.
async fn requests(http: &reqwest::Client, url: &str) -> Result<u64> {
    let text = http
        .get(url)
        .send()
        .await?
        .error_for_status()?
        .text()
        .await?;
    text.lines()
        .find_map(|line| line.strip_prefix("llm_katan_requests_total{"))
        .and_then(|rest| rest.split_whitespace().last())
        .and_then(|value| value.parse::<f64>().ok())
        // The counter is a whole number printed as a Prometheus float.
        .map(|value| value as u64)
        .context("no llm_katan_requests_total in llm-katan's /metrics")
}

/// (seconds since the first poll, calls since `before`) every [`POLL`] until `calls` have
/// reached llm-katan.
async fn poll(
    http: &reqwest::Client,
    url: &str,
    before: u64,
    calls: u64,
) -> Result<Vec<(f64, u64)>> {
    let started = Instant::now();
    let mut ticks = tokio::time::interval(POLL);
    let mut samples = Vec::new();
    loop {
        ticks.tick().await;
        let seen = requests(http, url).await?.saturating_sub(before);
        samples.push((started.elapsed().as_secs_f64(), seen));
        if seen >= calls {
            return Ok(samples);
        }
        if started.elapsed() > RUN_TIMEOUT {
            bail!("only {seen} of {calls} calls reached llm-katan in {RUN_TIMEOUT:?}");
        }
    }
}

/// The figures of one run from its samples (in time order, counts not decreasing).
fn summarize(
    samples: &[(f64, u64)],
    rpm: u32,
    burst: u32,
    calls: u64,
    in_flight: u64,
) -> RateTable {
    // The moment a count was first reached: between the poll before and the poll that saw it.
    let reached = |count: u64| {
        let at = samples
            .iter()
            .position(|&(_, seen)| seen >= count)
            .unwrap_or(0);
        let after = samples.get(at).map_or(0.0, |&(t, _)| t);
        let before = at
            .checked_sub(1)
            .and_then(|i| samples.get(i))
            .map_or(after, |&(t, _)| t);
        (before + after) / 2.0
    };
    let run_s = reached(calls) - reached(1);
    let after_burst = calls.saturating_sub(u64::from(burst)) as f64;
    let achieved_rpm = if run_s > 0.0 {
        after_burst / run_s * SECONDS_PER_MINUTE
    } else {
        0.0
    };
    let ratio = achieved_rpm / f64::from(rpm);
    let longest = if run_s >= SECONDS_PER_MINUTE {
        60
    } else {
        // Whole seconds the run allows (at least one).
        (run_s.floor() as u64).max(1)
    };
    let mut spans: Vec<u64> = SHORT_WINDOWS_S
        .iter()
        .copied()
        .filter(|&w| w < longest)
        .collect();
    spans.push(longest);
    let windows = spans
        .into_iter()
        .map(|seconds| {
            let most_calls = most_in_window(samples, seconds as f64);
            let allowed = f64::from(rpm) * seconds as f64 / SECONDS_PER_MINUTE + f64::from(burst);
            Window {
                seconds,
                most_calls,
                allowed,
                within: most_calls as f64 <= allowed,
            }
        })
        .collect();
    RateTable {
        requests_per_minute: rpm,
        burst,
        calls,
        workers: WORKERS,
        max_in_flight: in_flight,
        poll_ms: u64::try_from(POLL.as_millis()).unwrap_or(u64::MAX),
        run_s,
        achieved_rpm,
        ratio,
        within_5_percent: (ratio - 1.0).abs() * 100.0 <= TOLERANCE_PERCENT,
        windows,
    }
}

/// Most calls counted between two samples at most `window` s apart: calls that all started
/// within `window` (a window straddling a poll may hold up to a poll's worth more, which the
/// 50 ms polls make at most one call at the rates measured).
fn most_in_window(samples: &[(f64, u64)], window: f64) -> u64 {
    let mut most = 0;
    let mut first = 0;
    for &(t, seen) in samples {
        while samples
            .get(first)
            .is_some_and(|&(start, _)| t - start > window)
        {
            first += 1;
        }
        if let Some(&(_, base)) = samples.get(first) {
            most = most.max(seen.saturating_sub(base));
        }
    }
    most
}

/// Runs one task of `n` subtasks, at most `in_flight` at once, having checked that every
/// subtask succeeded with its call counted.
async fn run_task(submitter: &mut Submitter, n: usize, in_flight: u64) -> Result<()> {
    let options = TaskOptions {
        max_concurrency: Some(u32::try_from(in_flight)?),
        ..TaskOptions::default()
    };
    let items: Vec<usize> = (0..n).collect();
    let (_, outcome) = submitter
        .run_task(KIND, &json!({ "items": items }), Some(options))
        .await?;
    super::llm::check_outcome(&outcome, KIND, "rated", n)
}

/// Writes the kinds file (kind `llm-rate`: a subtask per item, an `llm` handler on model
/// `rated` with the limit and no cache, so every subtask is a call) to a temporary file; its
/// path.
fn write_kinds_file(base_url: &str, rpm: u32, burst: u32) -> Result<PathBuf> {
    let text = format!(
        "[providers.katan]\nbase_url = {base_url:?}\napi_key_env = {KEY_VAR:?}\n\
         [models.rated]\nprovider = \"katan\"\nmodel = {MODEL:?}\nmax_tokens = 16\ncache = false\n\
         requests_per_minute = {rpm}\nburst = {burst}\n\
         [kinds.{KIND}.handlers.default]\ntype = \"llm\"\nmodel = \"rated\"\nprompt = \"Say {{{{ subtask.input }}}}\"\n"
    );
    let path =
        std::env::temp_dir().join(format!("chorus-bench-llm-rate-{}.toml", std::process::id()));
    std::fs::write(&path, text).with_context(|| format!("cannot write {}", path.display()))?;
    Ok(path)
}

/// Prints the table.
pub fn print(table: &RateTable) {
    println!();
    println!(
        "llm rate under a shared limit: {} rpm, burst {}, {} workers, {} calls ({} in flight at most), llm-katan polled every {} ms:",
        table.requests_per_minute, table.burst, table.workers, table.calls, table.max_in_flight, table.poll_ms
    );
    println!(
        "  achieved {:.1} rpm over {:.1} s (calls after the burst / time): {:.4} of N ({})",
        table.achieved_rpm,
        table.run_s,
        table.ratio,
        if table.within_5_percent {
            "within 5 %"
        } else {
            "NOT within 5 %"
        }
    );
    for window in &table.windows {
        println!(
            "  most calls in {:>3} s: {:>5} (N*w/60 + B = {:.1}: {})",
            window.seconds,
            window.most_calls,
            window.allowed,
            if window.within { "within" } else { "ABOVE" }
        );
    }
}

#[cfg(test)]
#[path = "llm_rate/tests.rs"]
mod tests;
