//! Wall-clock time as Chorus stores and sends it: milliseconds since the Unix epoch.

/// Milliseconds since the Unix epoch (1970-01-01T00:00:00Z), as every timestamp in Redis and on
/// the wire is kept. A clock set before the epoch reads 0, one past `u64::MAX` ms saturates.
pub fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
        .unwrap_or(0)
}
