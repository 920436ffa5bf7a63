//! The synthesizer: takes settled subtasks from `chorus.results`, records each exactly once in
//! Redis (an atomic script that is a no-op for duplicates), and when a task has nothing left
//! pending, synthesizes and delivers its outcome.

use std::sync::Arc;
use std::time::Duration;

use chorus_shared::{
    config::{ConnectArgs, LimitArgs, LogArgs, OutcomeArgs, ShutdownArgs},
    consume::{self, check_size, Disposition, ServiceSpec, Session},
    error::{ProtocolError, ServiceError},
    failpoint,
    finish::Finisher,
    kinds::Registry,
    protocol::{self, ResultMessage},
    store::{Recorded, Store},
    topology,
};
use clap::Parser;
use lapin::message::Delivery;
use tokio_util::sync::CancellationToken;

/// Flags of `chorus-synthesizer`.
#[derive(Parser, Clone, Debug)]
#[command(
    name = "chorus-synthesizer",
    version,
    about = "Chorus synthesizer: records results from chorus.results and delivers each task's outcome.",
    long_about = "Chorus synthesizer: consumes chorus.results, records every settled subtask in \
                  Redis with an atomic script that ignores duplicates, and once a task has no \
                  pending subtask left, runs its kind's synthesis once (under a lease), stores \
                  the outcome, publishes it to every submitter's reply_to and to the \
                  chorus.events exchange. Several may run side by side."
)]
pub struct Config {
    #[command(flatten)]
    pub connect: ConnectArgs,
    #[command(flatten)]
    pub limits: LimitArgs,
    #[command(flatten)]
    pub outcomes: OutcomeArgs,
    #[command(flatten)]
    pub shutdown: ShutdownArgs,
    #[command(flatten)]
    pub log: LogArgs,

    /// Results handled at once (also the prefetch).
    #[arg(long, env = "CHORUS_SYNTHESIZER_CONCURRENCY", default_value_t = 64, value_parser = clap::value_parser!(u16).range(1..))]
    pub concurrency: u16,
}

struct Synthesizer {
    config: Config,
    finisher: Finisher,
}

/// Runs the synthesizer until `shutdown` is cancelled.
///
/// # Errors
/// Redis cannot be reached at start-up.
pub async fn run(
    config: Config,
    registry: Registry,
    shutdown: CancellationToken,
) -> anyhow::Result<()> {
    let store = Store::connect(&config.connect.redis_url, config.connect.redis_timeout()).await?;
    store.warn_about_settings().await;
    tracing::info!(kinds = ?registry.names(), "synthesizer starting");
    let spec = ServiceSpec::new(
        "chorus-synthesizer",
        &config.connect,
        topology::RESULTS_QUEUE,
        config.concurrency,
        config.shutdown.grace(),
        Duration::from_millis(100),
    );
    consume::serve(spec, shutdown, |session: &Session| {
        let synthesizer = Arc::new(Synthesizer {
            finisher: Finisher::new(
                store.clone(),
                session.publisher.clone(),
                registry.clone(),
                &config.outcomes,
                &config.limits,
            ),
            config: config.clone(),
        });
        move |delivery: Arc<Delivery>| {
            let synthesizer = Arc::clone(&synthesizer);
            async move { synthesizer.handle(&delivery).await }
        }
    })
    .await;
    tracing::info!("synthesizer stopped");
    Ok(())
}

impl Synthesizer {
    async fn handle(&self, delivery: &Delivery) -> Result<Disposition, ServiceError> {
        check_size(delivery, self.config.limits.max_message_bytes())?;
        let result: ResultMessage = protocol::decode(&delivery.data)?;
        let (task, subtask) = (Some(result.task.clone()), Some(result.subtask.clone()));
        if let Err(error) = protocol::validate_task_id(&result.task) {
            return Ok(Disposition::Reject(error, None, subtask));
        }
        let recorded = self
            .finisher
            .store
            .record_result(
                &result.task,
                &result.subtask,
                result.attempts,
                &result.outcome,
            )
            .await?;
        failpoint::hit("synthesizer.after-record").await;
        match recorded {
            Recorded::New { remaining: 0 }
            | Recorded::Duplicate { remaining: 0 }
            | Recorded::TaskFinished => {
                self.finisher.finish_if_settled(&result.task).await?;
            }
            Recorded::New { .. } | Recorded::Duplicate { .. } => {}
            Recorded::UnknownTask => {
                let error =
                    ProtocolError::Invalid(format!("result for unknown task {:?}", result.task));
                return Ok(Disposition::Reject(error, task, subtask));
            }
            Recorded::UnknownSubtask => {
                let error = ProtocolError::Invalid(format!(
                    "task {:?} has no subtask {:?}",
                    result.task, result.subtask
                ));
                return Ok(Disposition::Reject(error, task, subtask));
            }
        }
        Ok(Disposition::Ack)
    }
}
