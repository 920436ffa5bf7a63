//! A `command` step run as a process per call: the request on stdin (then closed), the answer
//! is all of stdout (read up to the limit), stderr's tail goes into errors; on timeout or
//! cancellation the process group is terminated and reaped.

use std::path::{Path, PathBuf};
use std::process::ExitStatus;
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWriteExt};
use tokio::process::Child;
use tokio_util::sync::CancellationToken;

use super::process::{self, describe_exit, Launch, StepProcess};
use super::spec::{self, CommandSpec};
use super::{answer, StepConfigError, StepError};
use crate::usage::UsageMeter;

/// A command step's settings, checked: where the program is, its limits.
#[derive(Debug, Clone)]
pub struct CommandConfig {
    /// What to start.
    pub launch: Launch,
    /// The step's own per-call limit.
    pub timeout: Duration,
    /// SIGTERM-to-SIGKILL grace.
    pub grace: Duration,
    /// `command "python3"`, for messages.
    pub what: String,
}

impl CommandConfig {
    /// Checks `spec` and resolves its program and working directory against `base_dir`.
    ///
    /// # Errors
    /// [`StepConfigError`] naming `program`, `cwd`, `timeout_ms`, `grace_ms` or `env.<NAME>`.
    pub fn build(spec: &CommandSpec, base_dir: &Path) -> Result<CommandConfig, StepConfigError> {
        let cwd = match &spec.cwd {
            Some(cwd) => base_dir.join(cwd),
            None => base_dir.to_path_buf(),
        };
        if !cwd.is_dir() {
            return Err(config_error(
                "cwd",
                format!("{} is not a directory", cwd.display()),
            ));
        }
        for name in spec.env.keys() {
            if name.is_empty() || name.contains(['=', '\0']) {
                return Err(config_error(
                    &format!("env.{name}"),
                    "not a valid variable name",
                ));
            }
        }
        let path = spec
            .env
            .get("PATH")
            .cloned()
            .or_else(|| std::env::var("PATH").ok());
        let program = resolve_program(&spec.program, base_dir, path.as_deref())?;
        Ok(CommandConfig {
            launch: Launch {
                program,
                args: spec.args.clone(),
                cwd,
                env: spec.env.clone(),
            },
            timeout: millis("timeout_ms", spec.timeout_ms, spec::DEFAULT_TIMEOUT_MS)?,
            grace: millis("grace_ms", spec.grace_ms, spec::DEFAULT_GRACE_MS)?,
            what: format!("command {}", crate::text::quoted(&spec.program)),
        })
    }
}

/// A `StepConfigError` for `key`.
pub fn config_error(key: &str, message: impl Into<String>) -> StepConfigError {
    StepConfigError {
        key: key.to_owned(),
        message: message.into(),
    }
}

/// `value` (or `default`) milliseconds, checked to be within 1 ms ..= [`spec::MAX_DURATION_MS`].
///
/// # Errors
/// [`StepConfigError`] naming `key`.
pub fn millis(key: &str, value: Option<u64>, default: u64) -> Result<Duration, StepConfigError> {
    let ms = value.unwrap_or(default);
    if ms == 0 || ms > spec::MAX_DURATION_MS {
        return Err(config_error(
            key,
            format!("{ms} is out of range (1 ..= {})", spec::MAX_DURATION_MS),
        ));
    }
    Ok(Duration::from_millis(ms))
}

/// The program's path: a name with a `/` is taken relative to `base_dir` (or as it is when
/// absolute), a bare name is searched on `path`; it must be an executable file.
fn resolve_program(
    program: &str,
    base_dir: &Path,
    path: Option<&str>,
) -> Result<PathBuf, StepConfigError> {
    if program.is_empty() {
        return Err(config_error("program", "is empty"));
    }
    if program.contains('/') {
        let candidate = base_dir.join(program);
        return if is_executable(&candidate) {
            Ok(candidate)
        } else {
            Err(config_error(
                "program",
                format!(
                    "program {} not found or not executable",
                    crate::text::quoted(program)
                ),
            ))
        };
    }
    std::env::split_paths(path.unwrap_or_default())
        .map(|dir| dir.join(program))
        .find(|candidate| is_executable(candidate))
        .ok_or_else(|| {
            config_error(
                "program",
                format!(
                    "program {} not found (searched PATH)",
                    crate::text::quoted(program)
                ),
            )
        })
}

fn is_executable(path: &Path) -> bool {
    use std::os::unix::fs::PermissionsExt;
    std::fs::metadata(path)
        .is_ok_and(|meta| meta.is_file() && meta.permissions().mode() & 0o111 != 0)
}

/// The error of a process that could not be started: a missing or forbidden program is fatal,
/// anything else (out of processes or memory) may pass.
pub fn spawn_error(what: &str, error: &std::io::Error) -> StepError {
    let message = format!("{what} could not be started: {error}");
    match error.kind() {
        std::io::ErrorKind::NotFound | std::io::ErrorKind::PermissionDenied => {
            StepError::Fatal { message }
        }
        _ => StepError::Retryable {
            message,
            retry_after: None,
        },
    }
}

/// How a process's exchange ended.
enum Exchange {
    /// Stdout closed and the process exited.
    Done(Vec<u8>, std::io::Result<ExitStatus>),
    /// Stdout went past the limit: what was read of it.
    Oversized(Vec<u8>),
}

/// Runs one call in a new process; the `usage` of an `{"error": ...}` answer goes to `usage`.
///
/// # Errors
/// [`StepError`] as docs/kinds.md#steps classifies it.
pub async fn call(
    config: &CommandConfig,
    request: &[u8],
    timeout: Duration,
    max_answer_bytes: usize,
    cancel: &CancellationToken,
    usage: &UsageMeter,
) -> Result<Vec<u8>, StepError> {
    let what = &config.what;
    let mut proc = process::spawn(&config.launch)
        .await
        .map_err(|error| spawn_error(what, &error))?;
    let exchange = tokio::select! {
        biased;
        () = cancel.cancelled() => None,
        () = tokio::time::sleep(timeout) => None,
        exchange = exchange(&mut proc.child, request, max_answer_bytes) => Some(exchange),
    };
    match exchange {
        None => Err(stop(&mut proc, config.grace, timeout, cancel, what).await),
        Some(Exchange::Oversized(head)) => {
            proc.terminate(config.grace).await;
            Err(answer::oversized(what, max_answer_bytes, &head))
        }
        Some(Exchange::Done(stdout, status)) => {
            // Whatever the step left behind in its group goes with it.
            proc.signal_group(rustix::process::Signal::KILL);
            match status {
                Ok(status) if status.success() => {
                    answer::check(stdout, max_answer_bytes, what, usage)
                }
                Ok(status) => Err(exit_error(&mut proc, status, what).await),
                Err(error) => Err(StepError::Retryable {
                    message: format!("{what}: waiting for it failed: {error}"),
                    retry_after: None,
                }),
            }
        }
    }
}

/// Writes the request (closing stdin), reads stdout to its end or past the limit, and waits.
async fn exchange(child: &mut Child, request: &[u8], max_answer_bytes: usize) -> Exchange {
    let stdin = child.stdin.take();
    let write = async move {
        if let Some(mut stdin) = stdin {
            // A step that exits without reading its input is judged by its exit and answer.
            let _ = stdin.write_all(request).await;
        }
    };
    let read = read_bounded(child.stdout.take(), max_answer_bytes);
    let ((), stdout) = tokio::join!(write, read);
    match stdout {
        Ok(stdout) => Exchange::Done(stdout, child.wait().await),
        Err(head) => Exchange::Oversized(head),
    }
}

/// All of `reader`, or `Err` with what was read once it goes past `max` bytes (reading no more
/// than `max + 1`).
async fn read_bounded(
    reader: Option<impl AsyncRead + Unpin>,
    max: usize,
) -> Result<Vec<u8>, Vec<u8>> {
    let mut out = Vec::new();
    if let Some(reader) = reader {
        let limit = u64::try_from(max).unwrap_or(u64::MAX).saturating_add(1);
        // A read error (a closed pipe) ends the answer; the exit status tells what happened.
        let _ = reader.take(limit).read_to_end(&mut out).await;
    }
    if out.len() <= max {
        Ok(out)
    } else {
        Err(out)
    }
}

/// Terminates a process stopped by `cancel` or its time limit, and says which.
pub async fn stop(
    proc: &mut StepProcess,
    grace: Duration,
    timeout: Duration,
    cancel: &CancellationToken,
    what: &str,
) -> StepError {
    proc.terminate(grace).await;
    if cancel.is_cancelled() {
        StepError::Cancelled
    } else {
        proc.settle_stderr().await;
        StepError::Retryable {
            message: format!(
                "{what} timed out after {} ms{}",
                timeout.as_millis(),
                proc.stderr.suffix()
            ),
            retry_after: None,
        }
    }
}

/// The error of a process that exited unsuccessfully, with its stderr tail.
pub async fn exit_error(proc: &mut StepProcess, status: ExitStatus, what: &str) -> StepError {
    proc.settle_stderr().await;
    let (how, retryable) = describe_exit(status);
    let message = format!("{what} {how}{}", proc.stderr.suffix());
    if retryable {
        StepError::Retryable {
            message,
            retry_after: None,
        }
    } else {
        StepError::Fatal { message }
    }
}
