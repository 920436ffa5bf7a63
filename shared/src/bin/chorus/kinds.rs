//! `chorus kinds`: the kinds the live services serve, or those a kinds file adds to the
//! built-in ones, or a check of such a file (docs/operations.md#rolling-out-a-kind).

use chorus_shared::{
    config::{ConnectArgs, KindsArgs, DEFAULT_MAX_MESSAGE_BYTES},
    kinds::Registry,
    services,
};
use clap::{Args, Subcommand};

use super::{connect_store, print_json, Failure};

/// The flags of `chorus kinds`.
#[derive(Args, Debug)]
pub(super) struct KindsCommand {
    #[command(flatten)]
    pub(super) kinds: KindsArgs,
    #[command(subcommand)]
    pub(super) check: Option<KindsCheck>,
}

/// `chorus kinds check FILE`.
#[derive(Subcommand, Debug)]
pub(super) enum KindsCheck {
    /// Check a kinds file as a service would at start-up (programs found, URLs valid, env vars
    /// set, ...): exit 0 when it can be used, else one line naming the file, the kind and the
    /// key, and exit 64.
    Check {
        /// The kinds file.
        file: std::path::PathBuf,
    },
}

/// `chorus kinds`: the kinds the live services announce, as JSON
/// (docs/operations.md#rolling-out-a-kind).
pub(super) async fn live_kinds(connect: &ConnectArgs) -> Result<u8, Failure> {
    let store = connect_store(connect).await?;
    let live = services::read_live(&store)
        .await
        .map_err(|e| Failure::Unavailable(e.into()))?;
    print_json(&services::catalogue(&live)).map_err(Failure::Usage)?;
    Ok(0)
}

/// `chorus kinds --kinds-file F [check FILE]`: loads the kinds as a service would (with the default
/// `--max-message-bytes`), then lists them, or says the file is fine.
pub(super) fn kinds(command: KindsCommand) -> Result<u8, String> {
    let checking = command.check.is_some();
    let kinds = match command.check {
        Some(KindsCheck::Check { file }) => KindsArgs {
            kinds_file: Some(file),
        },
        None => command.kinds,
    };
    let max_answer_bytes = usize::try_from(DEFAULT_MAX_MESSAGE_BYTES).unwrap_or(usize::MAX);
    let registry = kinds.registry(Registry::builtin(), max_answer_bytes)?;
    if let (Some(path), true) = (&kinds.kinds_file, checking) {
        let added = registry.names().len() - Registry::builtin().names().len();
        println!("{}: {added} kinds, all usable", path.display());
        return Ok(0);
    }
    for name in registry.names() {
        let Some(kind) = registry.get(&name) else {
            continue;
        };
        let steps = kind.steps();
        match (steps.is_empty(), kind.description()) {
            (true, _) => println!("{name}  (built-in, Rust)"),
            (false, Some(description)) => println!("{name}  {description}"),
            (false, None) => println!("{name}"),
        }
        for (step, runs) in steps {
            println!("    {step}: {runs}");
        }
    }
    Ok(0)
}
