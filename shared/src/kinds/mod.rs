//! Kinds: what a task does, as a Rust API. A kind plans a task into subtasks, handles one
//! subtask, and synthesizes the results; the [`Registry`] maps kind names to kinds and is shared
//! by all three services.
//!
//! Implement [`Kind`] with your own types; the registry erases them to MessagePack bytes so the
//! services never need to know them.

pub mod range_sum;
pub mod report;
pub mod wordfreq;

use std::{
    collections::HashMap,
    fmt,
    future::Future,
    sync::{Arc, Mutex},
};

use futures::future::BoxFuture;
use serde::{de::DeserializeOwned, Serialize};
use serde_bytes::ByteBuf;
use tokio_util::sync::CancellationToken;

use crate::protocol::{self, ChildSpec, PlanEntry, TaskOptions};

/// One subtask as a planner, a spawning handler or a review returns it: the kind's subtask plus
/// where it runs and what it waits for.
#[derive(Clone, Debug)]
pub struct Planned<S> {
    /// Subtask id; planners that give none get the position in the plan (`"0"`, `"1"`, ...).
    pub id: Option<String>,
    /// Worker type that runs it; none means `default`.
    pub worker_type: Option<String>,
    /// Subtasks that must succeed first; their outputs reach the handler as context.
    pub depends_on: Vec<String>,
    /// What to run: the kind's subtask, or a child task of another kind.
    pub work: Work<S>,
}

/// What a planned subtask runs.
#[derive(Clone, Debug)]
pub enum Work<S> {
    /// The kind's handler, on this subtask.
    Handler(S),
    /// A whole task of another kind; its outcome becomes this subtask's result (its output
    /// must decode as the parent kind's `Output`).
    Child(ChildSpec),
}

impl<S> Planned<S> {
    /// A subtask for the kind's handler, with defaults: position id, `default` worker type.
    pub fn new(subtask: S) -> Self {
        Self {
            id: None,
            worker_type: None,
            depends_on: Vec::new(),
            work: Work::Handler(subtask),
        }
    }

    /// A child task of kind `kind` with `input` (any serializable value).
    ///
    /// # Errors
    /// `input` has no MessagePack form.
    pub fn child<I: Serialize>(
        kind: impl Into<String>,
        input: &I,
        options: Option<TaskOptions>,
    ) -> Result<Self, KindError> {
        let bytes = encode_for_kind(input, "child input")?;
        let input = rmpv::decode::read_value(&mut bytes.as_slice())
            .map_err(|e| KindError::fatal(format!("child input does not re-read: {e}")))?;
        Ok(Self {
            id: None,
            worker_type: None,
            depends_on: Vec::new(),
            work: Work::Child(ChildSpec {
                kind: kind.into(),
                input,
                options,
            }),
        })
    }

    /// Names the subtask (ids must be unique within the task).
    #[must_use]
    pub fn id(mut self, id: impl Into<String>) -> Self {
        self.id = Some(id.into());
        self
    }

    /// Routes the subtask to workers of `worker_type`.
    #[must_use]
    pub fn on(mut self, worker_type: impl Into<String>) -> Self {
        self.worker_type = Some(worker_type.into());
        self
    }

    /// Makes the subtask wait until every subtask in `ids` succeeded.
    #[must_use]
    pub fn after<I: Into<String>>(mut self, ids: impl IntoIterator<Item = I>) -> Self {
        self.depends_on.extend(ids.into_iter().map(Into::into));
        self
    }
}

/// What a planner returns: subtasks in plan order.
#[derive(Clone, Debug)]
pub struct Plan<S>(pub Vec<Planned<S>>);

impl<S> Plan<S> {
    /// The handler subtasks of the plan, in order (child tasks left out).
    pub fn into_subtasks(self) -> Vec<S> {
        self.0
            .into_iter()
            .filter_map(|planned| match planned.work {
                Work::Handler(subtask) => Some(subtask),
                Work::Child(_) => None,
            })
            .collect()
    }
}

impl<S> From<Vec<S>> for Plan<S> {
    fn from(subtasks: Vec<S>) -> Self {
        Self(subtasks.into_iter().map(Planned::new).collect())
    }
}

impl<S> From<Vec<Planned<S>>> for Plan<S> {
    fn from(subtasks: Vec<Planned<S>>) -> Self {
        Self(subtasks)
    }
}

/// What a review decides after a round.
#[derive(Clone, Debug)]
pub enum Review<S> {
    /// The outputs are final: synthesize them.
    Accept,
    /// Run another round: subtasks with an existing id are redone with the new subtask (which
    /// carries the reviewer's feedback), new ids are added. Outputs of the others are kept.
    Revise(Vec<Planned<S>>),
}

/// Encodes `planned` subtasks as plan entries; one without an id gets `id_prefix` followed by
/// its position in `planned`.
///
/// # Errors
/// A subtask that has no MessagePack form.
pub fn to_entries<S: Serialize>(
    planned: Vec<Planned<S>>,
    id_prefix: &str,
    depth: u32,
) -> Result<Vec<PlanEntry>, KindError> {
    let encoded = planned
        .into_iter()
        .map(|item| {
            let work = match item.work {
                Work::Handler(subtask) => {
                    Work::Handler(ByteBuf::from(encode_for_kind(&subtask, "subtask")?))
                }
                Work::Child(spec) => Work::Child(spec),
            };
            Ok(Planned {
                id: item.id,
                worker_type: item.worker_type,
                depends_on: item.depends_on,
                work,
            })
        })
        .collect::<Result<Vec<_>, KindError>>()?;
    Ok(spawned_entries(encoded, id_prefix, depth))
}

/// Turns subtasks already encoded (what a handler spawned through [`HandlerContext::spawn`])
/// into plan entries; one without an id gets `id_prefix` followed by its position.
pub fn spawned_entries(
    spawned: Vec<Planned<ByteBuf>>,
    id_prefix: &str,
    depth: u32,
) -> Vec<PlanEntry> {
    spawned
        .into_iter()
        .enumerate()
        .map(|(offset, item)| {
            let (payload, child) = match item.work {
                Work::Handler(payload) => (payload, None),
                Work::Child(spec) => (ByteBuf::new(), Some(Box::new(spec))),
            };
            PlanEntry {
                id: item.id.unwrap_or_else(|| format!("{id_prefix}{offset}")),
                worker_type: item
                    .worker_type
                    .unwrap_or_else(|| protocol::DEFAULT_WORKER_TYPE.to_owned()),
                depends_on: item.depends_on,
                depth,
                payload,
                child,
            }
        })
        .collect()
}

/// Subtasks a handler spawned during its attempt, collected by the worker when it returns.
#[derive(Clone, Debug, Default)]
pub struct Spawned(Arc<Mutex<Vec<Planned<ByteBuf>>>>);

impl Spawned {
    /// Takes what was spawned.
    pub fn take(&self) -> Vec<Planned<ByteBuf>> {
        match self.0.lock() {
            Ok(mut spawned) => std::mem::take(&mut *spawned),
            Err(poisoned) => std::mem::take(&mut *poisoned.into_inner()),
        }
    }

    fn push(&self, planned: Planned<ByteBuf>) {
        match self.0.lock() {
            Ok(mut spawned) => spawned.push(planned),
            Err(poisoned) => poisoned.into_inner().push(planned),
        }
    }
}

/// What a handler knows about the attempt it runs, and what it can do besides returning.
#[derive(Clone, Debug, Default)]
pub struct HandlerContext {
    /// Task id.
    pub task: String,
    /// Subtask id.
    pub subtask: String,
    /// 1 for the first attempt.
    pub attempt: u32,
    /// Attempts allowed in all.
    pub max_attempts: u32,
    /// Spawn depth: 0 for planned subtasks.
    pub depth: u32,
    /// Encoded outputs of the subtasks this one depends on, in `depends_on` order.
    pub dependencies: Vec<(String, ByteBuf)>,
    /// Cancelled when the task is cancelled, fails or passes its deadline.
    pub cancel: CancellationToken,
    /// Subtasks spawned so far by this attempt.
    pub spawned: Spawned,
}

impl HandlerContext {
    /// Outputs of the dependencies, decoded as `T` (usually the kind's `Output`).
    ///
    /// # Errors
    /// An output that does not decode as `T`.
    pub fn dependency_outputs<T: DeserializeOwned>(&self) -> Result<Vec<(String, T)>, KindError> {
        self.dependencies
            .iter()
            .map(|(id, bytes)| {
                protocol::decode(bytes)
                    .map(|v| (id.clone(), v))
                    .map_err(|e| {
                        KindError::fatal(format!("output of dependency {id} does not decode: {e}"))
                    })
            })
            .collect()
    }

    /// Adds a subtask to the task, recorded with this attempt's result (only the attempt whose
    /// result is recorded spawns anything). Without an id it gets `<this id>.<n>`, `n`
    /// counting this attempt's spawns from 0.
    ///
    /// # Errors
    /// The subtask has no MessagePack form.
    pub fn spawn<S: Serialize>(&self, planned: Planned<S>) -> Result<(), KindError> {
        let work = match planned.work {
            Work::Handler(subtask) => {
                Work::Handler(ByteBuf::from(encode_for_kind(&subtask, "spawned subtask")?))
            }
            Work::Child(spec) => Work::Child(spec),
        };
        self.spawned.push(Planned {
            id: planned.id,
            worker_type: planned.worker_type,
            depends_on: planned.depends_on,
            work,
        });
        Ok(())
    }

    /// Whether the task was cancelled (or failed, or passed its deadline) meanwhile.
    pub fn is_cancelled(&self) -> bool {
        self.cancel.is_cancelled()
    }
}

/// An error from a kind's code, with whether another attempt may help.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct KindError {
    message: String,
    retryable: bool,
}

impl KindError {
    /// A failure another attempt may fix (a flaky API, a timeout).
    pub fn retryable(message: impl Into<String>) -> Self {
        Self {
            message: message.into(),
            retryable: true,
        }
    }

    /// A failure no retry will fix (invalid input, a bug).
    pub fn fatal(message: impl Into<String>) -> Self {
        Self {
            message: message.into(),
            retryable: false,
        }
    }

    /// Whether retrying may help.
    pub fn is_retryable(&self) -> bool {
        self.retryable
    }

    /// The message, for humans.
    pub fn message(&self) -> &str {
        &self.message
    }
}

impl fmt::Display for KindError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message)
    }
}

impl std::error::Error for KindError {}

/// A kind of task: planner, handler and synthesizer of one domain.
///
/// `plan`, `review` and `synthesize` run on a blocking thread, so they may read files, unless
/// the kind sets [`Kind::INLINE`]; `handle` is async and runs under the subtask's timeout (it is
/// dropped when the timeout passes).
pub trait Kind: Send + Sync + 'static {
    /// The task input, decoded from the request's `input`.
    type Input: DeserializeOwned + Send + Sync;
    /// One unit of work.
    type Subtask: Serialize + DeserializeOwned + Send;
    /// What a handler returns for one subtask.
    type Output: Serialize + DeserializeOwned + Send;
    /// The synthesized output of the task.
    type Final: Serialize;

    /// Set when `plan`, `review` and `synthesize` only compute (no file, network, lock or
    /// sleep). Their small calls then run on the orchestrator's and synthesizer's own thread
    /// instead of going to the blocking pool and back, which takes two thread wake-ups (0.05 to
    /// 0.1 ms a call on a busy machine): reviews and syntheses of at most [`INLINE_OUTPUTS`]
    /// outputs, and plans that [`Kind::small_plan`] calls small. While such a call runs, the
    /// service's other work waits.
    const INLINE: bool = false;

    /// For an [`Kind::INLINE`] kind: whether planning `input` is small work (well under a
    /// millisecond). A planner that can make thousands of subtasks answers from the input.
    fn small_plan(&self, input: &Self::Input) -> bool {
        let _ = input;
        true
    }

    /// Name that tasks give in `kind`.
    fn name(&self) -> &str;

    /// Breaks a task into subtasks; their number, ids, worker types and dependencies are up to
    /// the input. A `Vec<Self::Subtask>` converts with `.into()`.
    ///
    /// # Errors
    /// An input the kind cannot run: the task is `rejected` with this message.
    fn plan(&self, input: &Self::Input) -> Result<Plan<Self::Subtask>, KindError>;

    /// Runs one subtask.
    ///
    /// # Errors
    /// The attempt failed; retryable errors are retried until `max_attempts`.
    fn handle(
        &self,
        subtask: Self::Subtask,
        context: HandlerContext,
    ) -> impl Future<Output = Result<Self::Output, KindError>> + Send;

    /// Combines the outputs of the successful subtasks (all of them, unless `on_failure` is
    /// `continue` and some failed), in plan order.
    ///
    /// # Errors
    /// The task then fails with this message.
    fn synthesize(
        &self,
        input: &Self::Input,
        outputs: Vec<(String, Self::Output)>,
    ) -> Result<Self::Final, KindError>;

    /// Looks at the outputs after round `round` (1 for the first) and accepts them or sends
    /// subtasks back for another round. Called only while `round < options.max_rounds`; the
    /// default accepts at once.
    ///
    /// # Errors
    /// The task then fails with this message.
    fn review(
        &self,
        input: &Self::Input,
        outputs: &[(String, Self::Output)],
        round: u32,
    ) -> Result<Review<Self::Subtask>, KindError> {
        let _ = (input, outputs, round);
        Ok(Review::Accept)
    }
}

/// A kind with its types erased to MessagePack bytes, as the services use it.
pub trait DynKind: Send + Sync {
    /// Kind name.
    fn name(&self) -> &str;

    /// [`Kind::INLINE`].
    fn inline(&self) -> bool;

    /// Whether planning the encoded `input` may run on the service's own thread:
    /// [`Kind::INLINE`] and [`Kind::small_plan`] (`false` for an input that does not decode;
    /// the planner's own call reports that).
    fn inline_plan(&self, input: &[u8]) -> bool;

    /// Plans from the encoded input; returns the plan's entries.
    ///
    /// # Errors
    /// The input does not decode or the planner refuses it.
    fn plan(&self, input: &[u8]) -> Result<Vec<PlanEntry>, KindError>;

    /// Reviews the encoded outputs after `round`; `Some` entries to redo or add, `None` to
    /// accept.
    ///
    /// # Errors
    /// Something does not decode, or the review fails.
    fn review(
        &self,
        input: &[u8],
        outputs: &[(String, Vec<u8>)],
        round: u32,
    ) -> Result<Option<Vec<PlanEntry>>, KindError>;

    /// Handles an encoded subtask; returns the encoded output.
    fn handle(
        &self,
        payload: &[u8],
        context: HandlerContext,
    ) -> BoxFuture<'static, Result<Vec<u8>, KindError>>;

    /// Synthesizes from the encoded input and encoded outputs.
    ///
    /// # Errors
    /// Something does not decode, or the synthesizer fails.
    fn synthesize(
        &self,
        input: &[u8],
        outputs: Vec<(String, Vec<u8>)>,
    ) -> Result<rmpv::Value, KindError>;
}

struct Erased<K>(Arc<K>);

fn decode_outputs<'a, T: DeserializeOwned>(
    outputs: impl Iterator<Item = (&'a String, &'a [u8])>,
) -> Result<Vec<(String, T)>, KindError> {
    outputs
        .map(|(id, bytes)| {
            protocol::decode(bytes)
                .map(|output| (id.clone(), output))
                .map_err(|e| {
                    KindError::fatal(format!("output of subtask {id} does not decode: {e}"))
                })
        })
        .collect()
}

fn encode_for_kind<T: Serialize>(value: &T, what: &str) -> Result<Vec<u8>, KindError> {
    protocol::encode(value).map_err(|e| KindError::fatal(format!("cannot encode {what}: {e}")))
}

impl<K: Kind> DynKind for Erased<K> {
    fn name(&self) -> &str {
        self.0.name()
    }

    fn inline(&self) -> bool {
        K::INLINE
    }

    fn inline_plan(&self, input: &[u8]) -> bool {
        K::INLINE
            && protocol::decode::<K::Input>(input).is_ok_and(|input| self.0.small_plan(&input))
    }

    fn plan(&self, input: &[u8]) -> Result<Vec<PlanEntry>, KindError> {
        let input: K::Input =
            protocol::decode(input).map_err(|e| KindError::fatal(format!("invalid input: {e}")))?;
        to_entries(self.0.plan(&input)?.0, "", 0)
    }

    fn review(
        &self,
        input: &[u8],
        outputs: &[(String, Vec<u8>)],
        round: u32,
    ) -> Result<Option<Vec<PlanEntry>>, KindError> {
        let input: K::Input =
            protocol::decode(input).map_err(|e| KindError::fatal(format!("invalid input: {e}")))?;
        let outputs = decode_outputs::<K::Output>(outputs.iter().map(|(id, b)| (id, &b[..])))?;
        match self.0.review(&input, &outputs, round)? {
            Review::Accept => Ok(None),
            // Unnamed additions get ids that cannot collide with the plan's positions.
            Review::Revise(planned) => Ok(Some(to_entries(planned, &format!("r{round}."), 0)?)),
        }
    }

    fn handle(
        &self,
        payload: &[u8],
        context: HandlerContext,
    ) -> BoxFuture<'static, Result<Vec<u8>, KindError>> {
        let decoded: Result<K::Subtask, KindError> = protocol::decode(payload)
            .map_err(|e| KindError::fatal(format!("invalid subtask: {e}")));
        let kind = Arc::clone(&self.0);
        Box::pin(async move {
            let output = kind.handle(decoded?, context).await?;
            encode_for_kind(&output, "output")
        })
    }

    fn synthesize(
        &self,
        input: &[u8],
        outputs: Vec<(String, Vec<u8>)>,
    ) -> Result<rmpv::Value, KindError> {
        let input: K::Input =
            protocol::decode(input).map_err(|e| KindError::fatal(format!("invalid input: {e}")))?;
        let outputs = decode_outputs::<K::Output>(outputs.iter().map(|(id, b)| (id, &b[..])))?;
        let combined = self.0.synthesize(&input, outputs)?;
        let bytes = encode_for_kind(&combined, "synthesized output")?;
        rmpv::decode::read_value(&mut bytes.as_slice())
            .map_err(|e| KindError::fatal(format!("synthesized output does not re-read: {e}")))
    }
}

/// Most outputs a review or synthesis of a [`Kind::INLINE`] kind handles on the service's own
/// thread; with more, it goes to the blocking pool (decoding them alone takes a while).
pub const INLINE_OUTPUTS: usize = 1_000;

/// Runs `call`, a kind's plan, review or synthesis: on this thread when `inline`, else on the
/// blocking pool. A panic comes back as `Err` with its message, either way.
///
/// # Errors
/// `call` panicked.
pub async fn run_kind_code<T: Send + 'static>(
    inline: bool,
    call: impl FnOnce() -> T + Send + 'static,
) -> Result<T, String> {
    if inline {
        return std::panic::catch_unwind(std::panic::AssertUnwindSafe(call))
            .map_err(|payload| panic_text(payload.as_ref()));
    }
    match tokio::task::spawn_blocking(call).await {
        Ok(value) => Ok(value),
        Err(join) => Err(match join.try_into_panic() {
            Ok(payload) => panic_text(payload.as_ref()),
            Err(join) => join.to_string(),
        }),
    }
}

/// The text of a panic's payload, for an error message.
pub fn panic_text(payload: &(dyn std::any::Any + Send)) -> String {
    payload
        .downcast_ref::<&str>()
        .map(|s| (*s).to_owned())
        .or_else(|| payload.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "non-text panic payload".to_owned())
}

/// Kinds by name. Every service of a deployment must hold the same kinds.
#[derive(Clone, Default)]
pub struct Registry {
    kinds: HashMap<String, Arc<dyn DynKind>>,
}

impl Registry {
    /// An empty registry.
    pub fn new() -> Self {
        Self::default()
    }

    /// The built-in kinds: `range-sum`, `report` and `wordfreq`.
    pub fn builtin() -> Self {
        Self::new()
            .with(range_sum::RangeSum)
            .with(report::Report)
            .with(wordfreq::WordFreq)
    }

    /// Adds a kind, replacing any of the same name.
    #[must_use]
    pub fn with<K: Kind>(mut self, kind: K) -> Self {
        let name = kind.name().to_owned();
        self.kinds.insert(name, Arc::new(Erased(Arc::new(kind))));
        self
    }

    /// The kind called `name`.
    pub fn get(&self, name: &str) -> Option<Arc<dyn DynKind>> {
        self.kinds.get(name).cloned()
    }

    /// Registered names, sorted.
    pub fn names(&self) -> Vec<String> {
        let mut names: Vec<String> = self.kinds.keys().cloned().collect();
        names.sort();
        names
    }
}

/// Sorts `(id, value)` pairs into plan order: numeric ids by number, others after, by text.
pub fn sort_by_subtask_id<T>(items: &mut [(String, T)]) {
    items.sort_by(
        |(a, _), (b, _)| match (a.parse::<u64>(), b.parse::<u64>()) {
            (Ok(x), Ok(y)) => x.cmp(&y),
            (Ok(_), Err(_)) => std::cmp::Ordering::Less,
            (Err(_), Ok(_)) => std::cmp::Ordering::Greater,
            (Err(_), Err(_)) => a.cmp(b),
        },
    );
}
