//! The processes of command steps: spawned in a process group of their own with a cleared
//! environment, the parent-death signal set, stderr kept as a bounded tail; terminated as a
//! group (SIGTERM, a grace, SIGKILL) and reaped, so no orphan or zombie outlives a call.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::process::{ExitStatus, Stdio};
use std::sync::{mpsc, Arc, Mutex, OnceLock, PoisonError};
use std::time::Duration;

use rustix::process::{kill_process_group, Pid, Signal};
use tokio::io::AsyncReadExt;
use tokio::process::{Child, ChildStderr, Command};
use tokio::task::JoinHandle;

/// Bytes of a process's stderr kept for its error messages (the last ones).
pub const STDERR_TAIL_BYTES: usize = 2048;

/// The longest an error waits for the rest of a finished process's stderr (a grandchild may hold
/// it open).
const STDERR_SETTLE: Duration = Duration::from_millis(200);

/// Exit code a step uses to ask for another attempt (`EX_TEMPFAIL`, sysexits.h).
pub const EX_TEMPFAIL: i32 = 75;

/// Variables of the service's environment a step inherits; everything else is cleared, so the
/// service's secrets (broker and Redis URLs, signing secrets) never reach a step by accident.
/// `LC_*` variables are passed too.
pub const PASSED_ENV: &[&str] = &["PATH", "HOME", "LANG", "TZ"];

/// What is needed to start one process of a command step.
#[derive(Debug, Clone)]
pub struct Launch {
    /// The resolved program path.
    pub program: PathBuf,
    /// Its arguments.
    pub args: Vec<String>,
    /// Its working directory.
    pub cwd: PathBuf,
    /// The variables added to the passed-through environment.
    pub env: BTreeMap<String, String>,
}

/// The rolling tail of a process's stderr, filled by a task reading it.
#[derive(Debug, Clone, Default)]
pub struct StderrTail(Arc<Mutex<Vec<u8>>>);

impl StderrTail {
    /// Starts reading `stderr` into a new tail until it closes.
    fn follow(stderr: ChildStderr) -> (StderrTail, JoinHandle<()>) {
        let tail = StderrTail::default();
        let sink = tail.clone();
        let reader = tokio::spawn(async move {
            let mut stderr = stderr;
            let mut buf = [0_u8; 4096];
            while let Ok(n) = stderr.read(&mut buf).await {
                if n == 0 {
                    break;
                }
                sink.push(&buf[..n]);
            }
        });
        (tail, reader)
    }

    fn push(&self, bytes: &[u8]) {
        let mut kept = self.0.lock().unwrap_or_else(PoisonError::into_inner);
        kept.extend_from_slice(bytes);
        let excess = kept.len().saturating_sub(STDERR_TAIL_BYTES);
        kept.drain(..excess);
    }

    /// `; stderr: "..."`, the tail (lossy UTF-8) with control characters escaped, or nothing
    /// when stderr was empty.
    pub fn suffix(&self) -> String {
        let kept = self.0.lock().unwrap_or_else(PoisonError::into_inner);
        let text = String::from_utf8_lossy(&kept);
        let text = text.trim();
        if text.is_empty() {
            String::new()
        } else {
            let text = crate::text::bounded(text, STDERR_TAIL_BYTES + 64);
            format!("; stderr: \"{text}\"")
        }
    }
}

/// A spawned step process: stdin and stdout piped to us, stderr followed into a tail.
pub struct StepProcess {
    /// The child; its pid is also its process group's id.
    pub child: Child,
    /// Its stderr tail.
    pub stderr: StderrTail,
    /// Its process group id (= its pid), kept after the child is reaped.
    pub pgid: Option<Pid>,
    /// The task filling `stderr`, done when stderr closes.
    stderr_reader: Option<JoinHandle<()>>,
}

/// A spawn request for the spawner thread.
type SpawnJob = (
    Command,
    tokio::runtime::Handle,
    tokio::sync::oneshot::Sender<std::io::Result<Child>>,
);

/// The long-lived thread every step process is forked from. The parent-death signal fires when
/// the THREAD that forked the child exits (prctl(2)), and tokio's blocking threads exit when idle,
/// so a pool process forked from one would be killed seconds after its call.
fn spawner() -> &'static Mutex<mpsc::Sender<SpawnJob>> {
    static SPAWNER: OnceLock<Mutex<mpsc::Sender<SpawnJob>>> = OnceLock::new();
    SPAWNER.get_or_init(|| {
        let (tx, rx) = mpsc::channel::<SpawnJob>();
        let _ = std::thread::Builder::new()
            .name("chorus-step-spawner".into())
            .spawn(move || {
                for (mut command, handle, reply) in rx {
                    let _entered = handle.enter();
                    let _ = reply.send(command.spawn());
                }
            });
        Mutex::new(tx)
    })
}

/// Starts one process of `launch`: no shell, cleared environment plus [`PASSED_ENV`] and `LC_*`
/// plus `launch.env`, its own process group, SIGKILL on the service's death (Linux only).
///
/// # Errors
/// The OS error of the spawn (program vanished since start-up, not executable, ...).
pub async fn spawn(launch: &Launch) -> std::io::Result<StepProcess> {
    let mut command = Command::new(&launch.program);
    command
        .args(&launch.args)
        .current_dir(&launch.cwd)
        .env_clear()
        .envs(std::env::vars_os().filter(|(name, _)| {
            let name = name.to_string_lossy();
            PASSED_ENV.contains(&name.as_ref()) || name.starts_with("LC_")
        }))
        .envs(&launch.env)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .process_group(0);
    super::pdeathsig::set_on(&mut command);
    let (reply, answer) = tokio::sync::oneshot::channel();
    let sent = spawner()
        .lock()
        .unwrap_or_else(PoisonError::into_inner)
        .send((command, tokio::runtime::Handle::current(), reply));
    if sent.is_err() {
        return Err(std::io::Error::other("the step spawner thread is gone"));
    }
    let mut child = answer
        .await
        .map_err(|_| std::io::Error::other("the step spawner thread is gone"))??;
    let pgid = child
        .id()
        .and_then(|id| i32::try_from(id).ok())
        .and_then(Pid::from_raw);
    let (stderr, stderr_reader) = match child.stderr.take() {
        Some(stderr) => {
            let (tail, reader) = StderrTail::follow(stderr);
            (tail, Some(reader))
        }
        None => (StderrTail::default(), None),
    };
    Ok(StepProcess {
        child,
        stderr,
        pgid,
        stderr_reader,
    })
}

impl StepProcess {
    /// Terminates the whole process group — SIGTERM, up to `grace` for the leader to exit,
    /// then SIGKILL to whatever is left of the group — and reaps the leader. Returns its exit
    /// status when it could be read.
    pub async fn terminate(&mut self, grace: Duration) -> Option<ExitStatus> {
        self.signal_group(Signal::TERM);
        let status = match tokio::time::timeout(grace, self.child.wait()).await {
            Ok(status) => status.ok(),
            Err(_) => None,
        };
        // Grandchildren that ignored SIGTERM keep the group (and its id) alive, so this cannot
        // reach an unrelated group.
        self.signal_group(Signal::KILL);
        match status {
            Some(status) => Some(status),
            None => self.child.wait().await.ok(),
        }
    }

    /// Waits a little (at most [`STDERR_SETTLE`]) for the last of stderr after the process
    /// ended, so its error carries what it wrote last.
    pub async fn settle_stderr(&mut self) {
        if let Some(reader) = self.stderr_reader.as_mut() {
            let _ = tokio::time::timeout(STDERR_SETTLE, reader).await;
        }
    }

    /// Sends `signal` to the process group; a group already gone is not an error.
    pub fn signal_group(&self, signal: Signal) {
        if let Some(pgid) = self.pgid {
            let _ = kill_process_group(pgid, signal);
        }
    }
}

impl Drop for StepProcess {
    /// A process dropped without [`StepProcess::terminate`] (its step was dropped, its call's
    /// future too) is killed with its group; tokio reaps a dropped child in the background.
    fn drop(&mut self) {
        self.signal_group(Signal::KILL);
        if let Some(reader) = self.stderr_reader.take() {
            reader.abort();
        }
    }
}

/// How an exit status reads in an error, and whether another attempt may help: killed by a
/// signal or exit 75 ([`EX_TEMPFAIL`]) is retryable, any other non-zero exit fatal.
pub fn describe_exit(status: ExitStatus) -> (String, bool) {
    use std::os::unix::process::ExitStatusExt;
    if let Some(code) = status.code() {
        (format!("exited with code {code}"), code == EX_TEMPFAIL)
    } else if let Some(signal) = status.signal() {
        (format!("killed by signal {signal}"), true)
    } else {
        ("ended with an unknown status".to_owned(), true)
    }
}
