//! The announcements of the live services ([`SERVICES_KEY`]): which kinds each serves, read and
//! written whole (the encoding and the rules are `crate::services`'s).

use std::collections::HashMap;

use super::Store;
use crate::error::StoreError;

/// The one hash holding every live service's announcement: field = instance id, value =
/// encoded [`crate::services::Announcement`]. One key, so it lives in one slot of a Redis
/// Cluster; its fields expire by their own `expires_at_ms`, which readers check.
pub const SERVICES_KEY: &str = "chorus:services";

impl Store {
    /// Writes (or refreshes) the announcement of service `instance`.
    ///
    /// # Errors
    /// Redis failed.
    pub async fn announce(&self, instance: &str, announcement: &[u8]) -> Result<(), StoreError> {
        redis::cmd("HSET")
            .arg(SERVICES_KEY)
            .arg(instance)
            .arg(announcement)
            .query_async::<()>(&mut self.conn())
            .await?;
        Ok(())
    }

    /// Removes the announcements of `instances` (a service leaving, or expired ones pruned).
    ///
    /// # Errors
    /// Redis failed.
    pub async fn withdraw(&self, instances: &[String]) -> Result<(), StoreError> {
        if instances.is_empty() {
            return Ok(());
        }
        redis::cmd("HDEL")
            .arg(SERVICES_KEY)
            .arg(instances)
            .query_async::<()>(&mut self.conn())
            .await?;
        Ok(())
    }

    /// Every announcement, live or expired, by instance id, still encoded.
    ///
    /// # Errors
    /// Redis failed.
    pub async fn announcements(&self) -> Result<HashMap<String, Vec<u8>>, StoreError> {
        Ok(redis::cmd("HGETALL")
            .arg(SERVICES_KEY)
            .query_async(&mut self.conn())
            .await?)
    }
}
