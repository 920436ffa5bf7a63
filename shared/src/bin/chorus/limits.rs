//! `chorus limits`: show, set and clear the limits of the models of `llm` steps that every
//! worker enforces (docs/operations.md#model-limits). `set` and `clear` need a Redis user
//! that may write them (the `limits-admin` rules of deploy/acl/redis.acl).

use chorus_shared::{
    error::StoreError,
    steps::llm::limits::{check_name, Field},
    store::Store,
};
use clap::{Args, Subcommand};
use serde_json::Value as Json;

/// `chorus limits ...`.
#[derive(Subcommand, Debug)]
pub enum LimitsCommand {
    /// Every model with limits in Redis, as JSON: requests_per_minute, burst,
    /// tokens_per_minute, max_in_flight (0: no limit) and calls_in_flight now.
    Show,
    /// Set limits of MODEL for every worker, from their next call on, whatever the kinds files
    /// say (a file's value is only written where Redis has none). 0 lifts a limit.
    Set {
        /// The model, as named by its `[models.<name>]` table.
        model: String,
        #[command(flatten)]
        values: Values,
    },
    /// Remove limits of MODEL (all of them without a flag): no limit until a service whose
    /// kinds file sets one starts and writes it again.
    Clear {
        /// The model, as named by its `[models.<name>]` table.
        model: String,
        #[command(flatten)]
        fields: Fields,
    },
}

/// The values `set` writes.
#[derive(Args, Debug)]
pub struct Values {
    /// Calls started per minute by every worker together.
    #[arg(long)]
    rpm: Option<u64>,
    /// Calls that may start at once after a quiet spell, above the steady rate.
    #[arg(long)]
    burst: Option<u64>,
    /// Tokens (prompt + completion) per minute by every worker together.
    #[arg(long)]
    tpm: Option<u64>,
    /// Calls in flight at once across every worker.
    #[arg(long)]
    in_flight: Option<u64>,
}

/// The fields `clear` removes.
#[derive(Args, Debug)]
pub struct Fields {
    /// Clear requests per minute.
    #[arg(long)]
    rpm: bool,
    /// Clear the burst.
    #[arg(long)]
    burst: bool,
    /// Clear tokens per minute.
    #[arg(long)]
    tpm: bool,
    /// Clear the in-flight cap.
    #[arg(long)]
    in_flight: bool,
}

/// Why `chorus limits` failed.
pub enum LimitsError {
    /// Bad usage: a value out of range, nothing to set, a bad model name.
    Usage(String),
    /// Redis cannot be used.
    Unavailable(StoreError),
}

impl From<StoreError> for LimitsError {
    fn from(error: StoreError) -> Self {
        Self::Unavailable(error)
    }
}

/// Runs `command` against `store`; returns what to print: every model's limits after it.
///
/// # Errors
/// [`LimitsError`].
pub async fn run(store: &Store, command: LimitsCommand) -> Result<Json, LimitsError> {
    match command {
        LimitsCommand::Show => {}
        LimitsCommand::Set { model, values } => {
            check_name(&model).map_err(LimitsError::Usage)?;
            let given = [
                (Field::RequestsPerMinute, values.rpm),
                (Field::Burst, values.burst),
                (Field::TokensPerMinute, values.tpm),
                (Field::MaxInFlight, values.in_flight),
            ];
            let mut set = Vec::new();
            for (field, value) in given {
                if let Some(value) = value {
                    field
                        .check(value, true)
                        .map_err(|e| LimitsError::Usage(format!("--{}: {e}", flag(field))))?;
                    set.push((field, value));
                }
            }
            if set.is_empty() {
                return Err(LimitsError::Usage(
                    "give at least one of --rpm, --burst, --tpm, --in-flight".to_owned(),
                ));
            }
            store.limits_set(&model, &set).await?;
        }
        LimitsCommand::Clear { model, fields } => {
            check_name(&model).map_err(LimitsError::Usage)?;
            let chosen: Vec<Field> = [
                (Field::RequestsPerMinute, fields.rpm),
                (Field::Burst, fields.burst),
                (Field::TokensPerMinute, fields.tpm),
                (Field::MaxInFlight, fields.in_flight),
            ]
            .into_iter()
            .filter_map(|(field, on)| on.then_some(field))
            .collect();
            store.limits_clear(&model, &chosen).await?;
        }
    }
    Ok(store.limits_show().await?)
}

/// The flag of `field`.
fn flag(field: Field) -> &'static str {
    match field {
        Field::RequestsPerMinute => "rpm",
        Field::Burst => "burst",
        Field::TokensPerMinute => "tpm",
        Field::MaxInFlight => "in-flight",
    }
}
