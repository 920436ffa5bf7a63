//! Rate limits per worker type, shared by every worker of the type on every machine: a token
//! bucket in Redis, refilled by Redis's own clock so machines' clocks do not matter.

use std::{fmt, str::FromStr, sync::LazyLock, time::Duration};

use redis::Script;

use crate::{error::StoreError, protocol, store::Store};

/// Highest rate a limit may name, in subtasks per second: far above what any worker type
/// reaches, so a larger one is a typo.
pub const MAX_RATE_PER_SEC: f64 = 1_000_000.0;

/// `rate` subtasks per second for workers of `worker_type`, with bursts of up to `burst`.
#[derive(Clone, Debug, PartialEq)]
pub struct RateLimit {
    /// Worker type.
    pub worker_type: String,
    /// Subtasks started per second, at most.
    pub rate: f64,
    /// Subtasks that may start at once after a quiet spell.
    pub burst: u32,
}

impl FromStr for RateLimit {
    type Err = String;

    /// Parses `TYPE=RATE` or `TYPE=RATE:BURST`, e.g. `api=50` or `api=0.5:1`.
    fn from_str(raw: &str) -> Result<Self, String> {
        let (worker_type, limit) = raw
            .split_once('=')
            .ok_or_else(|| format!("expected TYPE=RATE[:BURST], got {raw:?}"))?;
        protocol::validate_worker_type(worker_type).map_err(|e| e.to_string())?;
        let (rate, burst) = match limit.split_once(':') {
            Some((rate, burst)) => (rate, Some(burst)),
            None => (limit, None),
        };
        let rate: f64 = rate
            .parse()
            .map_err(|_| format!("rate {rate:?} is not a number"))?;
        if !(rate.is_finite() && rate > 0.0 && rate <= MAX_RATE_PER_SEC) {
            return Err(format!(
                "rate must be above 0 and at most {MAX_RATE_PER_SEC}, got {rate}"
            ));
        }
        let burst = match burst {
            Some(burst) => burst
                .parse::<u32>()
                .ok()
                .filter(|b| *b >= 1)
                .ok_or_else(|| format!("burst {burst:?} must be a whole number of at least 1"))?,
            None => 1,
        };
        Ok(Self {
            worker_type: worker_type.to_owned(),
            rate,
            burst,
        })
    }
}

impl fmt::Display for RateLimit {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}={}:{}", self.worker_type, self.rate, self.burst)
    }
}

/// How long an idle bucket's key outlives the time the bucket takes to fill up, in ms. A bucket
/// with no key reads as full, so the key may go once the bucket would be full again; the slack
/// on top only makes sure it never goes sooner.
const BUCKET_LINGER_MS: u64 = 60_000;

/// Takes one token if there is one; otherwise returns the milliseconds until there will be.
static TAKE_TOKEN_SCRIPT: LazyLock<Script> =
    LazyLock::new(|| Script::new(include_str!("ratelimit/take_token.lua")));

/// Redis key of the bucket of `worker_type`.
pub fn bucket_key(worker_type: &str) -> String {
    format!("chorus:rate:{{{worker_type}}}")
}

impl Store {
    /// Takes a token from the bucket of `limit`: `None` when one was taken, else how long to
    /// wait before asking again.
    ///
    /// # Errors
    /// Redis fails.
    pub async fn take_token(&self, limit: &RateLimit) -> Result<Option<Duration>, StoreError> {
        let wait: u64 = TAKE_TOKEN_SCRIPT
            .key(bucket_key(&limit.worker_type))
            .arg(limit.rate)
            .arg(limit.burst)
            .arg(BUCKET_LINGER_MS)
            .invoke_async(&mut self.conn())
            .await?;
        Ok((wait > 0).then(|| Duration::from_millis(wait)))
    }
}

#[cfg(test)]
mod tests;
