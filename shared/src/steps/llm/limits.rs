//! Provider limits of a model shared by every worker on every machine (issue 18, point 6;
//! docs/llm.md#limits): requests per minute, tokens per minute and calls in flight, KEPT IN
//! REDIS so every process enforces the same numbers, and HTTP 429 waited out inside the call.
//!
//! Before each call one script (`limits/acquire.lua`) reserves a request, the call's estimated
//! tokens and an in-flight slot (a lease, so a killed worker's slot comes back), or says how
//! long to wait; after it another (`limits/settle.lua`) returns the slot and corrects the token
//! bucket by what the call really used. Both read the limits from the model's hash themselves,
//! so a limit changed by `chorus limits set` holds from the next call on, in every worker.

pub mod admin;

#[cfg(test)]
mod tests;

use std::sync::LazyLock;
use std::time::Duration;

use backon::{BackoffBuilder, ExponentialBuilder};
use redis::Script;
use serde_json::Value as Json;
use tokio::time::Instant;

use crate::error::StoreError;
use crate::steps::http;
use crate::steps::spec::ModelSpec;
use crate::steps::StepError;
use crate::store::Store;

use super::Model;

/// Set of the names of every model with limits in Redis: how `chorus limits show` finds them
/// without SCAN (which a Redis Cluster would have to run on every node).
pub const MODELS_KEY: &str = "chorus:llm:models";

/// Highest requests per minute (and burst) a limit may name: far above any provider's, so a
/// larger one is a typo.
pub const MAX_REQUESTS_PER_MINUTE: u64 = 10_000_000;
/// Highest tokens per minute a limit may name.
pub const MAX_TOKENS_PER_MINUTE: u64 = 100_000_000_000;
/// Highest in-flight cap a limit may name.
pub const MAX_IN_FLIGHT: u64 = 1_000_000;

/// Completion tokens a call is estimated at when its model has no `max_tokens`.
pub const DEFAULT_COMPLETION_ESTIMATE: u64 = 1024;

/// Characters per token in a call's estimate (the usual rule of thumb for English text;
/// the settlement corrects it by the provider's own count).
const CHARS_PER_TOKEN: u64 = 4;

/// How long a call's in-flight slot outlives its timeout: the lease must not lapse while the
/// call is still running, only once its worker surely is gone.
const LEASE_SLACK: Duration = Duration::from_secs(5);

/// How long an idle bucket's key outlives the time it takes to fill up, in ms (a bucket with
/// no key reads as full).
const BUCKET_LINGER_MS: u64 = 60_000;

/// How often a call waiting for an in-flight slot asks again (nothing tells it when one frees).
const SLOT_POLL: Duration = Duration::from_millis(100);

/// Tries of one call against a provider that keeps throttling it (429, or 503 with
/// `Retry-After`) before it becomes the usual retryable failure.
pub const MAX_THROTTLED_TRIES: usize = 6;

/// Longest wait between two throttled tries when the provider names none.
const MAX_THROTTLE_BACKOFF: Duration = Duration::from_secs(10);

/// One limit of a model: its field in the model's Redis hash and its key in `[models.x]`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Field {
    /// Requests started per minute by every worker together.
    RequestsPerMinute,
    /// Requests that may start at once after a quiet spell.
    Burst,
    /// Tokens (prompt + completion) per minute by every worker together.
    TokensPerMinute,
    /// Calls in flight at once across every worker.
    MaxInFlight,
}

impl Field {
    /// Every field, in the order `show` prints them.
    pub const ALL: [Field; 4] = [
        Field::RequestsPerMinute,
        Field::Burst,
        Field::TokensPerMinute,
        Field::MaxInFlight,
    ];

    /// Its field in the Redis hash (`acquire.lua` reads these names).
    pub fn redis_field(self) -> &'static str {
        match self {
            Field::RequestsPerMinute => "rpm",
            Field::Burst => "burst",
            Field::TokensPerMinute => "tpm",
            Field::MaxInFlight => "in_flight",
        }
    }

    /// Its key in a `[models.<name>]` table.
    pub fn spec_key(self) -> &'static str {
        match self {
            Field::RequestsPerMinute => "requests_per_minute",
            Field::Burst => "burst",
            Field::TokensPerMinute => "tokens_per_minute",
            Field::MaxInFlight => "max_in_flight",
        }
    }

    /// The largest value it may take.
    pub fn max(self) -> u64 {
        match self {
            Field::RequestsPerMinute | Field::Burst => MAX_REQUESTS_PER_MINUTE,
            Field::TokensPerMinute => MAX_TOKENS_PER_MINUTE,
            Field::MaxInFlight => MAX_IN_FLIGHT,
        }
    }

    /// Its value in `spec`, if the file gives one.
    fn of(self, spec: &ModelSpec) -> Option<u64> {
        match self {
            Field::RequestsPerMinute => spec.requests_per_minute.map(u64::from),
            Field::Burst => spec.burst.map(u64::from),
            Field::TokensPerMinute => spec.tokens_per_minute,
            Field::MaxInFlight => spec.max_in_flight.map(u64::from),
        }
    }

    /// Checks `value` for this field: 1 to [`Field::max`] in a kinds file; `chorus limits
    /// set` also takes 0, "no limit", which overrides a file's value.
    ///
    /// # Errors
    /// What is wrong, for a message naming the key.
    pub fn check(self, value: u64, zero_allowed: bool) -> Result<(), String> {
        let min = u64::from(!zero_allowed);
        if value < min || value > self.max() {
            return Err(format!(
                "must be a whole number from {min} to {}, got {value}",
                self.max()
            ));
        }
        Ok(())
    }
}

/// Checks the limits of `spec` (loaded from `[models.<name>]`) and the model's `name`, which
/// names its Redis keys.
///
/// # Errors
/// `(key, message)`, the key relative to the model's table (`requests_per_minute`...).
pub fn check(name: &str, spec: &ModelSpec) -> Result<(), (&'static str, String)> {
    let limited = Field::ALL.iter().any(|f| f.of(spec).is_some());
    if limited {
        check_name(name).map_err(|message| ("requests_per_minute", message))?;
    }
    for field in Field::ALL {
        if let Some(value) = field.of(spec) {
            field
                .check(value, false)
                .map_err(|m| (field.spec_key(), m))?;
        }
    }
    if spec.burst.is_some() && spec.requests_per_minute.is_none() {
        return Err((
            "burst",
            "is the burst of requests_per_minute, which the model does not set".to_owned(),
        ));
    }
    Ok(())
}

/// Checks a model name that names Redis keys: its `{...}` hash tag must be the whole name.
///
/// # Errors
/// What is wrong with it.
pub fn check_name(name: &str) -> Result<(), String> {
    if name.is_empty()
        || name.len() > 128
        || name.contains(['{', '}'])
        || name.chars().any(char::is_control)
    {
        return Err(format!(
            "a model with limits needs a name of 1 to 128 characters without braces or control characters, got {}",
            crate::text::quoted(name)
        ));
    }
    Ok(())
}

/// The Redis keys of `model`'s limits, all in one Cluster slot (`{<model>}`): its limits hash,
/// its request bucket, its token bucket and its in-flight set.
pub fn keys(model: &str) -> [String; 4] {
    [
        format!("chorus:llm:{{{model}}}:limits"),
        format!("chorus:llm:{{{model}}}:requests"),
        format!("chorus:llm:{{{model}}}:tokens"),
        format!("chorus:llm:{{{model}}}:in-flight"),
    ]
}

/// The tokens a call of `messages` is estimated at: its messages' characters / 4 plus the
/// completion it may get (`max_tokens`, else [`DEFAULT_COMPLETION_ESTIMATE`]).
pub fn estimate(messages: &[Json], max_tokens: Option<u32>) -> u64 {
    let chars: usize = messages
        .iter()
        .filter_map(|m| m.get("content").and_then(Json::as_str))
        .map(|text| text.chars().count())
        .sum();
    let prompt = u64::try_from(chars).unwrap_or(u64::MAX) / CHARS_PER_TOKEN;
    prompt.saturating_add(max_tokens.map_or(DEFAULT_COMPLETION_ESTIMATE, u64::from))
}

static ACQUIRE_SCRIPT: LazyLock<Script> =
    LazyLock::new(|| Script::new(include_str!("limits/acquire.lua")));
static SETTLE_SCRIPT: LazyLock<Script> =
    LazyLock::new(|| Script::new(include_str!("limits/settle.lua")));

/// Whether this process has written a model's file limits to Redis yet.
#[derive(Debug, Default)]
pub struct Seeded(tokio::sync::OnceCell<()>);

/// A call's reservation, to settle once it is over.
#[derive(Debug)]
pub struct Permit {
    id: String,
    reserved: u64,
}

/// A call reserved and not yet settled. Dropped unsettled (the call was cancelled mid-way), it
/// is settled in the background, so its in-flight slot comes back at once, not when its lease
/// lapses.
pub(super) struct Reservation {
    store: Store,
    model: String,
    permit: Option<Permit>,
}

impl Reservation {
    /// Settles it with `used` tokens (None: as reserved). A Redis failure is logged: the slot's
    /// lease then lapses by itself.
    async fn settle(mut self, used: Option<u64>) {
        let Some(permit) = self.permit.take() else {
            return;
        };
        if let Err(e) = self.store.settle_call(&self.model, &permit, used).await {
            tracing::warn!(model = %self.model, "could not settle a call's limits (its in-flight slot lapses with its lease): {e}");
        }
    }
}

impl Drop for Reservation {
    fn drop(&mut self) {
        let Some(permit) = self.permit.take() else {
            return;
        };
        if let Ok(runtime) = tokio::runtime::Handle::try_current() {
            let (store, model) = (self.store.clone(), std::mem::take(&mut self.model));
            runtime.spawn(async move {
                // Best effort: otherwise the lease lapses.
                drop(store.settle_call(&model, &permit, None).await);
            });
        }
    }
}

impl Store {
    /// Writes `spec`'s limits of `model` where Redis has none for that field (an admin's value
    /// stays) and lists the model in [`MODELS_KEY`].
    ///
    /// # Errors
    /// Redis fails.
    pub async fn seed_limits(&self, model: &str, spec: &ModelSpec) -> Result<(), StoreError> {
        let [limits, ..] = keys(model);
        let mut pipe = redis::pipe();
        for field in Field::ALL {
            if let Some(value) = field.of(spec) {
                pipe.hset_nx(&limits, field.redis_field(), value).ignore();
            }
        }
        pipe.sadd(MODELS_KEY, model).ignore();
        pipe.exec_async(&mut self.conn()).await?;
        Ok(())
    }

    /// Reserves one call of `model` estimated at `estimate` tokens, its slot leased for
    /// `lease`: `Ok(Ok(permit))`, or `Ok(Err(wait))` when a limit says to wait that long first.
    ///
    /// # Errors
    /// Redis fails.
    pub async fn acquire_call(
        &self,
        model: &str,
        estimate: u64,
        lease: Duration,
    ) -> Result<Result<Permit, Duration>, StoreError> {
        let id = uuid::Uuid::new_v4().simple().to_string();
        let (wait, reserved): (u64, u64) = ACQUIRE_SCRIPT
            .key(keys(model).to_vec())
            .arg(estimate)
            .arg(&id)
            .arg(u64::try_from(lease.as_millis()).unwrap_or(u64::MAX))
            .arg(BUCKET_LINGER_MS)
            .arg(u64::try_from(SLOT_POLL.as_millis()).unwrap_or(100))
            .invoke_async(&mut self.conn())
            .await?;
        if wait > 0 {
            return Ok(Err(Duration::from_millis(wait)));
        }
        Ok(Ok(Permit { id, reserved }))
    }

    /// Settles `permit` of `model`: returns its slot, corrects the token bucket by `used`
    /// tokens (None: as reserved).
    ///
    /// # Errors
    /// Redis fails.
    pub async fn settle_call(
        &self,
        model: &str,
        permit: &Permit,
        used: Option<u64>,
    ) -> Result<(), StoreError> {
        let [limits, _, tokens, in_flight] = keys(model);
        let () = SETTLE_SCRIPT
            .key(limits)
            .key(tokens)
            .key(in_flight)
            .arg(&permit.id)
            .arg(permit.reserved)
            .arg(used.unwrap_or(permit.reserved))
            .arg(BUCKET_LINGER_MS)
            .invoke_async(&mut self.conn())
            .await?;
        Ok(())
    }
}

/// A Redis failure of the limiter as the call's failure: retryable, the limits cannot be
/// checked.
fn unavailable(what: &str, error: &StoreError) -> StepError {
    StepError::Retryable {
        message: format!("{what}: its limits cannot be checked: {error}"),
        retry_after: None,
    }
}

impl Model {
    /// Sends a call of `messages` (built anew for each try by `request`, given the time left)
    /// within the model's limits, under `timeout` all told (the body read up to `max_bytes`):
    /// waits for the limits, checks the task's token budget in Redis (`spend`) once they let
    /// it go, and waits out a provider's throttling (429, 503 with `Retry-After`) up to
    /// [`MAX_THROTTLED_TRIES`]. Returns the body and the reservation to settle with
    /// [`Model::settle`].
    ///
    /// # Errors
    /// [`StepError`] as [`http::post`] classifies it; retryable when the limits leave no room
    /// within `timeout` or Redis cannot be reached; fatal when the budget is spent.
    pub(super) async fn send_limited(
        &self,
        messages: &[Json],
        (timeout, max_bytes): (Duration, usize),
        spend: Option<&super::Spend<'_>>,
        request: impl Fn(Duration) -> reqwest::RequestBuilder,
    ) -> Result<(Vec<u8>, Option<Reservation>), StepError> {
        let what = self.what();
        let deadline = Instant::now() + timeout;
        let estimate = estimate(messages, self.spec.max_tokens);
        let mut backoff = ExponentialBuilder::default()
            .with_min_delay(Duration::from_millis(500))
            .with_max_delay(MAX_THROTTLE_BACKOFF)
            .with_jitter()
            .with_max_times(MAX_THROTTLED_TRIES - 1)
            .build();
        loop {
            let permit = self.acquire(&what, estimate, deadline).await?;
            // Calls of the same task may have spent the budget while this one waited.
            if let (Some(spend), Some(store)) = (spend, self.store.get()) {
                if let Err(refused) = spend.check_now(store, &what).await {
                    self.settle(permit, Some(0)).await;
                    return Err(refused);
                }
            }
            let left = deadline.saturating_duration_since(Instant::now());
            let failure = match http::send(request(left), &what, left, max_bytes).await {
                Ok(body) => return Ok((body, permit)),
                Err(failure) => failure,
            };
            // A throttled call was not served: its tokens go back; another failure may have
            // used them.
            self.settle(permit, failure.throttled.then_some(0)).await;
            if !failure.throttled {
                return Err(failure.error);
            }
            let retry_after = match &failure.error {
                StepError::Retryable { retry_after, .. } => *retry_after,
                _ => None,
            };
            // The backoff counts the tries; the provider's `Retry-After` wins over its wait.
            let Some(backoff_wait) = backoff.next() else {
                return Err(failure.error);
            };
            let wait = retry_after.unwrap_or(backoff_wait);
            // A try whose wait ends past the deadline could only time out.
            if Instant::now() + wait >= deadline {
                return Err(failure.error);
            }
            tracing::info!(
                model = %self.name,
                wait_ms = wait.as_millis(),
                "{what} throttled by its provider; waiting before trying again"
            );
            tokio::time::sleep(wait).await;
        }
    }

    /// Waits until the limits in Redis let a call estimated at `estimate` tokens start (the
    /// first call of the process writes the file's limits first): its permit, or None when the
    /// service lent no Redis (the call then runs unlimited).
    async fn acquire(
        &self,
        what: &str,
        estimate: u64,
        deadline: Instant,
    ) -> Result<Option<Reservation>, StepError> {
        let Some(store) = self.store.get() else {
            return Ok(None);
        };
        self.seeded
            .0
            .get_or_try_init(|| store.seed_limits(&self.name, &self.spec))
            .await
            .map_err(|e| unavailable(what, &e))?;
        let lease = deadline.saturating_duration_since(Instant::now()) + LEASE_SLACK;
        let mut logged = false;
        loop {
            let wait = match store.acquire_call(&self.name, estimate, lease).await {
                Ok(Ok(permit)) => {
                    return Ok(Some(Reservation {
                        store: store.clone(),
                        model: self.name.clone(),
                        permit: Some(permit),
                    }))
                }
                Ok(Err(wait)) => wait,
                Err(e) => return Err(unavailable(what, &e)),
            };
            if Instant::now() + wait >= deadline {
                return Err(StepError::Retryable {
                    message: format!(
                        "{what}: its limits (requests or tokens per minute, calls in flight) left no room within the call's timeout"
                    ),
                    retry_after: Some(wait),
                });
            }
            if !logged {
                // One line per call that waits, not one per poll.
                tracing::debug!(model = %self.name, wait_ms = wait.as_millis(), "{what} waits for its limits");
                logged = true;
            }
            tokio::time::sleep(wait).await;
        }
    }

    /// Settles `reservation` (when there is one) with `used` tokens (None: as reserved).
    pub(super) async fn settle(&self, reservation: Option<Reservation>, used: Option<u64>) {
        if let Some(reservation) = reservation {
            reservation.settle(used).await;
        }
    }
}
