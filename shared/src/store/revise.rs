//! Another review round: redoing or adding subtasks under the synthesis lease.

use std::sync::LazyLock;

use redis::Script;

use super::{
    graph::{add_entry, parse_graph_reply, Released},
    keys::GRAPH,
    lease::Lease,
    results::add_usage_block,
    Store, TaskKeys,
};
use crate::{error::StoreError, protocol::PlanEntry, usage::Usage};

static REVISE: LazyLock<Script> = LazyLock::new(|| {
    Script::new(concat!(
        include_str!("lua/prelude/graph.lua"),
        include_str!("lua/prelude/usage.lua"),
        include_str!("lua/revise.lua")
    ))
});

impl Store {
    /// Redoes or adds `entries` for another review round and returns what is released at once.
    /// Written only while `lease` (the synthesis lease) is held; `usage` (what the review's model
    /// calls used) is counted on the task's record in the same call.
    ///
    /// # Errors
    /// Redis fails, or the lease was lost or the task is not running ([`StoreError::Fenced`]).
    pub async fn revise(
        &self,
        id: &str,
        lease: &Lease,
        entries: &[PlanEntry],
        usage: &[Usage],
    ) -> Result<Released, StoreError> {
        let keys = TaskKeys::new(id);
        let mut call = REVISE.prepare_invoke();
        call.key(keys.all(&GRAPH))
            .key(keys.synth_lease())
            .arg(&lease.token);
        add_usage_block(&mut call, usage);
        for entry in entries {
            add_entry(&mut call, entry)?;
        }
        let reply: Vec<redis::Value> = call.invoke_async(&mut self.conn()).await?;
        let parsed = parse_graph_reply(id, &reply)?;
        if parsed.status == "revised" {
            Ok(parsed.released)
        } else {
            Err(StoreError::Fenced(format!(
                "task {id}: synthesis lease lost before the review round was recorded"
            )))
        }
    }
}
