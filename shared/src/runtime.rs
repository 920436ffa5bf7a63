//! A service binary's start-up ([`prepare`]: its settings checked, logging) and the async
//! runtime it runs on ([`run_service`]): one thread (the default of every service, whose own
//! work is waiting on the broker, Redis and the handlers) or a pool of threads.

use std::future::Future;

use tokio_util::sync::CancellationToken;

use crate::{
    config::{self, LogFormat},
    error::{BrokerError, StoreError},
    files::FileRoots,
    kinds::Registry,
    shutdown, telemetry,
};

/// What starting a service binary needs from the service's `Config`, so every binary built on a
/// service's `run` (the stock ones and your own) starts it the same way ([`prepare`]).
pub trait ServiceConfig {
    /// The service's own checks of its settings, those clap cannot make one flag at a time.
    ///
    /// # Errors
    /// The first problem, as one line for the user (passwords hidden).
    fn validate(&self) -> Result<(), String>;
    /// `--log-format`.
    fn log_format(&self) -> LogFormat;
    /// `--threads`: threads of the service's async runtime, as [`run_service`] takes them.
    fn threads(&self) -> u16;
}

/// Implements [`ServiceConfig`] for a service's `Config` from what every service's settings
/// have: its own `validate`, `log.log_format` and `threads`. Takes the type's path.
#[macro_export]
macro_rules! service_config {
    ($config:ty) => {
        impl $crate::runtime::ServiceConfig for $config {
            fn validate(&self) -> Result<(), String> {
                <$config>::validate(self)
            }

            fn log_format(&self) -> $crate::config::LogFormat {
                self.log.log_format
            }

            fn threads(&self) -> u16 {
                self.threads
            }
        }
    };
}

/// Start-up of a service binary before its runtime: invalid settings end the process with one
/// line `<name>: <message>` and exit code 64 ([`config::exit_if_invalid`]), then logging is set
/// up. Returns the thread count to hand to [`run_service`].
pub fn prepare(name: &str, config: &impl ServiceConfig) -> u16 {
    config::exit_if_invalid(name, config.validate());
    telemetry::init(config.log_format());
    config.threads()
}

/// The file roots of `--file-root` (see [`config::FileArgs`]), opened for a service binary's
/// registry after [`prepare`]: a root that cannot be opened ends the process like an invalid
/// flag (one line, exit code 64). Logs the roots, or that the service reads no task's files.
pub fn file_roots(name: &str, files: &config::FileArgs) -> FileRoots {
    match files.roots() {
        Ok(roots) => {
            if roots.is_empty() {
                tracing::info!("no --file-root: kinds read no file a task names");
            } else {
                tracing::info!(file_roots = ?roots.paths(), "kinds read files only under these roots");
            }
            roots
        }
        Err(message) => {
            config::exit_if_invalid(name, Err(message));
            FileRoots::none()
        }
    }
}

/// `base` plus the kinds of `--kinds-file` ([`config::KindsArgs::registry`]) for a service
/// binary after [`prepare`]: a file that cannot be used ends the process like an invalid flag
/// (one line naming the file, the kind and the key; exit code 64). Logs the kinds it serves.
pub fn registry(
    name: &str,
    base: Registry,
    kinds: &config::KindsArgs,
    limits: &config::LimitArgs,
) -> Registry {
    match kinds.registry(base, limits.max_message_bytes()) {
        Ok(registry) => {
            if let Some(path) = &kinds.kinds_file {
                tracing::info!(kinds_file = %path.display(), kinds = ?registry.names(), "kinds file loaded");
            }
            registry
        }
        Err(message) => {
            config::exit_if_invalid(name, Err(message));
            Registry::new()
        }
    }
}

/// Runs `service` until it returns, on a runtime of `threads` threads (`1`: everything on the
/// calling thread, which saves the hand-offs between threads on every message; `0`: one per
/// core; the service is spawned on the pool rather than run by the calling thread, hence the
/// `Send + 'static` bound, which a custom binary's service future must meet). `service` gets
/// the token of [`shutdown::on_signal`]. A failure is logged as one line
/// and ends the process: with [`config::EXIT_UNAVAILABLE`] when a server refused the TLS
/// handshake, [`config::EXIT_USAGE`] when a settings file cannot be used, else with status 1.
pub fn run_service<Fut>(name: &str, threads: u16, service: impl FnOnce(CancellationToken) -> Fut)
where
    Fut: Future<Output = anyhow::Result<()>> + Send + 'static,
{
    let built = match threads {
        1 => tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build(),
        0 => tokio::runtime::Builder::new_multi_thread()
            .enable_all()
            .build(),
        n => tokio::runtime::Builder::new_multi_thread()
            .worker_threads(usize::from(n))
            .enable_all()
            .build(),
    };
    let runtime = match built {
        Ok(runtime) => runtime,
        Err(error) => {
            tracing::error!("{name} cannot start its async runtime: {error}");
            std::process::exit(1);
        }
    };
    let served = runtime.block_on(async {
        let service = service(shutdown::on_signal());
        if threads == 1 {
            return service.await;
        }
        // On a pool, the service runs on one of its threads, not on this one: the future given
        // to `block_on` is polled by the calling thread, so every delivery would wake this
        // thread, which would then hand each handler to a pool thread (two hand-offs per
        // message instead of one; tokio's docs on `Runtime::block_on`).
        match tokio::spawn(service).await {
            Ok(served) => served,
            // A panic ends the process as it would on the calling thread (status 101).
            Err(join) if join.is_panic() => std::panic::resume_unwind(join.into_panic()),
            Err(join) => Err(anyhow::anyhow!("{}", crate::kinds::panic_message(join))),
        }
    });
    if let Err(error) = served {
        tracing::error!("{name} failed: {error:#}");
        std::process::exit(exit_code(&error));
    }
}

/// The exit status of a service that failed with `error` (see [`run_service`]).
fn exit_code(error: &anyhow::Error) -> i32 {
    error
        .chain()
        .find_map(|cause| {
            if cause.is::<crate::observe::ListenError>() {
                return Some(config::EXIT_USAGE);
            }
            match cause.downcast_ref::<BrokerError>() {
                Some(BrokerError::TlsRefused(_)) => return Some(config::EXIT_UNAVAILABLE),
                Some(BrokerError::Settings(_)) => return Some(config::EXIT_USAGE),
                _ => {}
            }
            match cause.downcast_ref::<StoreError>() {
                Some(StoreError::TlsRefused(_)) => Some(config::EXIT_UNAVAILABLE),
                Some(StoreError::Settings(_)) => Some(config::EXIT_USAGE),
                _ => None,
            }
        })
        .unwrap_or(1)
}
