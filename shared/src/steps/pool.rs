//! A `command` step in pool mode: up to `pool_size` long-lived processes, started on first use,
//! speaking JSON Lines (one request per line on stdin, one answer per line on stdout), one call
//! at a time per process. A process that dies, times out, is cancelled or answers garbage is
//! terminated, reaped and replaced by a new one on a later call.

use std::sync::{Mutex, PoisonError};
use std::time::Duration;

use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::process::{ChildStdin, ChildStdout};
use tokio::sync::Semaphore;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use super::command::{self, CommandConfig};
use super::process::{self, StepProcess};
use super::{answer, StepError};
use crate::usage::UsageMeter;

/// One pool process with its pipes.
struct Member {
    process: StepProcess,
    stdin: ChildStdin,
    stdout: BufReader<ChildStdout>,
}

/// The processes of one pool-mode step.
pub struct Pool {
    config: CommandConfig,
    size: usize,
    /// One permit per process that may exist: a call holds one while it uses a process.
    permits: Semaphore,
    /// Processes waiting for a call.
    idle: Mutex<Vec<Member>>,
}

/// How a line exchange with a pool process ended.
enum Line {
    /// A whole line (without its end).
    Answer(Vec<u8>),
    /// The line went past the limit: what was read of it.
    Oversized(Vec<u8>),
    /// Stdout closed (or the pipe broke) before a whole line: the process is ending.
    Ended,
}

impl Pool {
    /// A pool of `size` processes of `config`, none started yet.
    pub fn new(config: CommandConfig, size: usize) -> Pool {
        Pool {
            config,
            size,
            permits: Semaphore::new(size),
            idle: Mutex::new(Vec::new()),
        }
    }

    /// How many processes the pool may run.
    pub fn size(&self) -> usize {
        self.size
    }

    /// The settings of its processes.
    pub fn config(&self) -> &CommandConfig {
        &self.config
    }

    /// Runs one call on an idle process (starting one when none is idle and the pool is not
    /// full; waiting otherwise). `timeout` covers the wait for a process too. The `usage` of an
    /// `{"error": ...}` answer goes to `usage`.
    ///
    /// # Errors
    /// [`StepError`] as docs/kinds.md#steps classifies it.
    pub async fn call(
        &self,
        request: &[u8],
        timeout: Duration,
        max_answer_bytes: usize,
        cancel: &CancellationToken,
        usage: &UsageMeter,
    ) -> Result<Vec<u8>, StepError> {
        let what = &self.config.what;
        let deadline = Instant::now() + timeout;
        let _permit = tokio::select! {
            biased;
            () = cancel.cancelled() => return Err(StepError::Cancelled),
            () = tokio::time::sleep_until(deadline) => return Err(StepError::Retryable {
                message: format!("{what}: no pool process free within {} ms", timeout.as_millis()),
                retry_after: None,
            }),
            permit = self.permits.acquire() => permit.map_err(|_| StepError::Cancelled)?,
        };
        let mut member = match self.take_idle() {
            Some(member) => member,
            None => self.start().await?,
        };
        let line = tokio::select! {
            biased;
            () = cancel.cancelled() => None,
            () = tokio::time::sleep_until(deadline) => None,
            line = exchange(&mut member, request, max_answer_bytes) => Some(line),
        };
        match line {
            None => {
                let grace = self.config.grace;
                Err(command::stop(&mut member.process, grace, timeout, cancel, what).await)
            }
            Some(Line::Oversized(head)) => {
                member.process.terminate(self.config.grace).await;
                Err(answer::oversized(what, max_answer_bytes, &head))
            }
            Some(Line::Ended) => Err(self.ended(member).await),
            Some(Line::Answer(bytes)) => {
                match answer::inspect(bytes, max_answer_bytes, what, usage) {
                    Ok(bytes) => {
                        self.put_back(member);
                        Ok(bytes)
                    }
                    Err(answer::Rejected { error, json }) => {
                        if json {
                            // A step-reported failure: the process itself is fine.
                            self.put_back(member);
                        } else {
                            member.process.terminate(self.config.grace).await;
                        }
                        Err(error)
                    }
                }
            }
        }
    }

    /// Terminates and reaps the idle processes (an orderly stop); processes busy in a call
    /// come back idle when it ends and are stopped by the next `shutdown` or when the step is
    /// dropped.
    pub async fn shutdown(&self) {
        let members =
            std::mem::take(&mut *self.idle.lock().unwrap_or_else(PoisonError::into_inner));
        let grace = self.config.grace;
        futures::future::join_all(members.into_iter().map(|mut member| async move {
            member.process.terminate(grace).await;
        }))
        .await;
    }

    /// Starts a new pool process.
    async fn start(&self) -> Result<Member, StepError> {
        let what = &self.config.what;
        let mut process = process::spawn(&self.config.launch)
            .await
            .map_err(|error| command::spawn_error(what, &error))?;
        let pipes = (process.child.stdin.take(), process.child.stdout.take());
        let (Some(stdin), Some(stdout)) = pipes else {
            return Err(StepError::Retryable {
                message: format!("{what}: its pipes could not be opened"),
                retry_after: None,
            });
        };
        tracing::debug!(step = %what, pid = ?process.child.id(), "started a pool process");
        Ok(Member {
            process,
            stdin,
            stdout: BufReader::new(stdout),
        })
    }

    /// The error of a process whose stdout ended: how it exited (waiting up to the grace for
    /// it, then terminating it), with its stderr tail.
    async fn ended(&self, mut member: Member) -> StepError {
        let what = &self.config.what;
        let status =
            match tokio::time::timeout(self.config.grace, member.process.child.wait()).await {
                Ok(Ok(status)) => Some(status),
                _ => member.process.terminate(self.config.grace).await,
            };
        member.process.signal_group(rustix::process::Signal::KILL);
        match status {
            Some(status) => command::exit_error(&mut member.process, status, what).await,
            None => StepError::Retryable {
                message: format!("{what}: the pool process closed its output"),
                retry_after: None,
            },
        }
    }

    /// An idle process that is still running; one that ended while idle (killed by the OOM
    /// killer, say) is dropped, so the call does not fail for it.
    fn take_idle(&self) -> Option<Member> {
        let mut idle = self.idle.lock().unwrap_or_else(PoisonError::into_inner);
        while let Some(mut member) = idle.pop() {
            if let Ok(None) = member.process.child.try_wait() {
                return Some(member);
            }
            tracing::debug!(step = %self.config.what, "a pool process ended while idle");
        }
        None
    }

    fn put_back(&self, member: Member) {
        self.idle
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .push(member);
    }
}

/// Writes `request` as one line and reads one line back, at most `max` bytes.
async fn exchange(member: &mut Member, request: &[u8], max: usize) -> Line {
    let mut line = Vec::with_capacity(request.len() + 1);
    // Raw line breaks in JSON can only be whitespace between tokens (inside strings they are
    // escaped), so a pretty-printed request becomes one line without changing its meaning.
    line.extend(
        request
            .iter()
            .map(|&b| if b == b'\n' || b == b'\r' { b' ' } else { b }),
    );
    line.push(b'\n');
    if member.stdin.write_all(&line).await.is_err() || member.stdin.flush().await.is_err() {
        return Line::Ended;
    }
    read_line(&mut member.stdout, max).await
}

/// One line of `stdout` (a trailing `\r` dropped), or where it ended instead.
async fn read_line(stdout: &mut BufReader<ChildStdout>, max: usize) -> Line {
    let mut line = Vec::new();
    loop {
        let Ok(buf) = stdout.fill_buf().await else {
            return Line::Ended;
        };
        if buf.is_empty() {
            return Line::Ended;
        }
        if let Some(end) = buf.iter().position(|&b| b == b'\n') {
            line.extend_from_slice(&buf[..end]);
            stdout.consume(end + 1);
            if line.last() == Some(&b'\r') {
                line.pop();
            }
            return if line.len() > max {
                Line::Oversized(line)
            } else {
                Line::Answer(line)
            };
        }
        let len = buf.len();
        line.extend_from_slice(buf);
        stdout.consume(len);
        if line.len() > max.saturating_add(1) {
            return Line::Oversized(line);
        }
    }
}
