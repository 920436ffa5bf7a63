"""Celery's chord measured the way `chorus-bench` measures Chorus, for a side-by-side table.

Chorus's own benchmark (bench/src/main.rs) times one `range-sum` task of N no-op subtasks, each
summing one of N contiguous slices of [0, 10*N), from submit to outcome, for N = 1,000, 10,000
and 100,000, plus the latency of sequential 3-subtask tasks. This script does the same with
Celery's canvas: a chord whose header is N `sum_slice(start, end)` tasks and whose body
`total(results)` adds them up. The clock runs from `chord(...).apply_async()` until the body's
result is read back with `.get()`, and every sum is checked against the exact sum of [0, 10*N).

It needs a RabbitMQ (broker) and a Redis (result backend, which chords need) that it may wipe:
the `celery` queue is deleted and the Redis database flushed before every run. It starts its
own Celery worker (`python -m celery -A celery_chord worker`, prefork pool) as a subprocess for
every run, waits until the worker answers a ping and has run a warm-up chord, measures, and
stops it. `deploy/bench-celery.sh` sets everything up on a private RabbitMQ + Redis pair.

The same file is the Celery app the worker imports (`-A celery_chord`): the worker gets the
settings through CELERY_CHORD_* environment variables set by the driver.
"""

from __future__ import annotations

import argparse
import contextlib
import gc
import json
import math
import os
import resource
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from celery import Celery, chord
from celery.exceptions import TimeoutError as CeleryTimeoutError

BENCH_DIR = Path(__file__).resolve().parent
REPO_DIR = BENCH_DIR.parent
APP_MODULE = "celery_chord"
TASK_QUEUE = "celery"
DEFAULT_OUT = BENCH_DIR / "results" / "celery.json"

# Settings handed from the driver to the worker subprocess.
ENV_BROKER_URL = "CELERY_CHORD_BROKER_URL"
ENV_RESULT_BACKEND = "CELERY_CHORD_RESULT_BACKEND"
ENV_CONCURRENCY = "CELERY_CHORD_CONCURRENCY"
ENV_PREFETCH_MULTIPLIER = "CELERY_CHORD_PREFETCH_MULTIPLIER"
ENV_QUEUE_TYPE = "CELERY_CHORD_QUEUE_TYPE"
ENV_CONFIRM_PUBLISH = "CELERY_CHORD_CONFIRM_PUBLISH"


@dataclass(frozen=True)
class BenchConfig:
    """What both the driver and the worker must agree on."""

    broker_url: str = "amqp://guest:guest@127.0.0.1:5672//"
    result_backend: str = "redis://127.0.0.1:6379/0"
    concurrency: int = 2
    prefetch_multiplier: int = 50
    queue_type: str = "quorum"
    confirm_publish: bool = False

    @classmethod
    def from_env(cls) -> BenchConfig:
        defaults = cls()
        return cls(
            broker_url=os.environ.get(ENV_BROKER_URL, defaults.broker_url),
            result_backend=os.environ.get(ENV_RESULT_BACKEND, defaults.result_backend),
            concurrency=int(os.environ.get(ENV_CONCURRENCY, defaults.concurrency)),
            prefetch_multiplier=int(
                os.environ.get(ENV_PREFETCH_MULTIPLIER, defaults.prefetch_multiplier)
            ),
            queue_type=os.environ.get(ENV_QUEUE_TYPE, defaults.queue_type),
            confirm_publish=os.environ.get(ENV_CONFIRM_PUBLISH, "0") == "1",
        )

    def to_env(self) -> dict[str, str]:
        return {
            ENV_BROKER_URL: self.broker_url,
            ENV_RESULT_BACKEND: self.result_backend,
            ENV_CONCURRENCY: str(self.concurrency),
            ENV_PREFETCH_MULTIPLIER: str(self.prefetch_multiplier),
            ENV_QUEUE_TYPE: self.queue_type,
            ENV_CONFIRM_PUBLISH: "1" if self.confirm_publish else "0",
        }


def celery_settings(config: BenchConfig) -> dict[str, Any]:
    """Every Celery setting the benchmark relies on, stated explicitly (defaults included)."""
    return {
        "broker_url": config.broker_url,
        "result_backend": config.result_backend,
        # Persistent task messages (Celery's default, stated), on a durable queue of this type.
        "task_default_delivery_mode": "persistent",
        "task_default_queue": TASK_QUEUE,
        "task_default_queue_type": config.queue_type,
        # Publisher confirms: off is Celery's default; py-amqp waits for each confirm in turn.
        "broker_transport_options": {"confirm_publish": config.confirm_publish},
        # Ack after the task ran, like Chorus's workers.
        "task_acks_late": True,
        "task_reject_on_worker_lost": False,
        # Broker prefetch = multiplier x concurrency (2 x 50 = 100, Chorus's worker prefetch).
        "worker_prefetch_multiplier": config.prefetch_multiplier,
        "worker_concurrency": config.concurrency,
        "worker_pool": "prefork",
        "task_serializer": "json",
        "result_serializer": "json",
        "accept_content": ["json"],
        "task_ignore_result": False,
        "result_expires": 3600,
        "worker_send_task_events": False,
        "task_send_sent_event": False,
        "broker_connection_retry_on_startup": True,
    }


app = Celery(APP_MODULE)
app.conf.update(celery_settings(BenchConfig.from_env()))


@app.task(name="chord_bench.sum_slice")
def sum_slice(start: int, end: int) -> int:
    """One subtask: the sum of the integers of [start, end) (closed form, as Chorus's kind)."""
    return sum_of_range(start, end)


@app.task(name="chord_bench.total")
def total(results: list[int]) -> int:
    """The chord body: adds up the header's sums."""
    return sum(results)


def sum_of_range(start: int, end: int) -> int:
    """Exact sum of the integers of [start, end)."""
    if end <= start:
        return 0
    return (start + end - 1) * (end - start) // 2


def slice_bounds(start: int, end: int, parts: int, index: int) -> tuple[int, int]:
    """The index-th of `parts` contiguous slices of [start, end) (sizes differ by at most one)."""
    base, extra = divmod(end - start, parts)
    first = start + index * base + min(index, extra)
    return first, first + base + (1 if index < extra else 0)


# --------------------------------------------------------------------------- statistics ---


@dataclass
class Stat:
    """Median and range of repeated measurements."""

    median: float
    min: float
    max: float

    @classmethod
    def of(cls, values: list[float]) -> Stat | None:
        if not values:
            return None
        ordered = sorted(values)
        mid = len(ordered) // 2
        median = ordered[mid] if len(ordered) % 2 else (ordered[mid - 1] + ordered[mid]) / 2
        return cls(median=median, min=ordered[0], max=ordered[-1])

    def show(self, digits: int = 0) -> str:
        return f"{self.median:.{digits}f} ({self.min:.{digits}f}–{self.max:.{digits}f})"


def percentile(ordered: list[float], p: float) -> float:
    """Nearest-rank percentile, rounded the same way as chorus-bench."""
    if not ordered:
        return 0.0
    rank = int(math.floor(p / 100.0 * (len(ordered) - 1) + 0.5))
    return ordered[min(rank, len(ordered) - 1)]


# ------------------------------------------------------------------------------ worker -----


def read_proc_stat(pid: int) -> tuple[int, float] | None:
    """(parent pid, CPU seconds user+system) of a live process, from /proc."""
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = text[text.rindex(")") + 2 :].split()
    ticks = os.sysconf("SC_CLK_TCK")
    return int(fields[1]), (int(fields[11]) + int(fields[12])) / ticks


def peak_rss_kib(pid: int) -> int:
    """VmHWM (peak resident set) of a live process, in KiB."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1])
    except OSError:
        pass
    return 0


class CeleryWorker:
    """A `celery worker` subprocess with the benchmark's settings."""

    def __init__(self, config: BenchConfig, log_path: Path) -> None:
        self.config = config
        self.log_path = log_path
        self.nodename = f"chord-bench-{os.getpid()}@localhost"
        self.process: subprocess.Popen[bytes] | None = None

    def command(self, python: str = sys.executable) -> list[str]:
        return [
            python, "-m", "celery", "-A", APP_MODULE, "worker",
            "--pool", "prefork",
            "--concurrency", str(self.config.concurrency),
            "--prefetch-multiplier", str(self.config.prefetch_multiplier),
            "--without-gossip", "--without-mingle", "--without-heartbeat",
            "--loglevel", "WARNING",
            "--hostname", self.nodename,
        ]  # fmt: skip

    def start(self) -> None:
        env = dict(os.environ)
        env.update(self.config.to_env())
        # The worker imports this file as a module: keep bench/ free of __pycache__.
        env["PYTHONDONTWRITEBYTECODE"] = "1"
        env["PYTHONPATH"] = os.pathsep.join(
            p for p in (str(BENCH_DIR), env.get("PYTHONPATH", "")) if p
        )
        with open(self.log_path, "ab") as log:
            self.process = subprocess.Popen(
                self.command(),
                cwd=BENCH_DIR,
                env=env,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )

    def wait_ready(self, timeout: float = 60.0) -> None:
        """Until the worker answers a ping, then until it has run a warm-up chord of 3."""
        deadline = time.monotonic() + timeout
        while True:
            self.check_alive()
            if app.control.ping(destination=[self.nodename], timeout=0.5):
                break
            if time.monotonic() >= deadline:
                raise RuntimeError(f"worker did not answer a ping within {timeout:.0f} s")
        warm = run_chord(3, deadline=time.monotonic() + 30.0)
        if warm.timed_out:
            raise RuntimeError("worker did not finish a 3-subtask warm-up chord within 30 s")

    def check_alive(self) -> None:
        assert self.process is not None
        if self.process.poll() is not None:
            raise RuntimeError(f"worker exited with status {self.process.returncode}")

    def tree(self) -> list[int]:
        """The worker's main process and its pool processes."""
        assert self.process is not None
        pids = [self.process.pid]
        for entry in Path("/proc").iterdir():
            if entry.name.isdigit():
                stat = read_proc_stat(int(entry.name))
                if stat is not None and stat[0] == self.process.pid:
                    pids.append(int(entry.name))
        return pids

    def cpu_seconds(self) -> float:
        return sum((read_proc_stat(pid) or (0, 0.0))[1] for pid in self.tree())

    def peak_rss_kib(self) -> int:
        return sum(peak_rss_kib(pid) for pid in self.tree())

    def stop(self, grace: float = 60.0) -> None:
        """Warm shutdown (SIGTERM); the whole process group is killed if it takes too long."""
        if self.process is None or self.process.poll() is not None:
            return
        self.process.send_signal(signal.SIGTERM)
        try:
            self.process.wait(timeout=grace)
        except subprocess.TimeoutExpired:
            # The worker leads its own process group (start_new_session), pool processes
            # included; kill that group while its leader still exists, so the id is ours.
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait(timeout=30)


# ---------------------------------------------------------------------------- measuring ----


@dataclass
class ChordRun:
    """One chord from apply_async to the body's result."""

    subtasks: int
    seconds: float
    timed_out: bool = False
    completed_subtasks: int | None = None
    build_seconds: float = 0.0
    publish_seconds: float = 0.0
    client_cpu_seconds: float = 0.0
    worker_cpu_seconds: float | None = None
    worker_peak_rss_kib: int | None = None

    @property
    def subtasks_per_s(self) -> float:
        return self.subtasks / self.seconds


def header_progress(group_id: str | None) -> int | None:
    """How many header results the Redis backend has joined so far for a running chord."""
    if not group_id:
        return None
    backend = app.backend
    try:
        return int(backend.client.zcard(backend.get_key_for_group(group_id, ".j")))
    except Exception:  # noqa: BLE001 -- progress is informative only
        return None


def run_chord(n: int, deadline: float, follow_parents: bool = False) -> ChordRun:
    """Runs one chord of n `sum_slice` tasks and `total`; checks the sum.

    `follow_parents=False` is a documented `AsyncResult.get()` argument: with Celery's default
    (True) every wake-up of the waiting client re-checks all n header results for errors, and
    it wakes up once per header result published on Redis pub/sub: O(n^2) client CPU, which
    would measure the waiting loop rather than the chord.
    """
    end = 10 * n
    started_build = time.perf_counter()
    canvas = chord(
        [sum_slice.s(*slice_bounds(0, end, n, i)) for i in range(n)],
        total.s(),
    )
    build_seconds = time.perf_counter() - started_build

    cpu_before = time.process_time()
    started = time.perf_counter()
    result = canvas.apply_async()
    publish_seconds = time.perf_counter() - started
    try:
        value = result.get(
            timeout=max(0.001, deadline - time.monotonic()), follow_parents=follow_parents
        )
    except CeleryTimeoutError:
        run = ChordRun(
            subtasks=n,
            seconds=time.perf_counter() - started,
            timed_out=True,
            completed_subtasks=header_progress(getattr(result.parent, "id", None)),
            build_seconds=build_seconds,
            publish_seconds=publish_seconds,
            client_cpu_seconds=time.process_time() - cpu_before,
        )
        # A result that timed out stays registered with the Redis result consumer (subscribed
        # to its pub/sub channel) until forgotten; forget it and its header now, or their
        # __del__ would unsubscribe during interpreter shutdown.
        result.forget()
        return run
    seconds = time.perf_counter() - started
    client_cpu = time.process_time() - cpu_before
    expected = sum_of_range(0, end)
    if value != expected:
        raise RuntimeError(f"wrong sum for {n} subtasks: got {value!r}, expected {expected}")
    return ChordRun(
        subtasks=n,
        seconds=seconds,
        completed_subtasks=n,
        build_seconds=build_seconds,
        publish_seconds=publish_seconds,
        client_cpu_seconds=client_cpu,
    )


def reset_broker_and_backend() -> None:
    """Deletes the task queue (messages left by a timed-out run included) and flushes Redis."""
    with app.connection_for_write() as conn:
        conn.ensure_connection(max_retries=3)
        conn.default_channel.queue_delete(TASK_QUEUE)
    app.backend.client.flushdb()


class FreshWorker:
    """Context: clean queue and Redis, a started and warmed-up worker, stopped on exit."""

    def __init__(self, config: BenchConfig, log_path: Path) -> None:
        self.worker = CeleryWorker(config, log_path)

    def __enter__(self) -> CeleryWorker:
        reset_broker_and_backend()
        self.worker.start()
        try:
            self.worker.wait_ready()
        except BaseException:
            self.worker.stop(grace=10)
            raise
        return self.worker

    def __exit__(self, *exc: object) -> None:
        self.worker.stop()


def measure_size(config: BenchConfig, args: argparse.Namespace, n: int) -> list[ChordRun]:
    """`repeat` runs of one n-subtask chord, each on a fresh worker."""
    runs: list[ChordRun] = []
    for attempt in range(args.repeat):
        with FreshWorker(config, args.worker_log) as worker:
            cpu_before = worker.cpu_seconds()
            run = run_chord(n, time.monotonic() + args.timeout_secs, args.follow_parents)
            run.worker_cpu_seconds = worker.cpu_seconds() - cpu_before
            run.worker_peak_rss_kib = worker.peak_rss_kib()
        # Result objects of the chord hold reference cycles; collect them now, while the worker
        # and Redis are up, not at interpreter exit (where their __del__ would unsubscribe).
        gc.collect()
        runs.append(run)
        if run.timed_out:
            log(
                f"  run {attempt + 1}: TIMEOUT after {run.seconds:.0f} s, "
                f"{run.completed_subtasks} of {n} subtasks done; skipping further runs of {n}"
            )
            break
        log(
            f"  run {attempt + 1}: {run.seconds:.3f} s, {run.subtasks_per_s:.0f} subtasks/s "
            f"(publish {run.publish_seconds:.3f} s, sum ok)"
        )
    return runs


def measure_latency(config: BenchConfig, args: argparse.Namespace) -> list[dict[str, Any]]:
    """`repeat` series of `latency_tasks` sequential 3-subtask chords; percentiles in ms."""
    series = []
    for attempt in range(args.repeat):
        samples: list[float] = []
        timed_out = False
        with FreshWorker(config, args.worker_log):
            deadline = time.monotonic() + args.timeout_secs
            for _ in range(args.latency_tasks):
                run = run_chord(3, deadline, args.follow_parents)
                if run.timed_out:
                    timed_out = True
                    break
                samples.append(run.seconds * 1000.0)
        samples.sort()
        entry = {
            "tasks": len(samples),
            "timed_out": timed_out,
            "p50_ms": percentile(samples, 50),
            "p90_ms": percentile(samples, 90),
            "p99_ms": percentile(samples, 99),
        }
        series.append(entry)
        log(
            f"  run {attempt + 1}: {len(samples)} chords, p50 {entry['p50_ms']:.1f} ms, "
            f"p90 {entry['p90_ms']:.1f} ms, p99 {entry['p99_ms']:.1f} ms"
            + (" (TIMEOUT)" if timed_out else "")
        )
        if timed_out:
            break
    return series


def stat_dict(values: list[float]) -> dict[str, float] | None:
    stat = Stat.of(values)
    return asdict(stat) if stat else None


def throughput_row(n: int, runs: list[ChordRun]) -> dict[str, Any]:
    """One table row: statistics over the runs that finished, plus every run as measured."""
    done = [r for r in runs if not r.timed_out]
    return {
        "subtasks": n,
        "subtasks_per_s": stat_dict([r.subtasks_per_s for r in done]),
        "us_per_subtask": stat_dict([r.seconds * 1e6 / n for r in done]),
        "worker_cpu_us_per_subtask": stat_dict(
            [r.worker_cpu_seconds * 1e6 / n for r in done if r.worker_cpu_seconds is not None]
        ),
        "client_cpu_us_per_subtask": stat_dict([r.client_cpu_seconds * 1e6 / n for r in done]),
        "worker_peak_rss_kib": max((r.worker_peak_rss_kib or 0 for r in done), default=None),
        "timed_out_runs": len(runs) - len(done),
        "runs": [asdict(r) for r in runs],
    }


def latency_summary(series: list[dict[str, Any]]) -> dict[str, Any]:
    """Median and min–max of each percentile over the series that finished."""
    complete = [s for s in series if not s["timed_out"]]
    summary: dict[str, Any] = {"subtasks_per_task": 3}
    summary["tasks"] = complete[0]["tasks"] if complete else 0
    for key in ("p50_ms", "p90_ms", "p99_ms"):
        summary[key] = stat_dict([s[key] for s in complete])
    summary["timed_out_runs"] = len(series) - len(complete)
    summary["runs"] = series
    return summary


# ---------------------------------------------------------------------------- reporting ----


def log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def software_versions() -> dict[str, str]:
    import amqp
    import billiard
    import celery
    import kombu
    import redis

    versions = {
        "python": sys.version.split()[0],
        "celery": celery.__version__,
        "kombu": kombu.__version__,
        "amqp (py-amqp)": amqp.__version__,
        "billiard": billiard.__version__,
        "redis-py": redis.__version__,
    }
    try:
        with app.connection_for_write() as conn:
            conn.ensure_connection(max_retries=3)
            props = conn.connection.server_properties
            version = props.get("version", "?")
            versions["rabbitmq"] = version.decode() if isinstance(version, bytes) else str(version)
    except Exception as exc:  # noqa: BLE001
        versions["rabbitmq"] = f"? ({exc})"
    try:
        versions["redis"] = str(app.backend.client.info("server").get("redis_version", "?"))
    except Exception as exc:  # noqa: BLE001
        versions["redis"] = f"? ({exc})"
    return versions


def stated_settings(config: BenchConfig, args: argparse.Namespace) -> dict[str, Any]:
    from kombu.utils.url import maybe_sanitize_url

    settings = celery_settings(config)
    settings["broker_url"] = maybe_sanitize_url(config.broker_url)
    settings["result_backend"] = maybe_sanitize_url(config.result_backend)
    return {
        "celery": settings,
        "broker_prefetch_count": config.concurrency * config.prefetch_multiplier,
        "worker_command": " ".join(CeleryWorker(config, Path(os.devnull)).command("python")),
        "worker_scheduling": "prefork default (-O fair)",
        "result_chord_join": "Redis native join (sorted set + Lua), no chord_unlock polling",
        "repeat": args.repeat,
        "latency_tasks": args.latency_tasks,
        "timeout_secs": args.timeout_secs,
        "fresh_worker_per_run": True,
        "clock": "chord(...).apply_async() until body .get() returns; signatures built before",
        "wait": f"AsyncResult.get(follow_parents={args.follow_parents})",
    }


def print_report(
    versions: dict[str, str],
    settings: dict[str, Any],
    rows: list[dict[str, Any]],
    latency: dict[str, Any] | None,
) -> None:
    def show(stat: dict[str, float] | None, digits: int = 0) -> str:
        return Stat(**stat).show(digits) if stat else "-"

    print()
    print("Celery chord benchmark: " + ", ".join(f"{k} {v}" for k, v in versions.items()))
    print("settings:")
    for key, value in settings["celery"].items():
        print(f"  {key} = {value!r}")
    for key in ("broker_prefetch_count", "worker_command", "worker_scheduling", "result_chord_join",
                "clock", "wait"):  # fmt: skip
        print(f"  {key}: {settings[key]}")
    print()
    print(
        f"{'subtasks':>9} {'subtasks/s':>22} {'µs/subtask':>22} {'worker CPU µs/sub':>20}"
        f" {'client CPU µs/sub':>20} {'worker peak RSS KiB':>20}"
    )
    for row in rows:
        if row["subtasks_per_s"] is None:
            run = row["runs"][-1]
            done = run["completed_subtasks"]
            done_text = f"{done} of {row['subtasks']} done" if done is not None else "progress ?"
            print(f"{row['subtasks']:>9}   TIMEOUT after {run['seconds']:.0f} s ({done_text})")
            continue
        note = f"   ({row['timed_out_runs']} run(s) timed out)" if row["timed_out_runs"] else ""
        print(
            f"{row['subtasks']:>9} {show(row['subtasks_per_s']):>22}"
            f" {show(row['us_per_subtask']):>22}"
            f" {show(row['worker_cpu_us_per_subtask']):>20}"
            f" {show(row['client_cpu_us_per_subtask']):>20}"
            f" {row['worker_peak_rss_kib'] or 0:>20}{note}"
        )
    if latency is not None:
        print()
        print(
            f"latency, {latency['tasks']} sequential 3-subtask chords: "
            f"p50 {show(latency['p50_ms'], 1)} ms, p90 {show(latency['p90_ms'], 1)} ms, "
            f"p99 {show(latency['p99_ms'], 1)} ms"
            + (
                f"   ({latency['timed_out_runs']} run(s) timed out)"
                if latency["timed_out_runs"]
                else ""
            )
        )


def display_path(path: Path) -> str:
    """The path relative to the repository when inside it (never an absolute path in output)."""
    try:
        return str(path.resolve().relative_to(REPO_DIR))
    except ValueError:
        return str(path)


# --------------------------------------------------------------------------------- main ----


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    def sizes(text: str) -> list[int]:
        values = [int(v) for v in text.split(",") if v.strip()]
        if not values or any(v < 1 for v in values):
            raise argparse.ArgumentTypeError("sizes must be positive integers")
        return values

    parser = argparse.ArgumentParser(
        description="Benchmark Celery's chord like chorus-bench benchmarks Chorus.",
    )
    parser.add_argument(
        "--sizes",
        type=sizes,
        default=[1000, 10000, 100000],
        help="chord header sizes (subtasks), comma-separated (default 1000,10000,100000)",
    )
    parser.add_argument(
        "--repeat",
        type=int,
        default=3,
        help="runs of each measurement; median and min–max shown (default 3)",
    )
    parser.add_argument(
        "--latency-tasks",
        type=int,
        default=500,
        help="sequential 3-subtask chords per latency run; 0 skips it (default 500)",
    )
    parser.add_argument(
        "--timeout-secs",
        type=float,
        default=900.0,
        help="limit of one run (one chord, or one latency series) (default 900)",
    )
    parser.add_argument(
        "--amqp-url",
        default=os.environ.get("CHORUS_AMQP_URL"),
        help="RabbitMQ to use, wiped (default $CHORUS_AMQP_URL)",
    )
    parser.add_argument(
        "--redis-url",
        default=os.environ.get("CHORUS_REDIS_URL"),
        help="Redis to use, flushed (default $CHORUS_REDIS_URL; database 0)",
    )
    parser.add_argument(
        "--concurrency",
        type=int,
        default=2,
        help="prefork pool processes (default 2: the machine has 2 cores)",
    )
    parser.add_argument(
        "--prefetch-multiplier",
        type=int,
        default=50,
        help="worker_prefetch_multiplier; prefetch = this x concurrency (default 50)",
    )
    parser.add_argument(
        "--queue-type",
        choices=("quorum", "classic"),
        default="quorum",
        help="type of the task queue (default quorum, as Chorus's queues)",
    )
    parser.add_argument(
        "--confirm-publish",
        action="store_true",
        help="publisher confirms for every task message (Celery default: off)",
    )
    parser.add_argument(
        "--follow-parents",
        action="store_true",
        help="wait with Celery's default get(follow_parents=True), which re-checks "
        "every header result at each wake-up (O(n^2) in the client)",
    )
    parser.add_argument(
        "--out",
        type=Path,
        default=DEFAULT_OUT,
        help="JSON file to write (default bench/results/celery.json)",
    )
    args = parser.parse_args(argv)
    if not args.amqp_url or not args.redis_url:
        parser.error("set CHORUS_AMQP_URL and CHORUS_REDIS_URL, or pass --amqp-url and --redis-url")
    if args.repeat < 1 or args.latency_tasks < 0 or args.timeout_secs <= 0:
        parser.error("--repeat must be >= 1, --latency-tasks >= 0, --timeout-secs > 0")
    return args


def redis_url_with_db(url: str) -> str:
    """redis://host:port -> redis://host:port/0 (the database the backend uses)."""
    scheme, _, rest = url.partition("://")
    host, slash, path = rest.partition("/")
    return url if slash and path.split("?")[0] else f"{scheme}://{host}/0"


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    config = BenchConfig(
        broker_url=args.amqp_url,
        result_backend=redis_url_with_db(args.redis_url),
        concurrency=args.concurrency,
        prefetch_multiplier=args.prefetch_multiplier,
        queue_type=args.queue_type,
        confirm_publish=args.confirm_publish,
    )
    app.conf.update(celery_settings(config))

    fd, log_name = tempfile.mkstemp(prefix="celery-chord-worker-", suffix=".log")
    os.close(fd)
    args.worker_log = Path(log_name)
    ok = False
    try:
        versions = software_versions()
        settings = stated_settings(config, args)
        rows = []
        for n in args.sizes:
            log(f"throughput: one chord of {n} subtasks x {args.repeat}")
            rows.append(throughput_row(n, measure_size(config, args, n)))
        latency = None
        if args.latency_tasks:
            log(f"latency: {args.latency_tasks} sequential chords of 3 subtasks x {args.repeat}")
            latency = latency_summary(measure_latency(config, args))
        reset_broker_and_backend()

        print_report(versions, settings, rows, latency)
        table = {
            "system": "celery-chord",
            "machine": {
                "cpus": os.cpu_count(),
                "client_peak_rss_kib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss,
            },  # fmt: skip
            "versions": versions,
            "settings": settings,
            "throughput": rows,
            "latency": latency,
        }
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(table, indent=2, ensure_ascii=False) + "\n")
        print(f"\nwritten to {display_path(args.out)}")
        ok = True
        return 0
    finally:
        if ok:
            args.worker_log.unlink(missing_ok=True)
        else:
            log(f"worker log kept in {args.worker_log}")


if __name__ == "__main__":
    sys.exit(main())
