//! `chorus-bench`: measures, in one run and on one broker, the raw two-hop broker path a subtask
//! must take at minimum (the baseline) and Chorus itself — throughput at several task sizes,
//! latency of small tasks, cost per subtask, memory and CPU of each service, and scale-out over
//! worker processes. Prints one table and writes it as JSON. `deploy/bench.sh` runs it against
//! a private RabbitMQ and Redis.

mod compare;
mod llm;
mod llm_rate;
mod raw;
mod steps;

use std::{
    collections::BTreeMap,
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use anyhow::{bail, Context, Result};
use chorus_shared::{
    client::{Client, ReplyQueue},
    config::ConnectArgs,
    kinds::range_sum::sum_of_range,
    protocol::{Outcome, Status, TaskOptions, TaskRequest},
    topology,
};
use clap::Parser;
use lapin::types::ShortString;
use serde::Serialize;
use serde_json::json;

use compare::Flags;
use raw::{baseline, close_all, connect, hop_floor, Broker, RAW_PREFETCH};

/// Time the services get to connect and declare their queues before a clock starts.
const SETTLE: Duration = Duration::from_millis(500);
/// Longest wait for one task's outcome.
const OUTCOME_TIMEOUT: Duration = Duration::from_secs(600);
/// Integers each range-sum subtask adds up.
const INTEGERS_PER_SUBTASK: u64 = 10;
/// Subtasks of each task of the latency measurement.
const LATENCY_TASK_SUBTASKS: u64 = 3;
/// Task size of the baseline and the scale-out when `--sizes` is empty.
const DEFAULT_MIDDLE_SIZE: u64 = 10_000;
/// Clock ticks per second of the CPU times in `/proc/<pid>/stat` (`USER_HZ` on Linux).
const CLOCK_TICKS_PER_SECOND: f64 = 100.0;
const MILLIS_PER_SECOND: f64 = 1000.0;
const MICROS_PER_SECOND: f64 = 1e6;
const SECONDS_PER_MINUTE: u64 = 60;

/// Flags of `chorus-bench`.
#[derive(Parser, Debug)]
#[command(
    name = "chorus-bench",
    version,
    about = "Benchmark Chorus against the raw broker path, side by side."
)]
struct Cli {
    /// RabbitMQ to measure on and Redis to use, as the services take them (URLs or their files,
    /// TLS files); use private ones: queues are purged and Redis is flushed between runs. The
    /// services started get the same settings, in their environment.
    #[command(flatten)]
    connect: ConnectArgs,
    /// Directory holding chorus-orchestrator, chorus-worker and chorus-synthesizer.
    #[arg(long, default_value = "target/release")]
    bin_dir: PathBuf,
    /// Task sizes (subtasks) for the throughput and growth measurements.
    #[arg(long, value_delimiter = ',', default_value = "1000,10000,100000")]
    sizes: Vec<u64>,
    /// Runs of each measurement; the table shows the median and the min–max.
    #[arg(long, default_value_t = 3)]
    repeat: usize,
    /// Sequential 3-subtask tasks for the latency measurement.
    #[arg(long, default_value_t = 500)]
    latency_tasks: usize,
    /// Worker process counts for the scale-out measurement (at the middle size).
    #[arg(long, value_delimiter = ',', default_value = "1,2,4")]
    workers: Vec<usize>,
    /// Concurrency (and prefetch) of the worker in the tuned configuration, which the "kinds
    /// without Rust" and "LLM calls" measurements use too; every other measurement runs the
    /// services with their default flags.
    #[arg(long, default_value_t = 100)]
    worker_concurrency: u16,
    /// Subtasks per message in the batched measurement (`options.batch_size`).
    #[arg(long, default_value_t = 100)]
    batch_size: u32,
    /// Task sizes of the batched measurement, comma-separated; `none` skips it.
    #[arg(long, default_value = "10000,100000", value_parser = parse_sizes)]
    batched_sizes: Sizes,
    /// Prefetch of each worker process in the batched measurement (a batch is one message).
    #[arg(long, default_value_t = 4)]
    batched_prefetch: u16,
    /// Measure only the latency of small tasks and its floor (a quick check, e.g. to compare
    /// two builds run after run).
    #[arg(long)]
    latency_only: bool,
    /// Measure only the latency (with the default flags) and the side-by-side runs of the
    /// baseline, the default flags and the tuned flags at the middle size (a few minutes).
    #[arg(long)]
    defaults_only: bool,
    /// Subtasks of each task of the built-in `range-sum` and of the pool-mode no-op Python
    /// handler in the "kinds without Rust" measurement; 0 skips that measurement.
    #[arg(long, default_value_t = 10_000)]
    steps_subtasks: u64,
    /// Subtasks of each task of the same handler run as a process per call.
    #[arg(long, default_value_t = 500)]
    steps_call_subtasks: u64,
    /// The no-op handler of that measurement.
    #[arg(long, default_value = "bench/steps/noop.py")]
    steps_handler: PathBuf,
    /// Python interpreter of the handler; default: the one `python3` on PATH runs, resolved once
    /// (so a launcher such as pyenv's shim, a shell script, is not measured with every call).
    #[arg(long)]
    steps_python: Option<PathBuf>,
    /// `pool_size` of the pool-mode handler.
    #[arg(long, default_value_t = 4)]
    steps_pool_size: u16,
    /// Run only the "kinds without Rust" measurement.
    #[arg(long)]
    steps_only: bool,
    /// Calls per round of the "LLM calls" measurement (llm-katan with injected latency, see
    /// bench/src/llm.rs): plain, through the `llm` step, and a task of as many subtasks; 0
    /// skips it.
    #[arg(long, default_value_t = 400)]
    llm_calls: usize,
    /// Calls in flight at once in that measurement (the task's `max_concurrency` too).
    #[arg(long, default_value_t = 16)]
    llm_concurrency: usize,
    /// Latency llm-katan adds to every call, ms (`--latency-ms`).
    #[arg(long, default_value_t = 200)]
    llm_latency_ms: u64,
    /// The llm-katan executable (deploy/bench.sh passes the one deploy/llm-katan.sh installs).
    #[arg(long, default_value = "llm-katan")]
    llm_katan: PathBuf,
    /// Requests per minute the model of the "rate under a shared limit" measurement declares
    /// (bench/src/llm_rate.rs: three worker processes share it).
    #[arg(long, default_value_t = 600, value_parser = clap::value_parser!(u32).range(1..))]
    llm_rate_rpm: u32,
    /// `burst` of that model: calls that may start at once after a quiet spell.
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u32).range(1..))]
    llm_rate_burst: u32,
    /// Calls (subtasks of one task) of that measurement; 0 skips it.
    #[arg(long, default_value_t = 300)]
    llm_rate_calls: usize,
    /// Run only the "rate under a shared limit" measurement.
    #[arg(long)]
    llm_rate_only: bool,
    /// Run only the "LLM calls" measurement.
    #[arg(long)]
    llm_only: bool,
    /// Where to write the JSON table.
    #[arg(long, default_value = "bench-results.json")]
    out: PathBuf,
}

/// Median and range of repeated measurements.
#[derive(Debug, Clone, Copy, Serialize)]
struct Stat {
    median: f64,
    min: f64,
    max: f64,
}

impl Stat {
    fn of(values: &[f64]) -> Self {
        let mut sorted = values.to_vec();
        sorted.sort_by(f64::total_cmp);
        let median = if sorted.is_empty() {
            0.0
        } else if sorted.len() % 2 == 1 {
            sorted[sorted.len() / 2]
        } else {
            (sorted[sorted.len() / 2 - 1] + sorted[sorted.len() / 2]) / 2.0
        };
        Self {
            median,
            min: *sorted.first().unwrap_or(&0.0),
            max: *sorted.last().unwrap_or(&0.0),
        }
    }
}

impl std::fmt::Display for Stat {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{:.0} ({:.0}–{:.0})", self.median, self.min, self.max)
    }
}

/// The Chorus services of one measurement, as child processes.
struct System {
    children: Vec<(String, Child)>,
}

impl System {
    /// The services with their default flags (`worker_prefetch`: the workers' `--prefetch`).
    fn start(cli: &Cli, workers: usize, worker_prefetch: Option<u16>) -> Result<Self> {
        Self::start_with(cli, workers, worker_prefetch, None, Flags::Defaults)
    }

    /// [`System::start`] with `flags`, every service given `kinds_file` (`--kinds-file`) when
    /// there is one.
    fn start_with(
        cli: &Cli,
        workers: usize,
        worker_prefetch: Option<u16>,
        kinds_file: Option<&Path>,
        flags: Flags,
    ) -> Result<Self> {
        let mut children = Vec::new();
        let spawn = |bin: &str, args: &[&str]| -> Result<(String, Child)> {
            let path = cli.bin_dir.join(bin);
            if !path.exists() {
                bail!(
                    "{} is missing: build the release binaries first",
                    path.display()
                );
            }
            let mut command = Command::new(&path);
            command.args(args);
            if let Some(file) = kinds_file {
                command.arg("--kinds-file").arg(file);
            }
            let child = command
                .env_remove("CHORUS_AMQP_URL")
                .env_remove("CHORUS_REDIS_URL")
                .envs(cli.connect.child_env())
                .env("RUST_LOG", "warn")
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .with_context(|| format!("cannot start {}", path.display()))?;
            Ok((bin.to_owned(), child))
        };
        let orchestrator = flags.args(cli, "chorus-orchestrator");
        children.push(spawn("chorus-orchestrator", &strs(&orchestrator))?);
        let mut worker_args = flags.args(cli, "chorus-worker");
        if let Some(prefetch) = worker_prefetch.or(flags.worker_prefetch(cli)) {
            worker_args.extend(["--prefetch".to_owned(), prefetch.to_string()]);
        }
        for _ in 0..workers {
            children.push(spawn("chorus-worker", &strs(&worker_args))?);
        }
        let synthesizer = flags.args(cli, "chorus-synthesizer");
        children.push(spawn("chorus-synthesizer", &strs(&synthesizer))?);
        Ok(Self { children })
    }

    /// Peak resident memory (KiB) and CPU seconds of each service, by binary name (the
    /// maximum over worker processes for memory, the sum for CPU).
    fn usage(&self) -> BTreeMap<String, (u64, f64)> {
        let mut usage: BTreeMap<String, (u64, f64)> = BTreeMap::new();
        for (bin, child) in &self.children {
            let pid = child.id();
            let peak = std::fs::read_to_string(format!("/proc/{pid}/status"))
                .ok()
                .and_then(|s| {
                    s.lines()
                        .find_map(|l| l.strip_prefix("VmHWM:"))
                        .and_then(|v| v.split_whitespace().next())
                        .and_then(|v| v.parse().ok())
                })
                .unwrap_or(0);
            let cpu = std::fs::read_to_string(format!("/proc/{pid}/stat"))
                .ok()
                .and_then(|s| {
                    let rest = s.rsplit_once(')')?.1.split_whitespace().collect::<Vec<_>>();
                    let user: f64 = rest.get(11)?.parse().ok()?;
                    let system: f64 = rest.get(12)?.parse().ok()?;
                    Some((user + system) / CLOCK_TICKS_PER_SECOND)
                })
                .unwrap_or(0.0);
            let entry = usage.entry(bin.clone()).or_insert((0, 0.0));
            entry.0 = entry.0.max(peak);
            entry.1 += cpu;
        }
        usage
    }
}

impl Drop for System {
    fn drop(&mut self) {
        for (_, child) in &mut self.children {
            drop(child.kill());
            drop(child.wait());
        }
    }
}

/// `args` borrowed, as a command line takes them.
fn strs(args: &[String]) -> Vec<&str> {
    args.iter().map(String::as_str).collect()
}

/// The broker under measurement: every node of `--amqp-url`, its TLS files read now.
fn broker(cli: &Cli) -> Result<Broker> {
    Ok(Broker {
        nodes: cli.connect.amqp_nodes().map_err(anyhow::Error::msg)?,
        connect_timeout: cli.connect.amqp_connect_timeout(),
    })
}

/// Empties Redis and every Chorus queue, so each measurement starts alike.
async fn reset(cli: &Cli) -> Result<()> {
    let client = cli
        .connect
        .redis()
        .map_err(anyhow::Error::msg)?
        .redis_client()?;
    let mut conn = client.get_multiplexed_async_connection().await?;
    redis::cmd("FLUSHDB").query_async::<()>(&mut conn).await?;
    let connection = connect(&broker(cli)?).await?;
    for queue in [
        topology::TASKS_QUEUE,
        topology::SUBTASKS_QUEUE,
        topology::RESULTS_QUEUE,
        topology::DEAD_QUEUE,
    ] {
        let channel = connection.create_channel().await?;
        drop(
            channel
                .queue_purge(ShortString::from(queue), Default::default())
                .await,
        );
    }
    close_all(&[&connection]).await;
    Ok(())
}

/// Submits `range-sum` tasks through the client library and waits for their outcomes.
struct Submitter {
    client: Client,
    replies: ReplyQueue,
}

impl Submitter {
    async fn connect(cli: &Cli) -> Result<Self> {
        let client = Client::connect(&cli.connect).await?;
        let replies = client.reply_queue().await?;
        Ok(Self { client, replies })
    }

    /// Runs one task of `parts` no-op subtasks, `batch_size` to a message; returns its wall
    /// time, having checked the sum.
    async fn run(&mut self, parts: u64, batch_size: Option<u32>) -> Result<Duration> {
        let end = i64::try_from(parts * INTEGERS_PER_SUBTASK)?;
        let input = json!({"start": 0, "end": end, "parts": parts});
        let options = batch_size.map(|batch_size| TaskOptions {
            batch_size: Some(batch_size),
            ..TaskOptions::default()
        });
        let (elapsed, outcome) = self.run_task("range-sum", &input, options).await?;
        let output = serde_json::to_value(&outcome.output)?;
        let expected = i64::try_from(sum_of_range(0, end))?;
        if outcome.status != Status::Succeeded || output["sum"] != expected {
            bail!("wrong outcome: {outcome:?}");
        }
        Ok(elapsed)
    }

    /// Submits one task of `kind` and waits for its outcome; returns the wall time from the
    /// publish of the request to the outcome, and the outcome (unchecked).
    async fn run_task(
        &mut self,
        kind: &str,
        input: &serde_json::Value,
        options: Option<TaskOptions>,
    ) -> Result<(Duration, Outcome)> {
        let request = TaskRequest {
            kind: kind.into(),
            input: rmpv::ext::to_value(input)?,
            id: Some(uuid::Uuid::new_v4().to_string()),
            options,
            parent: None,
        };
        let started = Instant::now();
        self.client
            .submit(&request, Some(&self.replies.name))
            .await?;
        let outcome = tokio::time::timeout(OUTCOME_TIMEOUT, self.replies.next_outcome())
            .await
            .with_context(|| {
                format!(
                    "no outcome within {} minutes",
                    OUTCOME_TIMEOUT.as_secs() / SECONDS_PER_MINUTE
                )
            })??;
        Ok((started.elapsed(), outcome))
    }
}

#[derive(Debug, Serialize)]
struct SizeRow {
    subtasks: u64,
    subtasks_per_s: Stat,
    ratio_to_baseline: f64,
    us_per_subtask: Stat,
    peak_rss_kib: BTreeMap<String, u64>,
    cpu_us_per_subtask: BTreeMap<String, f64>,
}

/// How the tasks of a measurement travel.
#[derive(Clone, Copy, Debug)]
enum Packing {
    /// One subtask per message.
    Single,
    /// `options.batch_size` subtasks per message, workers with the batched prefetch.
    Batched,
}

async fn measure_size(
    cli: &Cli,
    n: u64,
    workers: usize,
    packing: Packing,
) -> Result<(Vec<f64>, BTreeMap<String, u64>, BTreeMap<String, f64>)> {
    let (batch_size, prefetch) = match packing {
        Packing::Single => (None, None),
        Packing::Batched => (Some(cli.batch_size), Some(cli.batched_prefetch)),
    };
    let mut rates = Vec::new();
    let mut rss = BTreeMap::new();
    let mut cpu = BTreeMap::new();
    for _ in 0..cli.repeat {
        reset(cli).await?;
        let system = System::start(cli, workers, prefetch)?;
        rates.push(run_once(cli, n, batch_size).await?);
        for (bin, (peak, seconds)) in system.usage() {
            let entry = rss.entry(bin.clone()).or_insert(0);
            *entry = (*entry).max(peak);
            cpu.insert(bin, seconds * MICROS_PER_SECOND / n as f64);
        }
    }
    Ok((rates, rss, cpu))
}

/// One task of `n` subtasks (`batch_size` to a message) through the services just started,
/// once they had [`SETTLE`] to connect. Returns subtasks per second.
async fn run_once(cli: &Cli, n: u64, batch_size: Option<u32>) -> Result<f64> {
    let mut submitter = Submitter::connect(cli).await?;
    tokio::time::sleep(SETTLE).await;
    let elapsed = submitter.run(n, batch_size).await?;
    Ok(n as f64 / elapsed.as_secs_f64())
}

fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    let rank = ((p / 100.0) * (sorted.len() as f64 - 1.0)).round() as usize;
    sorted[rank.min(sorted.len() - 1)]
}

/// Task sizes given as one flag value.
#[derive(Clone, Debug)]
struct Sizes(Vec<u64>);

/// `none`, or comma-separated task sizes.
fn parse_sizes(raw: &str) -> Result<Sizes, String> {
    if raw.trim() == "none" {
        return Ok(Sizes(Vec::new()));
    }
    raw.split(',')
        .map(|size| {
            size.trim()
                .parse::<u64>()
                .map_err(|error| format!("{size:?} is not a task size: {error}"))
        })
        .collect::<Result<Vec<_>, _>>()
        .map(Sizes)
}

#[tokio::main]
async fn main() -> Result<()> {
    let cli = Cli::parse();
    if cli.latency_only {
        let (latency, floor, over) = measure_latency(&cli).await?;
        print_latency(&latency, &floor, &over);
        write_json(
            &cli.out,
            &json!({"latency": latency, "latency_floor": floor, "latency_over_floor": over}),
        )?;
        return Ok(());
    }
    if cli.llm_rate_only {
        let table = llm_rate::measure(&cli).await?;
        if let Some(table) = &table {
            llm_rate::print(table);
        }
        write_json(&cli.out, &json!({ "llm_rate_under_limit": table }))?;
        return Ok(());
    }
    if cli.llm_only {
        let table = llm::measure(&cli).await?;
        llm::print(&table);
        write_json(&cli.out, &json!({ "llm_calls": table }))?;
        return Ok(());
    }
    if cli.steps_only {
        let table = steps::measure(&cli).await?;
        steps::print(&table);
        write_json(&cli.out, &json!({ "kinds_without_rust": table }))?;
        return Ok(());
    }
    let middle = cli
        .sizes
        .get(cli.sizes.len() / 2)
        .copied()
        .unwrap_or(DEFAULT_MIDDLE_SIZE);
    if cli.defaults_only {
        let (latency, floor, over) = measure_latency(&cli).await?;
        let side_by_side = compare::measure(&cli, middle).await?;
        print_latency(&latency, &floor, &over);
        compare::print(&side_by_side);
        write_json(
            &cli.out,
            &json!({"latency": latency, "latency_floor": floor, "latency_over_floor": over,
                    "defaults_side_by_side": side_by_side}),
        )?;
        return Ok(());
    }
    let baseline_stat = measure_baseline(&cli, middle).await?;
    // Before the throughput runs: after a burst of 100,000 messages the broker compacts its
    // quorum logs for a while, which would be measured as latency of whatever runs next.
    let (latency, floor, over) = measure_latency(&cli).await?;
    let side_by_side = compare::measure(&cli, middle).await?;
    let rows = measure_throughput(&cli, Packing::Single, &cli.sizes, baseline_stat).await?;
    let batched_rows =
        measure_throughput(&cli, Packing::Batched, &cli.batched_sizes.0, baseline_stat).await?;
    let scale = measure_scale_out(&cli, middle).await?;
    let kinds_without_rust = if cli.steps_subtasks > 0 {
        Some(steps::measure(&cli).await?)
    } else {
        None
    };
    let llm_calls = if cli.llm_calls > 0 {
        Some(llm::measure(&cli).await?)
    } else {
        None
    };

    compare::print(&side_by_side);
    print_throughput(&cli, baseline_stat, &rows, &batched_rows);
    println!();
    print_latency(&latency, &floor, &over);
    print_scale_out(&scale);
    if let Some(table) = &kinds_without_rust {
        steps::print(table);
    }
    if let Some(table) = &llm_calls {
        llm::print(table);
    }
    let table = json!({
        "settings": {"repeat": cli.repeat, "service_flags": "defaults", "tuned_worker_concurrency": cli.worker_concurrency, "queue_type": "quorum", "persistent": true, "confirms": true,
                     "batch_size": cli.batch_size, "batched_prefetch": cli.batched_prefetch},
        "defaults_side_by_side": side_by_side,
        "baseline_msgs_per_s": baseline_stat,
        "throughput": rows,
        "batched": batched_rows,
        "latency": latency,
        "latency_floor": floor,
        "latency_over_floor": over,
        "scale_out": scale,
        "kinds_without_rust": kinds_without_rust,
        "llm_calls": llm_calls,
    });
    write_json(&cli.out, &table)?;
    println!("\nwritten to {}", cli.out.display());
    Ok(())
}

/// The raw two-hop path's rate, `repeat` times over `n` messages.
async fn measure_baseline(cli: &Cli, n: u64) -> Result<Stat> {
    eprintln!("baseline: raw two-hop path, {n} messages x {}", cli.repeat);
    let mut rates = Vec::new();
    for _ in 0..cli.repeat {
        rates.push(baseline(&broker(cli)?, n).await?);
    }
    Ok(Stat::of(&rates))
}

/// One row per task size of `sizes`: one task at a time through one worker process, the
/// subtasks travelling as `packing` says.
async fn measure_throughput(
    cli: &Cli,
    packing: Packing,
    sizes: &[u64],
    baseline: Stat,
) -> Result<Vec<SizeRow>> {
    let mut rows = Vec::new();
    for &n in sizes {
        eprintln!(
            "throughput ({packing:?}): one task of {n} subtasks x {}",
            cli.repeat
        );
        let (rates, rss, cpu) = measure_size(cli, n, 1, packing).await?;
        let stat = Stat::of(&rates);
        let us: Vec<f64> = rates.iter().map(|r| MICROS_PER_SECOND / r).collect();
        rows.push(SizeRow {
            subtasks: n,
            subtasks_per_s: stat,
            ratio_to_baseline: stat.median / baseline.median,
            us_per_subtask: Stat::of(&us),
            peak_rss_kib: rss,
            cpu_us_per_subtask: cpu,
        });
    }
    Ok(rows)
}

/// A task of `n` subtasks with each worker process count of `--workers`: one JSON row each.
async fn measure_scale_out(cli: &Cli, n: u64) -> Result<Vec<serde_json::Value>> {
    let mut scale = Vec::new();
    for &workers in &cli.workers {
        eprintln!(
            "scale-out: {n} subtasks with {workers} worker process(es) x {}",
            cli.repeat
        );
        let (rates, _, _) = measure_size(cli, n, workers, Packing::Single).await?;
        scale.push(json!({"workers": workers, "subtasks_per_s": Stat::of(&rates)}));
    }
    Ok(scale)
}

/// Prints the baseline and the throughput tables (the batched one when it was measured).
fn print_throughput(cli: &Cli, baseline: Stat, rows: &[SizeRow], batched_rows: &[SizeRow]) {
    println!();
    println!(
        "baseline (raw two-hop, quorum, persistent, confirms, prefetch {RAW_PREFETCH}): {baseline} msg/s"
    );
    println!();
    println!("one subtask per message:");
    print_size_header();
    rows.iter().for_each(print_size_row);
    if !batched_rows.is_empty() {
        println!();
        println!(
            "batched: {} subtasks per message (options.batch_size), worker prefetch {}:",
            cli.batch_size, cli.batched_prefetch
        );
        print_size_header();
        batched_rows.iter().for_each(print_size_row);
    }
}

fn print_size_header() {
    println!("{:>9} {:>24} {:>7} {:>18}   peak RSS KiB (orch/worker/synth)   CPU µs per subtask (orch/worker/synth)", "subtasks", "subtasks/s", "ratio", "µs/subtask");
}

fn print_size_row(row: &SizeRow) {
    let get = |m: &BTreeMap<String, u64>, k: &str| m.get(k).copied().unwrap_or(0);
    let getf = |m: &BTreeMap<String, f64>, k: &str| m.get(k).copied().unwrap_or(0.0);
    println!(
        "{:>9} {:>24} {:>7.2} {:>18}   {:>8}/{:>8}/{:>8}   {:>8.1}/{:>8.1}/{:>8.1}",
        row.subtasks,
        row.subtasks_per_s.to_string(),
        row.ratio_to_baseline,
        row.us_per_subtask.to_string(),
        get(&row.peak_rss_kib, "chorus-orchestrator"),
        get(&row.peak_rss_kib, "chorus-worker"),
        get(&row.peak_rss_kib, "chorus-synthesizer"),
        getf(&row.cpu_us_per_subtask, "chorus-orchestrator"),
        getf(&row.cpu_us_per_subtask, "chorus-worker"),
        getf(&row.cpu_us_per_subtask, "chorus-synthesizer"),
    );
}

fn print_scale_out(scale: &[serde_json::Value]) {
    for row in scale {
        println!(
            "scale-out: {} worker process(es): {} subtasks/s",
            row["workers"],
            row["subtasks_per_s"]["median"]
                .as_f64()
                .unwrap_or(0.0)
                .round()
        );
    }
}

/// Sequential small tasks through the system, then one message at a time through the raw hops,
/// `repeat` times in turn, so that each round's floor is measured in the same minute as its
/// latency. Returns the latency, the floor, and what Chorus adds to the floor (each
/// percentile's difference within a round): the host's load moves the first two together, and
/// the third much less.
async fn measure_latency(
    cli: &Cli,
) -> Result<(serde_json::Value, serde_json::Value, serde_json::Value)> {
    reset(cli).await?;
    let _system = System::start(cli, 1, None)?;
    let mut submitter = Submitter::connect(cli).await?;
    tokio::time::sleep(SETTLE).await;
    let mut latency_rounds = Vec::new();
    let mut floor_rounds = Vec::new();
    for _ in 0..cli.repeat.max(1) {
        eprintln!(
            "latency: {} sequential tasks of {LATENCY_TASK_SUBTASKS} subtasks",
            cli.latency_tasks
        );
        let mut samples = Vec::new();
        for _ in 0..cli.latency_tasks {
            let elapsed = submitter.run(LATENCY_TASK_SUBTASKS, None).await?;
            samples.push(elapsed.as_secs_f64() * MILLIS_PER_SECOND);
        }
        latency_rounds.push(percentiles(samples));
        eprintln!(
            "latency floor: {} messages through the four raw hops",
            cli.latency_tasks
        );
        floor_rounds.push(percentiles(
            hop_floor(&broker(cli)?, cli.latency_tasks).await?,
        ));
    }
    let over_rounds: Vec<[f64; 3]> = latency_rounds
        .iter()
        .zip(&floor_rounds)
        .map(|(task, floor)| [0, 1, 2].map(|i| task[i] - floor[i]))
        .collect();
    Ok((
        latency_table("tasks", cli.latency_tasks, &latency_rounds),
        latency_table("messages", cli.latency_tasks, &floor_rounds),
        latency_table("tasks", cli.latency_tasks, &over_rounds),
    ))
}

/// p50, p90 and p99 of one round's samples, in ms.
fn percentiles(mut samples: Vec<f64>) -> [f64; 3] {
    samples.sort_by(f64::total_cmp);
    [50.0, 90.0, 99.0].map(|p| percentile(&samples, p))
}

/// Each percentile's median over the rounds, with its min–max.
fn latency_table(unit: &str, per_round: usize, rounds: &[[f64; 3]]) -> serde_json::Value {
    let over_rounds = |i: usize| Stat::of(&rounds.iter().map(|round| round[i]).collect::<Vec<_>>());
    json!({
        unit: per_round,
        "rounds": rounds.len(),
        "p50_ms": over_rounds(0),
        "p90_ms": over_rounds(1),
        "p99_ms": over_rounds(2),
    })
}

fn print_latency(latency: &serde_json::Value, floor: &serde_json::Value, over: &serde_json::Value) {
    let ms = |table: &serde_json::Value, key: &str| {
        let value = |bound: &str| table[key][bound].as_f64().unwrap_or(0.0);
        format!(
            "{:.1} ({:.1}–{:.1}) ms",
            value("median"),
            value("min"),
            value("max")
        )
    };
    let line = |table: &serde_json::Value| {
        format!(
            "p50 {}, p90 {}, p99 {}",
            ms(table, "p50_ms"),
            ms(table, "p90_ms"),
            ms(table, "p99_ms")
        )
    };
    println!(
        "latency, {LATENCY_TASK_SUBTASKS}-subtask tasks: {}",
        line(latency)
    );
    println!(
        "latency floor, one message through the four raw hops (3 quorum + 1 classic, each confirmed): {}",
        line(floor)
    );
    println!(
        "latency over the floor, what Chorus adds (each round's task figure less its floor): {}",
        line(over)
    );
}

fn write_json(path: &Path, value: &serde_json::Value) -> Result<()> {
    std::fs::write(path, serde_json::to_string_pretty(value)?)
        .with_context(|| format!("cannot write {}", path.display()))
}
