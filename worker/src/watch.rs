//! Which tasks are over: a subtask of a finished, cancelled or timed-out task is dropped instead
//! of run, and the handlers still running for such a task see their cancellation token. Redis
//! is asked at most once a second per task, so a task of 100,000 subtasks costs one lookup a
//! second, not one per subtask.

use std::{
    collections::HashMap,
    sync::{Arc, Mutex, MutexGuard},
    time::{Duration, Instant},
};

use chorus_shared::{error::StoreError, store::Store};
use tokio_util::sync::CancellationToken;

/// How stale the knowledge that a task is still live may be.
const FRESHNESS: Duration = Duration::from_secs(1);
/// How often running handlers' tasks are looked at.
const POLL: Duration = Duration::from_millis(500);
/// Entries of tasks with nothing running are forgotten after this long.
const FORGET_AFTER: Duration = Duration::from_secs(30);

struct Watched {
    /// Cancelled when the task is seen over.
    token: CancellationToken,
    /// Handlers of the task running now.
    running: usize,
    /// When the task was last seen live (or over).
    checked: Instant,
    live: bool,
}

/// Liveness of tasks, shared by all handlers of a worker process.
pub struct TaskWatch {
    store: Store,
    tasks: Mutex<HashMap<String, Watched>>,
}

/// A running handler's hold on its task's token.
pub struct Running {
    watch: Arc<TaskWatch>,
    task: String,
    token: CancellationToken,
}

impl Running {
    /// Cancelled when the task is over.
    pub fn token(&self) -> &CancellationToken {
        &self.token
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        if let Some(watched) = self.watch.lock().get_mut(&self.task) {
            watched.running = watched.running.saturating_sub(1);
        }
    }
}

impl TaskWatch {
    /// Starts watching; the poller stops with `shutdown`.
    pub fn start(store: Store, shutdown: CancellationToken) -> Arc<Self> {
        let watch = Arc::new(Self {
            store,
            tasks: Mutex::new(HashMap::new()),
        });
        let poller = Arc::clone(&watch);
        tokio::spawn(async move {
            loop {
                tokio::select! {
                    () = shutdown.cancelled() => return,
                    () = tokio::time::sleep(POLL) => {}
                }
                if let Err(error) = poller.poll().await {
                    tracing::debug!(%error, "cannot check whether running tasks are over");
                }
            }
        });
        watch
    }

    fn lock(&self) -> MutexGuard<'_, HashMap<String, Watched>> {
        match self.tasks.lock() {
            Ok(guard) => guard,
            Err(poisoned) => poisoned.into_inner(),
        }
    }

    /// Whether `task` may still run subtasks (no outcome yet), at most a second stale.
    ///
    /// # Errors
    /// Redis fails.
    pub async fn is_live(&self, task: &str) -> Result<bool, StoreError> {
        if let Some(watched) = self.lock().get(task) {
            if !watched.live || watched.checked.elapsed() < FRESHNESS {
                return Ok(watched.live);
            }
        }
        let over = self
            .store
            .finished(&[task.to_owned()])
            .await?
            .first()
            .copied()
            .unwrap_or(false);
        self.note(task, !over);
        Ok(!over)
    }

    fn note(&self, task: &str, live: bool) {
        let mut tasks = self.lock();
        let watched = tasks.entry(task.to_owned()).or_insert_with(|| Watched {
            token: CancellationToken::new(),
            running: 0,
            checked: Instant::now(),
            live,
        });
        watched.checked = Instant::now();
        watched.live = live;
        if !live {
            watched.token.cancel();
        }
    }

    /// Registers a running handler of `task`; its token is cancelled when the task is over.
    pub fn enter(self: &Arc<Self>, task: &str) -> Running {
        let mut tasks = self.lock();
        if !tasks.contains_key(task) {
            tasks.insert(
                task.to_owned(),
                Watched {
                    token: CancellationToken::new(),
                    running: 0,
                    checked: Instant::now(),
                    live: true,
                },
            );
        }
        let token = match tasks.get_mut(task) {
            Some(watched) => {
                watched.running += 1;
                watched.token.child_token()
            }
            None => CancellationToken::new(),
        };
        Running {
            watch: Arc::clone(self),
            task: task.to_owned(),
            token,
        }
    }

    /// Looks up the tasks with running handlers and cancels those that are over; forgets idle
    /// entries.
    async fn poll(&self) -> Result<(), StoreError> {
        let busy: Vec<String> = {
            let mut tasks = self.lock();
            tasks.retain(|_, w| w.running > 0 || w.checked.elapsed() < FORGET_AFTER);
            tasks
                .iter()
                .filter(|(_, w)| w.running > 0 && w.live)
                .map(|(task, _)| task.clone())
                .collect()
        };
        let over = self.store.finished(&busy).await?;
        for (task, over) in busy.iter().zip(over) {
            self.note(task, !over);
        }
        Ok(())
    }
}
