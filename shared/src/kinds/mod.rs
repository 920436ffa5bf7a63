//! Kinds: what a task does, as a Rust API. A kind plans a task into subtasks, handles one
//! subtask, and synthesizes the results; the [`Registry`] maps kind names to kinds and is shared
//! by all three services.
//!
//! Implement [`Kind`] with your own types; the registry erases them to MessagePack bytes so the
//! services never need to know them.

pub mod range_sum;
pub mod wordfreq;

use std::{collections::HashMap, fmt, future::Future, sync::Arc};

use futures::future::BoxFuture;
use serde::{de::DeserializeOwned, Serialize};

use crate::protocol;

/// What a handler knows about the attempt it runs.
#[derive(Clone, Debug)]
pub struct HandlerContext {
    /// Task id.
    pub task: String,
    /// Subtask id.
    pub subtask: String,
    /// 1 for the first attempt.
    pub attempt: u32,
    /// Attempts allowed in all.
    pub max_attempts: u32,
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
/// `plan` and `synthesize` run on a blocking thread, so they may read files; `handle` is async
/// and runs under the subtask's timeout (it is dropped when the timeout passes).
pub trait Kind: Send + Sync + 'static {
    /// The task input, decoded from the request's `input`.
    type Input: DeserializeOwned + Send + Sync;
    /// One unit of work.
    type Subtask: Serialize + DeserializeOwned + Send;
    /// What a handler returns for one subtask.
    type Output: Serialize + DeserializeOwned + Send;
    /// The synthesized output of the task.
    type Final: Serialize;

    /// Name that tasks give in `kind`.
    fn name(&self) -> &str;

    /// Breaks a task into subtasks; their number is up to the input.
    ///
    /// # Errors
    /// An input the kind cannot run: the task is `rejected` with this message.
    fn plan(&self, input: &Self::Input) -> Result<Vec<Self::Subtask>, KindError>;

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
}

/// A kind with its types erased to MessagePack bytes, as the services use it.
pub trait DynKind: Send + Sync {
    /// Kind name.
    fn name(&self) -> &str;

    /// Plans from the encoded input; returns encoded subtasks.
    ///
    /// # Errors
    /// The input does not decode or the planner refuses it.
    fn plan(&self, input: &[u8]) -> Result<Vec<Vec<u8>>, KindError>;

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

fn encode_for_kind<T: Serialize>(value: &T, what: &str) -> Result<Vec<u8>, KindError> {
    protocol::encode(value).map_err(|e| KindError::fatal(format!("cannot encode {what}: {e}")))
}

impl<K: Kind> DynKind for Erased<K> {
    fn name(&self) -> &str {
        self.0.name()
    }

    fn plan(&self, input: &[u8]) -> Result<Vec<Vec<u8>>, KindError> {
        let input: K::Input =
            protocol::decode(input).map_err(|e| KindError::fatal(format!("invalid input: {e}")))?;
        self.0
            .plan(&input)?
            .iter()
            .map(|subtask| encode_for_kind(subtask, "subtask"))
            .collect()
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
        let outputs = outputs
            .into_iter()
            .map(|(id, bytes)| {
                protocol::decode(&bytes)
                    .map(|output| (id.clone(), output))
                    .map_err(|e| {
                        KindError::fatal(format!("output of subtask {id} does not decode: {e}"))
                    })
            })
            .collect::<Result<Vec<_>, _>>()?;
        let combined = self.0.synthesize(&input, outputs)?;
        let bytes = encode_for_kind(&combined, "synthesized output")?;
        rmpv::decode::read_value(&mut bytes.as_slice())
            .map_err(|e| KindError::fatal(format!("synthesized output does not re-read: {e}")))
    }
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

    /// The built-in kinds: `range-sum` and `wordfreq`.
    pub fn builtin() -> Self {
        Self::new()
            .with(range_sum::RangeSum)
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
