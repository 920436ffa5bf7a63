//! What `chorus limits` reads and writes (docs/operations.md#model-limits): every model's
//! limits in Redis with its calls in flight, and an admin's values, which override the kinds
//! files' (those are only written where Redis has none).

use serde_json::{json, Map, Value as Json};

use crate::error::StoreError;
use crate::store::Store;

use super::{keys, Field, MODELS_KEY};

impl Store {
    /// Every model listed in [`MODELS_KEY`] with its limits (named as in `[models.x]`; 0 is no
    /// limit) and `calls_in_flight` (unexpired leases), as a JSON object by model name.
    ///
    /// # Errors
    /// Redis fails, or holds a limit that is not a whole number.
    pub async fn limits_show(&self) -> Result<Json, StoreError> {
        let mut conn = self.conn();
        let mut models: Vec<String> = redis::cmd("SMEMBERS")
            .arg(MODELS_KEY)
            .query_async(&mut conn)
            .await?;
        models.sort();
        let (secs, micros): (u64, u64) = redis::cmd("TIME").query_async(&mut conn).await?;
        let now_ms = secs * 1000 + micros / 1000;
        let mut shown = Map::new();
        for model in models {
            let [limits, _, _, in_flight] = keys(&model);
            let fields: std::collections::HashMap<String, String> = redis::cmd("HGETALL")
                .arg(&limits)
                .query_async(&mut conn)
                .await?;
            let in_flight: u64 = redis::cmd("ZCOUNT")
                .arg(&in_flight)
                .arg(format!("({now_ms}"))
                .arg("+inf")
                .query_async(&mut conn)
                .await?;
            let mut entry = Map::new();
            for field in Field::ALL {
                if let Some(raw) = fields.get(field.redis_field()) {
                    let value: u64 = raw.parse().map_err(|_| {
                        StoreError::Corrupt(format!("{limits} {}: {raw:?}", field.redis_field()))
                    })?;
                    entry.insert(field.spec_key().to_owned(), json!(value));
                }
            }
            entry.insert("calls_in_flight".to_owned(), json!(in_flight));
            shown.insert(model, Json::Object(entry));
        }
        Ok(Json::Object(shown))
    }

    /// Sets `values` of `model`'s limits (0: no limit, overriding a kinds file's value) and
    /// lists the model for [`Store::limits_show`]. Every worker enforces them from its next
    /// call on.
    ///
    /// # Errors
    /// Redis fails.
    pub async fn limits_set(&self, model: &str, values: &[(Field, u64)]) -> Result<(), StoreError> {
        let [limits, ..] = keys(model);
        let mut pipe = redis::pipe();
        for (field, value) in values {
            pipe.hset(&limits, field.redis_field(), *value).ignore();
        }
        pipe.sadd(MODELS_KEY, model).ignore();
        pipe.exec_async(&mut self.conn()).await?;
        Ok(())
    }

    /// Removes `fields` of `model`'s limits (every one when empty): no limit until a service
    /// whose kinds file sets one starts and writes it again.
    ///
    /// # Errors
    /// Redis fails.
    pub async fn limits_clear(&self, model: &str, fields: &[Field]) -> Result<(), StoreError> {
        let [limits, ..] = keys(model);
        let fields: Vec<&str> = if fields.is_empty() {
            Field::ALL.iter().map(|f| f.redis_field()).collect()
        } else {
            fields.iter().map(|f| f.redis_field()).collect()
        };
        redis::cmd("HDEL")
            .arg(&limits)
            .arg(fields)
            .exec_async(&mut self.conn())
            .await?;
        Ok(())
    }
}
