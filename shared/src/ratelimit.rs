//! Rate limits per worker type, shared by every worker of the type on every machine: a token
//! bucket in Redis, refilled by Redis's own clock so machines' clocks do not matter.

use std::{fmt, str::FromStr, sync::LazyLock, time::Duration};

use redis::Script;

use crate::{error::StoreError, protocol, store::Store};

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
        if !(rate.is_finite() && rate > 0.0 && rate <= 1_000_000.0) {
            return Err(format!(
                "rate must be above 0 and at most 1000000, got {rate}"
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

/// Takes one token if there is one; otherwise returns the milliseconds until there will be.
const TAKE_TOKEN: &str = r"
local rate, burst = tonumber(ARGV[1]), tonumber(ARGV[2])
local time = redis.call('TIME')
local now = tonumber(time[1]) * 1000 + math.floor(tonumber(time[2]) / 1000)
local state = redis.call('HMGET', KEYS[1], 'tokens', 'at')
local tokens = tonumber(state[1]) or burst
local at = tonumber(state[2]) or now
tokens = math.min(burst, tokens + math.max(0, now - at) * rate / 1000)
local wait = 0
if tokens >= 1 then tokens = tokens - 1 else wait = math.ceil((1 - tokens) * 1000 / rate) end
redis.call('HSET', KEYS[1], 'tokens', tostring(tokens), 'at', now)
redis.call('PEXPIRE', KEYS[1], math.ceil(burst * 1000 / rate) + 60000)
return wait
";

static TAKE_TOKEN_SCRIPT: LazyLock<Script> = LazyLock::new(|| Script::new(TAKE_TOKEN));

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
            .invoke_async(&mut self.conn())
            .await?;
        Ok((wait > 0).then(|| Duration::from_millis(wait)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn limits_parse() {
        let limit: RateLimit = "api=50".parse().expect("parse");
        assert_eq!(limit.worker_type, "api");
        assert!((limit.rate - 50.0).abs() < f64::EPSILON);
        assert_eq!(limit.burst, 1);
        assert_eq!("gpu=0.5:3".parse::<RateLimit>().expect("burst").burst, 3);
        for bad in ["api", "api=0", "api=-1", "API=1", "api=1:0", "api=x"] {
            assert!(bad.parse::<RateLimit>().is_err(), "{bad}");
        }
    }
}
