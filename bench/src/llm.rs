//! The "LLM calls" measurement: Chorus's own time per call of an `llm` step (outside the HTTP
//! exchange) against llm-katan, an OpenAI-compatible test server (echo backend) with injected
//! latency. Its latency is the same for every call, so a plain HTTP client calling it directly,
//! side by side in the same run and at the same concurrency, gives the exchange time; Chorus's
//! time is the `llm` step's time less that. Measured twice:
//!
//! - in process: the `llm` handler step (`Step::call`, built as a kinds file builds it) and the
//!   plain client, call for call in µs, rounds in turns;
//! - through the services: one task of `--llm-calls` subtasks on that handler, each subtask's
//!   time from the worker's `subtask.running` event (handler start) to its `subtask.succeeded`
//!   event (result published), at the events' ms resolution, less the plain client's exchange.

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use chorus_shared::protocol::{Outcome, Status, TaskOptions};
use chorus_shared::steps::llm::{Catalog, StoreSlot};
use chorus_shared::steps::{CallLimits, LlmSpec, ModelSpec, ProviderSpec, Step};
use futures::{StreamExt, TryStreamExt};
use lapin::options::{BasicConsumeOptions, QueueBindOptions, QueueDeclareOptions};
use lapin::types::{FieldTable, ShortString};
use serde::Serialize;
use serde_json::{json, Value};
use tokio_util::sync::CancellationToken;

use crate::raw::{close_all, connect};
use crate::{
    broker, compare::Flags, reset, Cli, Stat, Submitter, System, MICROS_PER_SECOND, SETTLE,
};

/// The served model name and the kind of the kinds file [`write_kinds_file`] writes.
pub(crate) const MODEL: &str = "gpt-test";
const KIND: &str = "llm-echo";
/// Calls before any clock runs (connections, Python's first requests).
const WARM_UP_CALLS: usize = 20;
/// Longest wait for llm-katan to listen.
const START_TIMEOUT: Duration = Duration::from_secs(60);
/// llm-katan needs an `Authorization` header; any key does.
pub(crate) const KEY_VAR: &str = "CHORUS_BENCH_LLM_KEY";
const MICROS_PER_MILLI: f64 = 1000.0;

/// Median and 99th percentile, µs.
#[derive(Debug, Clone, Copy, Serialize)]
pub struct Spread {
    median_us: f64,
    p99_us: f64,
}

impl Spread {
    fn of(samples: &[f64]) -> Self {
        let mut sorted = samples.to_vec();
        sorted.sort_by(f64::total_cmp);
        Self {
            median_us: crate::percentile(&sorted, 50.0),
            p99_us: crate::percentile(&sorted, 99.0),
        }
    }
}

/// Chorus's own time per call, µs.
#[derive(Debug, Clone, Copy, Serialize)]
pub struct Own {
    /// The median call less the plain exchange's median.
    median_us: f64,
    /// The 99th percentile call less the injected latency: an upper bound, which also holds
    /// llm-katan's own time and jitter (a percentile less a percentile of unpaired calls
    /// would not bound anything).
    p99_at_most_us: f64,
}

impl Own {
    fn of(calls: Spread, plain: Spread, latency_ms: u64) -> Self {
        Self {
            median_us: calls.median_us - plain.median_us,
            p99_at_most_us: calls.p99_us - latency_ms as f64 * MICROS_PER_MILLI,
        }
    }
}

/// The whole measurement, as printed and written to the JSON table.
#[derive(Debug, Serialize)]
pub struct LlmTable {
    latency_ms: u64,
    concurrency: usize,
    calls_per_round: usize,
    rounds: usize,
    /// The plain client's exchange time per call.
    raw_exchange: Spread,
    /// The `llm` step's time per call, in process.
    step_call: Spread,
    /// Chorus's own time in `step_call`.
    chorus_in_step: Own,
    /// Per subtask through the services, handler start to result published (ms resolution).
    service_subtask: Spread,
    /// Chorus's own time in `service_subtask`.
    chorus_in_service: Own,
    /// Wall time of the task through the services, ms (median over the rounds).
    task_ms: Stat,
    /// The rate under a shared limit across three worker processes (bench/src/llm_rate.rs);
    /// none when `--llm-rate-calls` is 0.
    rate_under_limit: Option<crate::llm_rate::RateTable>,
}

/// llm-katan as a child process, killed on drop.
pub(crate) struct Katan {
    child: Child,
    pub(crate) port: u16,
}

impl Drop for Katan {
    fn drop(&mut self) {
        drop(self.child.kill());
        drop(self.child.wait());
    }
}

impl Katan {
    pub(crate) async fn start(program: &Path, latency_ms: u64, concurrency: usize) -> Result<Self> {
        let port = std::net::TcpListener::bind("127.0.0.1:0")?
            .local_addr()?
            .port();
        let stats = std::env::temp_dir().join(format!("chorus-bench-katan-{port}.json"));
        // Room for twice the calls in flight: llm-katan serves one at a time by default.
        let room = (2 * concurrency).to_string();
        let child = Command::new(program)
            .args(["--model", "echo", "--backend", "echo", "--name", MODEL])
            .args(["--host", "127.0.0.1", "--port", &port.to_string()])
            .args(["--latency-ms", &latency_ms.to_string()])
            .args(["--max-concurrent", &room, "--log-level", "warning"])
            .arg("--stats-file")
            .arg(&stats)
            .arg("--disable-dashboard")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .with_context(|| format!("cannot start {}", program.display()))?;
        let katan = Self { child, port };
        let deadline = Instant::now() + START_TIMEOUT;
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            if Instant::now() > deadline {
                bail!("llm-katan did not listen within {START_TIMEOUT:?}");
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        Ok(katan)
    }

    pub(crate) fn base_url(&self) -> String {
        format!("http://127.0.0.1:{}/v1", self.port)
    }
}

/// Runs the measurement.
///
/// # Errors
/// llm-katan or a service that cannot start, a broker or Redis error, a failed call, or an
/// outcome that is not the expected one.
pub async fn measure(cli: &Cli) -> Result<LlmTable> {
    std::env::set_var(KEY_VAR, "bench");
    let (n, concurrency) = (cli.llm_calls, cli.llm_concurrency);
    let katan = Katan::start(&cli.llm_katan, cli.llm_latency_ms, concurrency).await?;
    let step = handler_step(&katan.base_url())?;
    let http = reqwest::Client::new();
    let url = format!("{}/chat/completions", katan.base_url());
    let calls = Calls {
        http: &http,
        url: &url,
        step: &step,
    };
    calls.round(WARM_UP_CALLS, concurrency).await?;
    let (mut raw, mut stepped) = (Vec::new(), Vec::new());
    let rounds = cli.repeat.max(1);
    for round in 1..=rounds {
        eprintln!("llm calls, round {round}: {n} plain and {n} through the llm step in turns, {concurrency} at once");
        let (plain, through_step) = calls.round(n, concurrency).await?;
        raw.extend(plain);
        stepped.extend(through_step);
    }
    let (service, task_ms) = through_services(cli, &katan, &calls, &mut raw).await?;
    let rate_under_limit = crate::llm_rate::measure(cli).await?;
    let raw_exchange = Spread::of(&raw);
    let (step_call, service_subtask) = (Spread::of(&stepped), Spread::of(&service));
    Ok(LlmTable {
        latency_ms: cli.llm_latency_ms,
        concurrency,
        calls_per_round: n,
        rounds,
        raw_exchange,
        step_call,
        chorus_in_step: Own::of(step_call, raw_exchange, cli.llm_latency_ms),
        service_subtask,
        chorus_in_service: Own::of(service_subtask, raw_exchange, cli.llm_latency_ms),
        task_ms: Stat::of(&task_ms),
        rate_under_limit,
    })
}

/// The `llm` handler step of the kinds file, built as the worker builds it.
fn handler_step(base_url: &str) -> Result<Step> {
    let provider: ProviderSpec =
        serde_json::from_value(json!({"base_url": base_url, "api_key_env": KEY_VAR}))?;
    let model: ModelSpec = serde_json::from_value(
        json!({"provider": "katan", "model": MODEL, "temperature": 0, "max_tokens": 64}),
    )?;
    let spec: LlmSpec =
        serde_json::from_value(json!({"model": "echo", "prompt": "Say {{ subtask.input }}"}))?;
    let providers = BTreeMap::from([("katan".to_owned(), provider)]);
    let models = BTreeMap::from([("echo".to_owned(), model)]);
    let catalog = Catalog::build(&providers, &models, Path::new("."), &StoreSlot::default())
        .map_err(|(key, message)| anyhow::anyhow!("{key}: {message}"))?;
    Ok(Step::build_llm(&spec, &catalog, &["default".to_owned()])?)
}

/// What the in-process measurement calls: llm-katan plainly, and through the `llm` step.
struct Calls<'a> {
    http: &'a reqwest::Client,
    url: &'a str,
    step: &'a Step,
}

impl Calls<'_> {
    /// `n` plain calls and `n` step calls taken in turns, `concurrency` at once, so both see
    /// the same moments of llm-katan and of the machine; µs per call of each.
    async fn round(&self, n: usize, concurrency: usize) -> Result<(Vec<f64>, Vec<f64>)> {
        let timed: Vec<(bool, f64)> = futures::stream::iter(0..2 * n)
            .map(|i| async move {
                let through_step = i % 2 == 1;
                let started = Instant::now();
                if through_step {
                    self.step_call(i / 2).await?;
                } else {
                    self.plain_call(i / 2).await?;
                }
                Ok::<_, anyhow::Error>((
                    through_step,
                    started.elapsed().as_secs_f64() * MICROS_PER_SECOND,
                ))
            })
            .buffer_unordered(concurrency)
            .try_collect()
            .await?;
        let (stepped, plain): (Vec<_>, Vec<_>) = timed.into_iter().partition(|(s, _)| *s);
        let us = |calls: Vec<(bool, f64)>| calls.into_iter().map(|(_, us)| us).collect();
        Ok((us(plain), us(stepped)))
    }

    /// One Chat Completions call with the body the step sends for item `i`.
    async fn plain_call(&self, i: usize) -> Result<()> {
        let body = json!({"model": MODEL, "messages": [{"role": "user", "content": format!("Say {i}")}],
                          "temperature": 0.0, "max_tokens": 64});
        let response = self
            .http
            .post(self.url)
            .bearer_auth("bench")
            .header(reqwest::header::CONTENT_TYPE, "application/json")
            .body(body.to_string())
            .send()
            .await?;
        let status = response.status();
        let answer: Value = serde_json::from_slice(&response.bytes().await?)?;
        if !status.is_success() || answer["usage"]["completion_tokens"].as_u64().is_none() {
            bail!("llm-katan answered {status}: {answer}");
        }
        Ok(())
    }

    /// One call of the `llm` handler step for item `i`, as the worker makes it.
    async fn step_call(&self, i: usize) -> Result<()> {
        let limits = CallLimits {
            timeout: Duration::from_secs(60),
            max_answer_bytes: 1 << 20,
        };
        let request = json!({"step": "handle", "subtask": {"id": i.to_string(), "input": i}});
        self.step
            .call(
                request.to_string().as_bytes(),
                limits,
                &CancellationToken::new(),
            )
            .await
            .map_err(|e| anyhow::anyhow!("llm step: {e:?}"))?;
        Ok(())
    }
}

/// Rounds of one task of `--llm-calls` subtasks on the services (one worker, the task capped
/// at `--llm-concurrency` in flight), each followed by a plain round added to `raw`; µs per
/// subtask from its `running` to its `succeeded` event, and each task's wall time in ms.
async fn through_services(
    cli: &Cli,
    katan: &Katan,
    calls: &Calls<'_>,
    raw: &mut Vec<f64>,
) -> Result<(Vec<f64>, Vec<f64>)> {
    let kinds_file = write_kinds_file(&katan.base_url())?;
    reset(cli).await?;
    let system = System::start_with(cli, 1, None, Some(&kinds_file), Flags::Tuned)?;
    let mut submitter = Submitter::connect(cli).await?;
    let connection = connect(&broker(cli)?).await?;
    let channel = connection.create_channel().await?;
    let exclusive = QueueDeclareOptions {
        exclusive: true,
        auto_delete: true,
        ..Default::default()
    };
    let queue = channel
        .queue_declare(ShortString::from(""), exclusive, FieldTable::default())
        .await?;
    let queue = queue.name().as_str().to_owned();
    channel
        .queue_bind(
            ShortString::from(queue.as_str()),
            ShortString::from("chorus.events"),
            ShortString::from("subtask.#"),
            QueueBindOptions::default(),
            FieldTable::default(),
        )
        .await?;
    let no_ack = BasicConsumeOptions {
        no_ack: true,
        ..Default::default()
    };
    let mut events = channel
        .basic_consume(
            ShortString::from(queue.as_str()),
            ShortString::from(""),
            no_ack,
            FieldTable::default(),
        )
        .await?;
    tokio::time::sleep(SETTLE).await;
    run_task(&mut submitter, WARM_UP_CALLS, cli.llm_concurrency).await?;
    let (mut per_subtask, mut task_ms) = (Vec::new(), Vec::new());
    for round in 1..=cli.repeat.max(1) {
        eprintln!(
            "llm calls through the services, round {round}: a task of {}",
            cli.llm_calls
        );
        let (id, elapsed) = run_task(&mut submitter, cli.llm_calls, cli.llm_concurrency).await?;
        task_ms.push(elapsed.as_secs_f64() * crate::MILLIS_PER_SECOND);
        per_subtask.extend(subtask_times(&mut events, &id, cli.llm_calls).await?);
        // A plain round after each task, at the same concurrency, for the exchange time.
        let (plain, _) = calls.round(cli.llm_calls, cli.llm_concurrency).await?;
        raw.extend(plain);
    }
    drop(system);
    close_all(&[&connection]).await;
    drop(std::fs::remove_file(&kinds_file));
    Ok((per_subtask, task_ms))
}

/// Runs one task of `n` subtasks with events, at most `concurrency` in flight; its id and
/// wall time, having checked that every subtask succeeded with its usage counted.
/// Checks that a task of kind `kind` of `n` `llm` subtasks on `model` succeeded with one call
/// counted each.
///
/// # Errors
/// The outcome says otherwise.
pub(crate) fn check_outcome(outcome: &Outcome, kind: &str, model: &str, n: usize) -> Result<()> {
    let calls = outcome
        .stats
        .tokens
        .get(model)
        .map_or(0, |tokens| tokens.calls);
    if outcome.status != Status::Succeeded
        || outcome.stats.succeeded != n as u64
        || calls != n as u64
    {
        bail!(
            "wrong outcome of {kind}: {:?}, stats {:?}, errors {:?}",
            outcome.status,
            outcome.stats,
            outcome.errors
        );
    }
    Ok(())
}

async fn run_task(
    submitter: &mut Submitter,
    n: usize,
    concurrency: usize,
) -> Result<(String, Duration)> {
    let options = TaskOptions {
        subtask_events: Some(true),
        max_concurrency: Some(u32::try_from(concurrency)?),
        ..TaskOptions::default()
    };
    let items: Vec<usize> = (0..n).collect();
    let (elapsed, outcome) = submitter
        .run_task(KIND, &json!({ "items": items }), Some(options))
        .await?;
    check_outcome(&outcome, KIND, "echo", n)?;
    Ok((outcome.id, elapsed))
}

/// µs from each subtask's `running` to its `succeeded` event, for the `n` subtasks of `task`.
async fn subtask_times(events: &mut lapin::Consumer, task: &str, n: usize) -> Result<Vec<f64>> {
    let (mut running, mut times) = (HashMap::new(), Vec::new());
    while times.len() < n {
        let delivery = tokio::time::timeout(crate::OUTCOME_TIMEOUT, events.next())
            .await
            .context("no subtask event in time")?
            .context("event consumer ended")??;
        let event: chorus_shared::protocol::SubtaskEvent = rmp_serde::from_slice(&delivery.data)?;
        if event.task != task {
            continue;
        }
        match event.status.as_str() {
            "running" => {
                running.insert(event.subtask, event.at_ms);
            }
            "succeeded" => {
                if let Some(start) = running.remove(&event.subtask) {
                    let ms = event.at_ms.saturating_sub(start) as f64;
                    times.push(ms * MICROS_PER_MILLI);
                }
            }
            _ => {}
        }
    }
    Ok(times)
}

/// Writes the measurement's kinds file (kind `llm-echo`: a subtask per item, the `llm` handler
/// of [`handler_step`]) to a temporary file; returns its path. The call cache is off: the rounds
/// repeat the same items, and a call answered from the cache would measure no exchange at all.
fn write_kinds_file(base_url: &str) -> Result<PathBuf> {
    let text = format!(
        "[providers.katan]\nbase_url = {base_url:?}\napi_key_env = {KEY_VAR:?}\n\
         [models.echo]\nprovider = \"katan\"\nmodel = {MODEL:?}\ntemperature = 0\nmax_tokens = 64\ncache = false\n\
         [kinds.{KIND}.handlers.default]\ntype = \"llm\"\nmodel = \"echo\"\nprompt = \"Say {{{{ subtask.input }}}}\"\n"
    );
    let path = std::env::temp_dir().join(format!("chorus-bench-llm-{}.toml", std::process::id()));
    std::fs::write(&path, text).with_context(|| format!("cannot write {}", path.display()))?;
    Ok(path)
}

/// Prints the table.
pub fn print(table: &LlmTable) {
    let ms = |us: f64| us / MICROS_PER_MILLI;
    println!();
    println!(
        "llm calls: llm-katan echo with {} ms injected latency, {} calls at once, {} calls x {} rounds:",
        table.latency_ms, table.concurrency, table.calls_per_round, table.rounds
    );
    println!("{:>36} {:>12} {:>12}", "", "median", "p99");
    let rows = [
        ("plain HTTP exchange", table.raw_exchange),
        ("llm step call, in process", table.step_call),
        (
            "subtask via services (ms resolution)",
            table.service_subtask,
        ),
    ];
    for (what, spread) in rows {
        println!(
            "{what:>36} {:>9.3} ms {:>9.3} ms",
            ms(spread.median_us),
            ms(spread.p99_us)
        );
    }
    println!("Chorus's own time per call (median: less the plain exchange; p99: at most, less the injected latency):");
    for (what, own) in [
        ("in the llm step", table.chorus_in_step),
        ("per subtask via the services", table.chorus_in_service),
    ] {
        println!(
            "{what:>36} {:>9.3} ms {:>9.3} ms",
            ms(own.median_us),
            ms(own.p99_at_most_us)
        );
    }
    println!(
        "task of {} through the services: {} ms",
        table.calls_per_round, table.task_ms
    );
    if let Some(rate) = &table.rate_under_limit {
        crate::llm_rate::print(rate);
    }
}
