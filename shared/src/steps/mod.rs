//! Calling ONE external step of a kind defined without Rust: a command (a process per call, or a
//! pool of long-lived JSON Lines processes) or an HTTP endpoint, with the failure classes every
//! step shares (issue 17). Independent of kinds and of the broker: the kinds-file layer
//! (`kinds::file`) builds a [`Step`] per step of its definitions and calls it.
//!
//! # Layout
//! - [`spec`]: what a kinds file says about a step ([`StepSpec`]).
//! - `process`: spawning in a process group, terminating the group and reaping, stderr tails.
//! - `command`: a process per call. `pool`: long-lived JSON Lines processes.
//! - `http`: `POST` with headers, TLS and HMAC-SHA256 signing.
//! - `llm`: a language model over the Chat Completions API (issue 18).
//! - `answer`: the one place an answer is checked and classified.

pub mod answer;
pub mod command;
pub mod http;
pub mod llm;
mod pdeathsig;
pub mod pool;
pub mod process;
pub mod spec;

#[cfg(test)]
mod tests;

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use tokio_util::sync::CancellationToken;

use crate::usage::UsageMeter;

pub use spec::{
    BuiltinSpec, CommandMode, CommandSpec, HttpSpec, LlmOutput, LlmSpec, ModelSpec, ProviderSpec,
    StepSpec, StructuredOutput,
};

/// The limits of one call, set by the caller (the kind's subtask timeout, the message size).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CallLimits {
    /// The longest the call may take; the step's own `timeout_ms` applies too (the smaller wins).
    pub timeout: Duration,
    /// The largest answer accepted, in bytes; a longer one is a fatal failure.
    pub max_answer_bytes: usize,
}

/// Why a call did not produce an answer.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum StepError {
    /// Another attempt may help: exit 75, killed by a signal, timeout, HTTP 429/5xx, connection
    /// errors, an answer `{"error": "...", "retryable": true}`. `retry_after` is the wait the
    /// step asked for (HTTP `Retry-After`), if any.
    #[error("{message}")]
    Retryable {
        /// What happened, escaped and bounded (stderr tail included).
        message: String,
        /// The earliest the step wants to be called again.
        retry_after: Option<Duration>,
    },
    /// No retry will help: other exit codes, HTTP 4xx (but 429), an invalid JSON answer (first
    /// bytes quoted), an oversized answer, an answer `{"error": "..."}`.
    #[error("{message}")]
    Fatal {
        /// What happened, escaped and bounded.
        message: String,
    },
    /// The caller's `cancel` fired: the call was stopped and its processes reaped.
    #[error("cancelled")]
    Cancelled,
}

/// A step's configuration that cannot work, found when building it (a start-up error).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("key \"{key}\": {message}")]
pub struct StepConfigError {
    /// The key of the step's table at fault: `program`, `url`, `headers.Authorization`, ...
    pub key: String,
    /// What is wrong with it.
    pub message: String,
}

/// One configured step, ready to call. Clone is cheap (an `Arc` inside); a pool's processes are
/// shared by clones and terminated when the last clone is dropped.
#[derive(Clone)]
pub struct Step {
    runner: Arc<Runner>,
}

/// What runs a step's calls.
enum Runner {
    Command(command::CommandConfig),
    Pool(pool::Pool),
    Http(http::HttpStep),
    // Boxed: its compiled schemas make it several times larger than the other runners.
    Llm(Box<llm::LlmStep>),
}

impl Step {
    /// Builds a step from its spec; `base_dir` (the kinds file's directory) resolves a relative
    /// `program`, `cwd` and `ca_file`. Checks: the program is found (absolute, relative to
    /// `base_dir`, or on `PATH`), `cwd` is a directory, the URL parses and is http/https, the
    /// environment variables named by `headers_from_env` and `signing_secret_env` are set,
    /// header names and values are valid, numbers are in range.
    ///
    /// # Errors
    /// [`StepConfigError`] naming the key at fault; a `builtin` spec is always an error here
    /// (the kinds-file layer delegates those to the registry).
    pub fn build(spec: &StepSpec, base_dir: &Path) -> Result<Step, StepConfigError> {
        let runner = match spec {
            StepSpec::Command(command_spec) => {
                let config = command::CommandConfig::build(command_spec, base_dir)?;
                match command_spec.mode {
                    CommandMode::Call => {
                        if command_spec.pool_size.is_some() {
                            return Err(command::config_error(
                                "pool_size",
                                "only for mode = \"pool\"",
                            ));
                        }
                        Runner::Command(config)
                    }
                    CommandMode::Pool => {
                        let size = command_spec.pool_size.unwrap_or(spec::DEFAULT_POOL_SIZE);
                        if size == 0 || size > spec::MAX_POOL_SIZE {
                            return Err(command::config_error(
                                "pool_size",
                                format!("{size} is out of range (1 ..= {})", spec::MAX_POOL_SIZE),
                            ));
                        }
                        Runner::Pool(pool::Pool::new(config, size))
                    }
                }
            }
            StepSpec::Http(http_spec) => Runner::Http(http::HttpStep::build(http_spec, base_dir)?),
            StepSpec::Llm(_) => {
                return Err(command::config_error(
                    "type",
                    "an llm step needs the file's models (Step::build_llm)",
                ))
            }
            StepSpec::Builtin(_) => {
                return Err(command::config_error(
                    "type",
                    "a builtin step is run by its Rust kind, not as an external step",
                ))
            }
        };
        Ok(Step {
            runner: Arc::new(runner),
        })
    }

    /// Builds an `llm` step: its model from `catalog` (the file's `[models]`), its templates
    /// parsed; `worker_types` are the kind's handler types (what a plan may name).
    ///
    /// # Errors
    /// [`StepConfigError`] naming `model`, `system` or `prompt`.
    pub fn build_llm(
        spec: &LlmSpec,
        catalog: &llm::Catalog,
        worker_types: &[String],
    ) -> Result<Step, StepConfigError> {
        Ok(Step {
            runner: Arc::new(Runner::Llm(Box::new(llm::LlmStep::build(
                spec,
                catalog,
                worker_types,
            )?))),
        })
    }

    /// Sends `request` (a JSON document, UTF-8 bytes) and returns the answer (valid JSON bytes,
    /// at most `limits.max_answer_bytes`). Stops at the smaller of `limits.timeout` and the
    /// step's `timeout_ms`, or when `cancel` fires: the process group is terminated (SIGTERM,
    /// grace, SIGKILL) and reaped (command and pool), the HTTP request dropped. The usage of a
    /// call that fails is lost; [`Step::call_metered`] keeps it.
    ///
    /// # Errors
    /// [`StepError`], classified as the failure classes say (see docs/kinds.md#steps).
    pub async fn call(
        &self,
        request: &[u8],
        limits: CallLimits,
        cancel: &CancellationToken,
    ) -> Result<Vec<u8>, StepError> {
        self.call_metered(request, limits, cancel, &UsageMeter::default())
            .await
    }

    /// [`Step::call`], with what a FAILED call used recorded in `usage`: the `usage` of an
    /// `{"error": ...}` answer, and the model calls an `llm` step made before it failed, was
    /// cancelled or refused a call over the request's `budget` (docs/kinds.md#usage). A
    /// successful answer carries its own `usage`, for the caller to read; nothing of it goes
    /// to `usage`, so nothing is counted twice.
    ///
    /// # Errors
    /// As [`Step::call`].
    pub async fn call_metered(
        &self,
        request: &[u8],
        limits: CallLimits,
        cancel: &CancellationToken,
        usage: &UsageMeter,
    ) -> Result<Vec<u8>, StepError> {
        let max = limits.max_answer_bytes;
        match &*self.runner {
            Runner::Command(config) => {
                let timeout = limits.timeout.min(config.timeout);
                command::call(config, request, timeout, max, cancel, usage).await
            }
            Runner::Pool(pool) => {
                let timeout = limits.timeout.min(pool.config().timeout);
                pool.call(request, timeout, max, cancel, usage).await
            }
            Runner::Http(step) => {
                let timeout = limits.timeout.min(step.timeout());
                step.call(request, timeout, max, cancel, usage).await
            }
            Runner::Llm(step) => step.call(request, limits.timeout, max, cancel, usage).await,
        }
    }

    /// One line describing the step for `chorus kinds`: `command python3 stats.py (pool of 4)`,
    /// `http https://...`.
    pub fn describe(&self) -> String {
        match &*self.runner {
            Runner::Command(config) => describe_command(config),
            Runner::Pool(pool) => {
                format!(
                    "{} (pool of {})",
                    describe_command(pool.config()),
                    pool.size()
                )
            }
            Runner::Http(step) => step.describe(),
            Runner::Llm(step) => step.describe(),
        }
    }

    /// Orderly stop: terminates and reaps a pool's idle processes (a no-op for other steps).
    /// Calls made afterwards start new processes.
    pub async fn shutdown(&self) {
        if let Runner::Pool(pool) = &*self.runner {
            pool.shutdown().await;
        }
    }
}

/// `command <program> <args...>`, each escaped.
fn describe_command(config: &command::CommandConfig) -> String {
    let launch = &config.launch;
    let mut line = format!(
        "command {}",
        crate::text::bounded(&launch.program.to_string_lossy(), 200)
    );
    for arg in &launch.args {
        line.push(' ');
        line.push_str(&crate::text::bounded(arg, 200));
    }
    line
}
