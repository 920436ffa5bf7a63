//! The "Kinds without Rust" measurement: in one run, on one set of services given a kinds file
//! the bench writes (kinds `noop-pool` and `noop-call`, both `bench/steps/noop.py`), tasks of the built-in `range-sum`, of a no-op Python handler in pool mode and of
//! the same handler as a process per call, taken in turns so that all three see the same minutes
//! of the machine. Reports subtasks per second of each, the pool's ratio to the built-in kind
//! (the target: at least 0.5 on one worker) and what a process per call costs.

use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use serde::Serialize;
use serde_json::json;

use crate::{
    compare::Flags, reset, Cli, Stat, Status, Submitter, System, MICROS_PER_SECOND, SETTLE,
};

/// The kinds of the kinds file [`write_kinds_file`] writes.
const POOL_KIND: &str = "noop-pool";
const CALL_KIND: &str = "noop-call";
/// Subtasks of the warm-up task of each kind, which starts the pool's processes and brings
/// Python's files into the page cache before any clock runs.
const WARM_UP_SUBTASKS: u64 = 20;

/// What one kind did over the rounds.
#[derive(Debug, Serialize)]
pub struct KindRow {
    kind: &'static str,
    subtasks: u64,
    subtasks_per_s: Stat,
    us_per_subtask: Stat,
    /// CPU of the worker process itself, µs per subtask (median over the rounds).
    worker_cpu_us_per_subtask: f64,
    /// CPU of the step processes the worker started (pool members and reaped per-call
    /// processes), µs per subtask (median over the rounds).
    step_cpu_us_per_subtask: f64,
}

/// The whole measurement, as printed and written to the JSON table.
#[derive(Debug, Serialize)]
pub struct StepsTable {
    /// The handler's Python version (not its path, which says where this machine keeps it).
    python_version: String,
    pool_size: u16,
    worker_concurrency: u16,
    rounds: usize,
    builtin: KindRow,
    pool: KindRow,
    call: KindRow,
    /// Each round's pool rate over the same round's built-in rate.
    pool_to_builtin: Stat,
    /// Wall time per subtask of the process-per-call kind less the pool's, µs.
    call_overhead_us_per_subtask: f64,
}

/// Rates and CPU figures of one kind, one entry per round.
#[derive(Default)]
struct Samples {
    rates: Vec<f64>,
    worker_cpu: Vec<f64>,
    step_cpu: Vec<f64>,
}

impl Samples {
    fn row(&self, kind: &'static str, subtasks: u64) -> KindRow {
        let us: Vec<f64> = self.rates.iter().map(|r| MICROS_PER_SECOND / r).collect();
        KindRow {
            kind,
            subtasks,
            subtasks_per_s: Stat::of(&self.rates),
            us_per_subtask: Stat::of(&us),
            worker_cpu_us_per_subtask: Stat::of(&self.worker_cpu).median,
            step_cpu_us_per_subtask: Stat::of(&self.step_cpu).median,
        }
    }
}

/// Runs the measurement: `--repeat` rounds of one `range-sum` task and one pool task of
/// `--steps-subtasks` subtasks each, and one call task of `--steps-call-subtasks`.
///
/// # Errors
/// A service that cannot start, a broker or Redis error, or an outcome that is not the exact
/// expected one.
pub async fn measure(cli: &Cli) -> Result<StepsTable> {
    let (python, python_version) = resolve_python(cli.steps_python.as_deref())?;
    let kinds_file = write_kinds_file(cli, &python)?;
    reset(cli).await?;
    let system = System::start_with(cli, 1, None, Some(&kinds_file), Flags::Tuned)?;
    let worker = system
        .children
        .iter()
        .find(|(bin, _)| bin == "chorus-worker")
        .map(|(_, child)| child.id())
        .context("no worker started")?;
    let mut submitter = Submitter::connect(cli).await?;
    tokio::time::sleep(SETTLE).await;
    for kind in [POOL_KIND, CALL_KIND] {
        run_noop(&mut submitter, kind, WARM_UP_SUBTASKS).await?;
    }
    submitter.run(WARM_UP_SUBTASKS, None).await?;
    let (n, calls) = (cli.steps_subtasks, cli.steps_call_subtasks);
    let (mut builtin, mut pool, mut call) = Default::default();
    for round in 1..=cli.repeat.max(1) {
        eprintln!("kinds without Rust, round {round}: range-sum {n}, {POOL_KIND} {n}, {CALL_KIND} {calls}");
        let before = Cpu::of(worker);
        let elapsed = submitter.run(n, None).await?;
        record(&mut builtin, n, elapsed, before, worker);
        let before = Cpu::of(worker);
        let elapsed = run_noop(&mut submitter, POOL_KIND, n).await?;
        record(&mut pool, n, elapsed, before, worker);
        let before = Cpu::of(worker);
        let elapsed = run_noop(&mut submitter, CALL_KIND, calls).await?;
        record(&mut call, calls, elapsed, before, worker);
    }
    drop(system);
    drop(std::fs::remove_file(&kinds_file));
    let ratios: Vec<f64> = pool
        .rates
        .iter()
        .zip(&builtin.rates)
        .map(|(p, b)| p / b)
        .collect();
    let (pool, call) = (pool.row(POOL_KIND, n), call.row(CALL_KIND, calls));
    Ok(StepsTable {
        python_version,
        pool_size: cli.steps_pool_size,
        worker_concurrency: cli.worker_concurrency,
        rounds: cli.repeat.max(1),
        builtin: builtin.row("range-sum", n),
        pool_to_builtin: Stat::of(&ratios),
        call_overhead_us_per_subtask: call.us_per_subtask.median - pool.us_per_subtask.median,
        pool,
        call,
    })
}

/// The interpreter `python` runs (`sys.executable`; `python3` on PATH when `None`), and its
/// version.
fn resolve_python(python: Option<&Path>) -> Result<(PathBuf, String)> {
    let python = python.unwrap_or(Path::new("python3"));
    let output = std::process::Command::new(python)
        .args([
            "-c",
            "import sys; print(sys.executable); print(sys.version.split()[0])",
        ])
        .output()
        .with_context(|| format!("cannot run {}", python.display()))?;
    let text = String::from_utf8(output.stdout)?;
    match text.lines().collect::<Vec<_>>()[..] {
        [path, version] if output.status.success() && !path.is_empty() => {
            Ok((PathBuf::from(path), version.to_owned()))
        }
        _ => bail!("{} did not say where its interpreter is", python.display()),
    }
}

/// Writes the measurement's kinds file to a temporary directory; returns its path. No planner
/// (a subtask per item of `input.items`) and no synthesis (the outputs as a list), so the
/// handler is all that differs from `range-sum`'s.
fn write_kinds_file(cli: &Cli, python: &Path) -> Result<PathBuf> {
    let handler = std::fs::canonicalize(&cli.steps_handler)
        .with_context(|| format!("handler {}", cli.steps_handler.display()))?;
    let (python, handler) = (python.display().to_string(), handler.display().to_string());
    let size = cli.steps_pool_size;
    let text = format!(
        "[kinds.{POOL_KIND}]\n\
         handlers.default = {{ type = \"command\", mode = \"pool\", pool_size = {size}, program = {python:?}, args = [{handler:?}, \"pool\"] }}\n\
         [kinds.{CALL_KIND}]\n\
         handlers.default = {{ type = \"command\", program = {python:?}, args = [{handler:?}] }}\n"
    );
    let path = std::env::temp_dir().join(format!("chorus-bench-kinds-{}.toml", std::process::id()));
    std::fs::write(&path, text).with_context(|| format!("cannot write {}", path.display()))?;
    Ok(path)
}

/// Adds one task's rate and CPU per subtask to `samples`.
fn record(samples: &mut Samples, n: u64, elapsed: std::time::Duration, before: Cpu, worker: u32) {
    let after = Cpu::of(worker);
    let per_subtask = |seconds: f64| seconds * MICROS_PER_SECOND / n as f64;
    samples.rates.push(n as f64 / elapsed.as_secs_f64());
    samples.worker_cpu.push(per_subtask(after.own - before.own));
    samples
        .step_cpu
        .push(per_subtask(after.steps - before.steps));
}

/// Runs one task of `kind` over `n` items and checks its outcome: succeeded, every subtask
/// counted once, and the output the items themselves in plan order (the no-op answers its
/// input). Returns its wall time.
async fn run_noop(submitter: &mut Submitter, kind: &str, n: u64) -> Result<std::time::Duration> {
    let items: Vec<u64> = (0..n).collect();
    let (elapsed, outcome) = submitter
        .run_task(kind, &json!({ "items": items }), None)
        .await?;
    let output = serde_json::to_value(&outcome.output)?;
    if outcome.status != Status::Succeeded
        || outcome.stats.subtasks != n
        || outcome.stats.succeeded != n
        || output != json!(items)
    {
        bail!(
            "wrong outcome of {kind}: {:?}, stats {:?}, errors {:?}",
            outcome.status,
            outcome.stats,
            outcome.errors
        );
    }
    Ok(elapsed)
}

/// CPU seconds of a worker process and of the step processes it started.
#[derive(Clone, Copy)]
struct Cpu {
    /// The worker's own user + system time.
    own: f64,
    /// Its reaped children's (per-call processes) plus its live children's (pool members).
    steps: f64,
}

impl Cpu {
    /// Read from `/proc`; zeros where it cannot be read (the figures are then reported as 0).
    fn of(pid: u32) -> Cpu {
        let fields = stat_fields(pid);
        let field = |i: usize| fields.get(i).copied().unwrap_or(0.0);
        // After the command name: utime, stime, cutime, cstime are fields 11-14 (proc(5)).
        let live: f64 = children(pid)
            .into_iter()
            .map(|child| {
                let f = stat_fields(child);
                f.get(11).copied().unwrap_or(0.0) + f.get(12).copied().unwrap_or(0.0)
            })
            .sum();
        Cpu {
            own: (field(11) + field(12)) / crate::CLOCK_TICKS_PER_SECOND,
            steps: (field(13) + field(14) + live) / crate::CLOCK_TICKS_PER_SECOND,
        }
    }
}

/// The numeric fields of `/proc/<pid>/stat` after the command name (index 0 is the state,
/// which is not a number and reads as 0).
fn stat_fields(pid: u32) -> Vec<f64> {
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .ok()
        .and_then(|s| {
            let rest = s.rsplit_once(')')?.1.to_owned();
            Some(
                rest.split_whitespace()
                    .map(|v| v.parse().unwrap_or(0.0))
                    .collect(),
            )
        })
        .unwrap_or_default()
}

/// Live children of `pid`, from every thread's `/proc/<pid>/task/<tid>/children` (a child
/// belongs to the thread that forked it).
fn children(pid: u32) -> Vec<u32> {
    let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) else {
        return Vec::new();
    };
    tasks
        .filter_map(|task| task.ok())
        .filter_map(|task| std::fs::read_to_string(task.path().join("children")).ok())
        .flat_map(|list| {
            list.split_whitespace()
                .filter_map(|p| p.parse().ok())
                .collect::<Vec<u32>>()
        })
        .collect()
}

/// Prints the table.
pub fn print(table: &StepsTable) {
    println!();
    println!(
        "kinds without Rust: one worker (--concurrency {}), {} rounds in turns, median (min–max); Python {} noop.py, pool_size {}:",
        table.worker_concurrency,
        table.rounds,
        table.python_version,
        table.pool_size
    );
    println!(
        "{:>10} {:>9} {:>22} {:>18} {:>22} {:>20}",
        "kind",
        "subtasks",
        "subtasks/s",
        "µs/subtask",
        "worker CPU µs/subtask",
        "step CPU µs/subtask"
    );
    for row in [&table.builtin, &table.pool, &table.call] {
        println!(
            "{:>10} {:>9} {:>22} {:>18} {:>22.1} {:>20.1}",
            row.kind,
            row.subtasks,
            row.subtasks_per_s.to_string(),
            row.us_per_subtask.to_string(),
            row.worker_cpu_us_per_subtask,
            row.step_cpu_us_per_subtask
        );
    }
    println!(
        "pool / built-in: {:.2} ({:.2}–{:.2}) per round; a process per call costs {:.0} µs per subtask over the pool",
        table.pool_to_builtin.median,
        table.pool_to_builtin.min,
        table.pool_to_builtin.max,
        table.call_overhead_us_per_subtask
    );
}
