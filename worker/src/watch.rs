//! Which tasks are over: a subtask of a finished, cancelled or timed-out task is dropped instead
//! of run, and the handlers still running for such a task see their cancellation token. Redis
//! is asked at most once a second per task, so a task of 100,000 subtasks costs one lookup a
//! second, not one per subtask; subtasks of a task that arrive together share one lookup. A
//! subtask published less than a second ago by a service that had just found its task
//! unfinished (it says when in a header) needs no lookup at all. The same poll marks the tasks
//! whose subtasks this worker holds (running or waiting for a handler slot) in Redis, so the
//! sweeper does not take them for lost.

use std::{
    collections::HashMap,
    sync::{Arc, Mutex, MutexGuard},
    time::{Duration, Instant},
};

use chorus_shared::{clock::now_ms, error::StoreError, store::Store};
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

/// How stale the knowledge that a task is still live may be.
const FRESHNESS: Duration = Duration::from_secs(1);
/// How often running handlers' tasks are looked at.
const POLL: Duration = Duration::from_millis(500);
/// Entries of tasks with nothing running are forgotten after this long.
const FORGET_AFTER: Duration = Duration::from_secs(30);
/// How long a task's held mark lasts unless the poll renews it: ten polls, so a poll delayed
/// by a busy host does not let it lapse, and a killed worker's mark is gone within seconds.
const HELD_TTL: Duration = Duration::from_secs(5);

struct Watched {
    /// Cancelled when the task is seen over.
    token: CancellationToken,
    /// Handlers of the task running now.
    running: usize,
    /// Deliveries of the task this worker holds (unacked), started or not.
    held: usize,
    /// When the task was last seen live (or over).
    checked: Instant,
    live: bool,
}

/// What the watch knows, under one lock.
#[derive(Default)]
struct Known {
    tasks: HashMap<String, Watched>,
    /// Lookups in flight, by task: the answer (`Some(live)`) is sent to everyone who asked
    /// meanwhile; a lookup that fails or is dropped closes its channel instead.
    lookups: HashMap<String, watch::Receiver<Option<bool>>>,
}

impl Known {
    /// The entry of `task`, made (live, checked at `checked`) if there is none.
    fn watched(&mut self, task: &str, checked: Instant) -> &mut Watched {
        self.tasks
            .entry(task.to_owned())
            .or_insert_with(|| Watched {
                token: CancellationToken::new(),
                running: 0,
                held: 0,
                checked,
                live: true,
            })
    }
}

/// Liveness of tasks, shared by all handlers of a worker process.
pub struct TaskWatch {
    store: Store,
    known: Mutex<Known>,
}

/// Whether a caller of [`TaskWatch::is_live`] waits for a lookup in flight or makes it.
enum Turn {
    Wait(watch::Receiver<Option<bool>>),
    LookUp(watch::Sender<Option<bool>>),
}

/// The one lookup of a task in flight; ends it when dropped, however the lookup went.
struct Lookup<'a> {
    watch: &'a TaskWatch,
    task: &'a str,
    answer: watch::Sender<Option<bool>>,
}

impl Drop for Lookup<'_> {
    fn drop(&mut self) {
        self.watch.lock().lookups.remove(self.task);
    }
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

/// When, on this process's clock, a task stamped live at `at_ms` (ms since the Unix epoch, the
/// publisher's clock) was seen live, if that is less than [`FRESHNESS`] ago. A stamp from the
/// future (clocks a little apart) counts as now; one from further than [`FRESHNESS`] ahead is
/// not trusted: the clocks are too far apart.
fn seen_live_at(at_ms: u64, now_ms: u64) -> Option<Instant> {
    let freshness = u64::try_from(FRESHNESS.as_millis()).unwrap_or(u64::MAX);
    if at_ms >= now_ms.saturating_add(freshness) {
        return None;
    }
    let age = now_ms.saturating_sub(at_ms);
    if age >= freshness {
        return None;
    }
    Instant::now().checked_sub(Duration::from_millis(age))
}

/// A delivery of a task held by this worker, from its decoding to its ack.
pub struct Held {
    watch: Arc<TaskWatch>,
    task: String,
}

impl Drop for Held {
    fn drop(&mut self) {
        if let Some(watched) = self.watch.lock().tasks.get_mut(&self.task) {
            watched.held = watched.held.saturating_sub(1);
        }
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        if let Some(watched) = self.watch.lock().tasks.get_mut(&self.task) {
            watched.running = watched.running.saturating_sub(1);
        }
    }
}

impl TaskWatch {
    /// Starts watching; the poller stops with `shutdown`.
    pub fn start(store: Store, shutdown: CancellationToken) -> Arc<Self> {
        let watch = Arc::new(Self {
            store,
            known: Mutex::new(Known::default()),
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

    fn lock(&self) -> MutexGuard<'_, Known> {
        match self.known.lock() {
            Ok(guard) => guard,
            Err(poisoned) => poisoned.into_inner(),
        }
    }

    /// Whether `task` may still run subtasks (no outcome yet), at most a second stale.
    /// `live_at_ms` is when the message's publisher last found the task unfinished, if it says:
    /// within the last second, that is taken as a fresh lookup. Otherwise the subtasks of a
    /// task that arrive while it is being looked up wait for that lookup, so that they start,
    /// and their results go out, together.
    ///
    /// # Errors
    /// Redis fails.
    pub async fn is_live(&self, task: &str, live_at_ms: Option<u64>) -> Result<bool, StoreError> {
        if let Some(seen) = live_at_ms.and_then(|at| seen_live_at(at, now_ms())) {
            return Ok(self.seen_live(task, seen));
        }
        loop {
            let waiting = {
                let mut known = self.lock();
                if let Some(watched) = known.tasks.get(task) {
                    if !watched.live || watched.checked.elapsed() < FRESHNESS {
                        return Ok(watched.live);
                    }
                }
                match known.lookups.get(task) {
                    Some(answer) => Turn::Wait(answer.clone()),
                    None => {
                        let (answer, receiver) = watch::channel(None);
                        known.lookups.insert(task.to_owned(), receiver);
                        Turn::LookUp(answer)
                    }
                }
            };
            let mut answer = match waiting {
                Turn::Wait(answer) => answer,
                Turn::LookUp(answer) => {
                    let lookup = Lookup {
                        watch: self,
                        task,
                        answer,
                    };
                    return self.look_up(lookup).await;
                }
            };
            // A lookup that failed closes the channel: this caller then tries one of its own.
            let answered = answer
                .wait_for(Option::is_some)
                .await
                .ok()
                .and_then(|live| *live);
            if let Some(live) = answered {
                return Ok(live);
            }
        }
    }

    async fn look_up(&self, lookup: Lookup<'_>) -> Result<bool, StoreError> {
        let over = self
            .store
            .finished(&[lookup.task.to_owned()])
            .await?
            .first()
            .copied()
            .unwrap_or(false);
        self.note(lookup.task, !over);
        lookup.answer.send_replace(Some(!over));
        Ok(!over)
    }

    /// Notes that `task` was live at `seen`, unless it is already known over; answers whether
    /// it is live.
    fn seen_live(&self, task: &str, seen: Instant) -> bool {
        let mut known = self.lock();
        let watched = known.watched(task, seen);
        if watched.live && watched.checked < seen {
            watched.checked = seen;
        }
        watched.live
    }

    fn note(&self, task: &str, live: bool) {
        let mut known = self.lock();
        let now = Instant::now();
        let watched = known.watched(task, now);
        watched.checked = now;
        watched.live = live;
        if !live && !watched.token.is_cancelled() {
            // One line per task and process, however many of its subtasks stop or are dropped.
            if watched.running > 0 {
                tracing::info!(%task, running = watched.running, "task is over; stopping its running handlers and dropping its queued subtasks");
            }
            watched.token.cancel();
        }
    }

    /// Registers a running handler of `task`; its token is cancelled when the task is over.
    pub fn enter(self: &Arc<Self>, task: &str) -> Running {
        let mut known = self.lock();
        let watched = known.watched(task, Instant::now());
        watched.running += 1;
        let token = watched.token.child_token();
        Running {
            watch: Arc::clone(self),
            task: task.to_owned(),
            token,
        }
    }

    /// Registers a delivery of `task` that this worker holds until the guard is dropped (at its
    /// ack): the task is marked held in Redis while any is.
    pub fn hold(self: &Arc<Self>, task: &str) -> Held {
        let mut known = self.lock();
        known.watched(task, Instant::now()).held += 1;
        Held {
            watch: Arc::clone(self),
            task: task.to_owned(),
        }
    }

    /// Looks up the tasks with running handlers and cancels those that are over, marks the
    /// tasks held (in the same round trip, pipelined); forgets idle entries.
    async fn poll(&self) -> Result<(), StoreError> {
        let (busy, held): (Vec<String>, Vec<String>) = {
            let mut known = self.lock();
            let tasks = &mut known.tasks;
            tasks.retain(|_, w| w.running > 0 || w.held > 0 || w.checked.elapsed() < FORGET_AFTER);
            let live = || tasks.iter().filter(|(_, w)| w.live);
            (
                live()
                    .filter(|(_, w)| w.running > 0)
                    .map(|(task, _)| task.clone())
                    .collect(),
                live()
                    .filter(|(_, w)| w.held > 0)
                    .map(|(task, _)| task.clone())
                    .collect(),
            )
        };
        let (over, marked) =
            tokio::join!(self.store.finished(&busy), self.store.hold(&held, HELD_TTL));
        if let Err(error) = marked {
            tracing::debug!(%error, "cannot mark the tasks this worker holds");
        }
        let over = over?;
        for (task, over) in busy.iter().zip(over) {
            self.note(task, !over);
        }
        Ok(())
    }
}
