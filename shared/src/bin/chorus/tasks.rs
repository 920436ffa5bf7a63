//! `chorus tasks`: the recent tasks of the deployment, newest first, from the index the services
//! keep in Redis (docs/operations.md#recent-tasks).

use chorus_shared::{
    admin::tasks::{self, Filter, TaskSummary},
    error::StoreError,
    store::Store,
};
use clap::Args;

/// The flags of `chorus tasks`.
#[derive(Args, Debug)]
pub struct TasksArgs {
    /// Only tasks in this state: running (every task without an outcome), planning, planned,
    /// succeeded, partial, failed, cancelled or rejected.
    #[arg(long, value_parser = [
        "running", "planning", "planned", "succeeded", "partial", "failed", "cancelled", "rejected",
    ])]
    pub status: Option<String>,
    /// Only tasks of this kind.
    #[arg(long)]
    pub kind: Option<String>,
    /// Most tasks listed.
    #[arg(long, default_value_t = 50, value_parser = clap::value_parser!(u64).range(1..=10_000))]
    pub limit: u64,
    /// Print JSON (an array of {id, kind, status, submitted_ms, finished_ms, settled,
    /// subtasks}) instead of a table.
    #[arg(long)]
    pub json: bool,
}

/// Lists the tasks `args` asks for; returns what to print.
///
/// # Errors
/// Redis fails.
pub async fn run(store: &Store, args: &TasksArgs) -> Result<String, StoreError> {
    let filter = Filter {
        status: args.status.clone(),
        kind: args.kind.clone(),
        limit: usize::try_from(args.limit).unwrap_or(usize::MAX),
    };
    let found = tasks::list(store, &filter).await?;
    if args.json {
        return serde_json::to_string_pretty(&found)
            .map_err(|e| StoreError::Corrupt(format!("cannot print as JSON: {e}")));
    }
    Ok(table(&found))
}

/// The tasks as an aligned text table, one per line under a header.
fn table(found: &[TaskSummary]) -> String {
    let mut rows = vec![[
        "ID".to_owned(),
        "KIND".to_owned(),
        "STATUS".to_owned(),
        "SUBMITTED".to_owned(),
        "FINISHED".to_owned(),
        "PROGRESS".to_owned(),
    ]];
    for t in found {
        rows.push([
            chorus_shared::text::bounded(&t.id, 80),
            chorus_shared::text::bounded(&t.kind, 40),
            t.status.clone(),
            tasks::rfc3339(t.submitted_ms),
            t.finished_ms.map_or("-".to_owned(), tasks::rfc3339),
            match (t.settled, t.subtasks) {
                (Some(settled), Some(total)) => format!("{settled}/{total}"),
                _ => "-".to_owned(),
            },
        ]);
    }
    let widths: Vec<usize> = (0..6)
        .map(|i| rows.iter().map(|r| r[i].chars().count()).max().unwrap_or(0))
        .collect();
    let lines: Vec<String> = rows
        .iter()
        .map(|row| {
            let cells: Vec<String> = row
                .iter()
                .zip(&widths)
                .map(|(cell, width)| format!("{cell:<width$}"))
                .collect();
            cells.join("  ").trim_end().to_owned()
        })
        .collect();
    lines.join("\n")
}
