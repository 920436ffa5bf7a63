//! The call cache of `llm` steps (issue 18, point 7, docs/llm.md#the-call-cache): a call
//! identical to one already answered (same provider URL, model and request body) within the
//! model's `cache_ttl_s` is answered from Redis, so a retried or redelivered subtask, a crashed
//! worker's redo or a resubmitted task does not pay for it again. The cache is an optimisation
//! only: whatever Redis does, a call goes on uncached.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::LazyLock;
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::steps::spec::ModelSpec;
use crate::store::Store;

use super::client::{Completion, Tokens};

/// How long an answer is kept when `cache_ttl_s` is not given, in seconds: one day.
pub const DEFAULT_TTL_S: u64 = 86_400;
/// Longest `cache_ttl_s`, in seconds (30 days): an answer kept longer outlives most prompt or
/// model revisions behind the same name, and holds Redis memory for little gain.
pub const MAX_TTL_S: u64 = 30 * 86_400;
/// Prefix of the cache's Redis keys.
pub const KEY_PREFIX: &str = "chorus:llm:cache:";
/// Hashed in front of every key: a new value format changes it, so old values are never read
/// as new ones.
const KEY_VERSION: &[u8] = b"chorus llm cache v1";
/// Least time between two warnings about the cache's Redis, in ms: an unreachable Redis would
/// otherwise log a line per call.
const WARN_EVERY_MS: u64 = 60_000;

/// A model's cache settings, from its `[models.<name>]` table.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Policy {
    /// How long a stored answer is used.
    pub ttl: Duration,
}

impl Policy {
    /// The cache settings of `spec`: `None` when the model's calls are not cached. `cache`
    /// defaults to on only for `temperature = 0` given explicitly: without it the provider's
    /// default applies (1 for OpenAI), and such a model answers differently each time, which
    /// a user asking nothing of the cache would not expect to be replayed.
    ///
    /// # Errors
    /// `(field, message)`: `cache_ttl_s` outside 1 to [`MAX_TTL_S`], or given while the cache is
    /// off by default (set `cache = true`, or `cache = false` to keep the value unused).
    pub fn from_spec(spec: &ModelSpec) -> Result<Option<Self>, (&'static str, String)> {
        let deterministic = spec.temperature == Some(0.0);
        let on = spec.cache.unwrap_or(deterministic);
        if let Some(ttl) = spec.cache_ttl_s {
            if !(1..=MAX_TTL_S).contains(&ttl) {
                return Err((
                    "cache_ttl_s",
                    format!("must be 1 to {MAX_TTL_S} seconds (30 days), got {ttl}"),
                ));
            }
            if spec.cache.is_none() && !on {
                return Err((
                    "cache_ttl_s",
                    "is set but the cache is off (it is on by default only with temperature = 0): \
                     add cache = true"
                        .to_owned(),
                ));
            }
        }
        Ok(on.then(|| Self {
            ttl: Duration::from_secs(spec.cache_ttl_s.unwrap_or(DEFAULT_TTL_S)),
        }))
    }
}

/// The Redis key of a call: [`KEY_PREFIX`] and the hex SHA-256 of the provider's `url`, the
/// provider's `model` name and the request `body` exactly as sent, hash-tagged (`{...}`) so
/// the key has a Redis Cluster slot of its own. Each part is length-prefixed, so no two
/// different calls hash the same bytes.
pub fn key(url: &str, model: &str, body: &str) -> String {
    let mut hash = Sha256::new();
    for part in [
        KEY_VERSION,
        url.as_bytes(),
        model.as_bytes(),
        body.as_bytes(),
    ] {
        hash.update((part.len() as u64).to_be_bytes());
        hash.update(part);
    }
    format!("{KEY_PREFIX}{{{}}}", hex::encode(hash.finalize()))
}

/// A stored answer: the completion's text and what the original call used (kept for
/// inspection; a hit pays nothing and reports no tokens).
#[derive(Debug, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
struct Entry {
    content: String,
    prompt_tokens: u64,
    completion_tokens: u64,
    cached_tokens: u64,
    /// Who paid for the call ([`super::origin`]); absent in entries of older versions.
    #[serde(default)]
    origin: Option<String>,
}

/// One call's place in the cache.
pub(super) struct Slot<'a> {
    store: &'a Store,
    key: String,
    ttl: Duration,
}

impl<'a> Slot<'a> {
    /// The slot of a call of `body` to `model` at `url`; `None` when the model is not cached
    /// (`policy` is `None`) or the process has no Redis (`store` is `None`).
    pub(super) fn new(
        store: Option<&'a Store>,
        policy: Option<Policy>,
        url: &str,
        model: &str,
        body: &str,
    ) -> Option<Self> {
        Some(Self {
            store: store?,
            ttl: policy?.ttl,
            key: key(url, model, body),
        })
    }

    /// The stored answer; `None` on a miss, and when Redis fails or holds something else than
    /// an answer there (logged, see [`warn`]). Asked by the `origin` that paid for it (the same
    /// step run again after its service died before recording it), it is that paid call,
    /// with its tokens; asked by anyone else, a cache hit that used no tokens.
    pub(super) async fn lookup(&self, what: &str, origin: &str) -> Option<Completion> {
        let reply: Result<Option<Vec<u8>>, _> = redis::cmd("GET")
            .arg(&self.key)
            .query_async(&mut self.store.conn())
            .await;
        let bytes = match reply {
            Ok(bytes) => bytes?,
            Err(error) => {
                warn(what, "read", &error);
                return None;
            }
        };
        match serde_json::from_slice::<Entry>(&bytes) {
            Ok(entry) => {
                tracing::debug!(key = %self.key, "{what} answered from the cache");
                // The payer's own redo: its usage was never recorded (had it been, this run's
                // result would be a duplicate, which is not counted), so it is counted now.
                let payer = !origin.is_empty() && entry.origin.as_deref() == Some(origin);
                let tokens = if payer {
                    Tokens {
                        prompt: entry.prompt_tokens,
                        completion: entry.completion_tokens,
                        cached: entry.cached_tokens,
                    }
                } else {
                    Tokens::default()
                };
                Some(Completion {
                    content: entry.content,
                    tokens,
                    cache_hit: !payer,
                })
            }
            Err(error) => {
                warn(what, "decode", &error);
                None
            }
        }
    }

    /// Stores `completion` for the policy's ttl, unless its value would be larger than
    /// `max_bytes` (the answer limit: such an answer fails its step anyway). A Redis failure is
    /// logged ([`warn`]) and otherwise ignored.
    pub(super) async fn store(
        &self,
        completion: &Completion,
        max_bytes: usize,
        what: &str,
        origin: &str,
    ) {
        let entry = Entry {
            content: completion.content.clone(),
            prompt_tokens: completion.tokens.prompt,
            completion_tokens: completion.tokens.completion,
            cached_tokens: completion.tokens.cached,
            origin: (!origin.is_empty()).then(|| origin.to_owned()),
        };
        let value = match serde_json::to_vec(&entry) {
            Ok(value) if value.len() <= max_bytes => value,
            _ => return,
        };
        // At least 1 ms: PX 0 is an error.
        let ttl_ms = u64::try_from(self.ttl.as_millis())
            .unwrap_or(u64::MAX)
            .max(1);
        let reply: Result<(), _> = redis::cmd("SET")
            .arg(&self.key)
            .arg(value)
            .arg("PX")
            .arg(ttl_ms)
            .query_async(&mut self.store.conn())
            .await;
        if let Err(error) = reply {
            warn(what, "store", &error);
        }
    }
}

/// Logs a failure of the cache: a warning at most once per [`WARN_EVERY_MS`] per process, debug
/// lines in between, since a Redis that is down would otherwise log once per call.
fn warn(what: &str, doing: &str, error: &dyn std::fmt::Display) {
    static START: LazyLock<Instant> = LazyLock::new(Instant::now);
    // 0: never warned. Milliseconds since START, plus one so the first warning is never 0.
    static LAST_WARNED: AtomicU64 = AtomicU64::new(0);
    let now = u64::try_from(START.elapsed().as_millis())
        .unwrap_or(u64::MAX)
        .saturating_add(1);
    let last = LAST_WARNED.load(Ordering::Relaxed);
    let due = last == 0 || now.saturating_sub(last) >= WARN_EVERY_MS;
    if due
        && LAST_WARNED
            .compare_exchange(last, now, Ordering::Relaxed, Ordering::Relaxed)
            .is_ok()
    {
        tracing::warn!(
            error = %crate::text::reason(&error.to_string()),
            "{what}: the call cache failed to {doing} an answer; calls go on uncached \
             (said at most once a minute)"
        );
    } else {
        tracing::debug!(
            error = %crate::text::reason(&error.to_string()),
            "{what}: the call cache failed to {doing} an answer"
        );
    }
}

#[cfg(test)]
mod tests;
