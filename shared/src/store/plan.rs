//! Recording a task's plan under its plan lease — in one call for a plan of at most [`CHUNK`]
//! entries, in chunks for a larger one — and moving the task on to `running` once the first
//! wave is published.

use std::{
    collections::{BTreeMap, HashMap},
    sync::LazyLock,
};

use redis::Script;

use super::{
    codec::encode_entry,
    keys::{Key, PLAN_ENTRIES},
    lease::Lease,
    results::add_usage_block,
    Store, TaskKeys, CHUNK,
};
use crate::{error::StoreError, graph::FirstWave, protocol::PlanEntry, usage::Usage};

static RECORD_PLAN: LazyLock<Script> = LazyLock::new(|| {
    Script::new(concat!(
        include_str!("lua/prelude/plan.lua"),
        include_str!("lua/prelude/usage.lua"),
        include_str!("lua/record_plan.lua")
    ))
});
static RESET_PLAN: LazyLock<Script> =
    LazyLock::new(|| Script::new(include_str!("lua/reset_plan.lua")));
static APPEND_PLAN: LazyLock<Script> = LazyLock::new(|| {
    Script::new(concat!(
        include_str!("lua/prelude/plan.lua"),
        include_str!("lua/append_plan.lua")
    ))
});
static APPEND_LIST: LazyLock<Script> =
    LazyLock::new(|| Script::new(include_str!("lua/append_list.lua")));
static MARK_PLANNED: LazyLock<Script> = LazyLock::new(|| {
    Script::new(concat!(
        include_str!("lua/prelude/plan.lua"),
        include_str!("lua/prelude/usage.lua"),
        include_str!("lua/mark_planned.lua")
    ))
});
static MARK_RUNNING: LazyLock<Script> =
    LazyLock::new(|| Script::new(include_str!("lua/mark_running.lua")));

/// A plan laid out as the plan scripts take it (see `lua/prelude/plan.lua`).
pub(super) struct PlanLayout<'a> {
    entries: &'a [PlanEntry],
    /// Per subtask, the space-separated subtasks that depend on it.
    dependents: HashMap<&'a str, String>,
    /// The wave and ready lists with the plan positions that go in them; both empty when the
    /// wave is the plan order.
    lists: [(Key, &'a [usize]); 2],
    released_by_type: BTreeMap<&'a str, u64>,
    wave_is_order: bool,
    wave_len: usize,
    has_graph: bool,
    cap: u32,
}

impl<'a> PlanLayout<'a> {
    /// The layout of `entries` with first wave `wave`, under a cap of `cap` subtasks in flight
    /// (0 for none).
    pub(super) fn new(entries: &'a [PlanEntry], wave: &'a FirstWave, cap: u32) -> Self {
        let mut dependents: HashMap<&str, String> = HashMap::new();
        for entry in entries {
            for dep in &entry.depends_on {
                let list = dependents.entry(dep.as_str()).or_default();
                if !list.is_empty() {
                    list.push(' ');
                }
                list.push_str(&entry.id);
            }
        }
        let wave_is_order = wave.ready.is_empty() && wave.release.len() == entries.len();
        let lists: [(Key, &[usize]); 2] = if wave_is_order {
            [(Key::Wave, &[]), (Key::Ready, &[])]
        } else {
            [(Key::Wave, &wave.release), (Key::Ready, &wave.ready)]
        };
        let mut released_by_type: BTreeMap<&str, u64> = BTreeMap::new();
        for &position in &wave.release {
            if let Some(entry) = entries.get(position) {
                *released_by_type
                    .entry(entry.worker_type.as_str())
                    .or_default() += 1;
            }
        }
        Self {
            entries,
            dependents,
            lists,
            released_by_type,
            wave_is_order,
            wave_len: wave.release.len(),
            has_graph: entries.iter().any(|e| !e.depends_on.is_empty()),
            cap,
        }
    }

    /// Whether the first wave is the whole plan order (then no wave list is stored).
    pub(super) fn wave_is_order(&self) -> bool {
        self.wave_is_order
    }

    fn id_at(&self, position: usize) -> &str {
        self.entries.get(position).map_or("", |e| e.id.as_str())
    }

    /// One entry's values (`ENTRY_WIDTH` in `lua/prelude/plan.lua`): id, encoded entry, worker
    /// type, unmet dependency count, space-separated dependents.
    fn add_entry(
        &self,
        call: &mut redis::ScriptInvocation<'_>,
        entry: &PlanEntry,
    ) -> Result<(), StoreError> {
        call.arg(&entry.id)
            .arg(encode_entry(entry)?)
            .arg(&entry.worker_type)
            .arg(entry.depends_on.len())
            .arg(
                self.dependents
                    .get(entry.id.as_str())
                    .map_or("", String::as_str),
            );
        Ok(())
    }

    /// The task's fields once planned, as `planned_fields` reads them: total, cap, wave length,
    /// wave is order, has a graph, then (worker type, released) pairs.
    fn add_fields(&self, call: &mut redis::ScriptInvocation<'_>) {
        call.arg(self.entries.len())
            .arg(self.cap)
            .arg(self.wave_len)
            .arg(u8::from(self.wave_is_order))
            .arg(u8::from(self.has_graph));
        for (worker_type, count) in &self.released_by_type {
            call.arg(*worker_type).arg(*count);
        }
    }

    /// The whole plan as `write_plan` reads it (entry count, entries, then the wave and ready
    /// lists as a count and ids each), then the fields.
    ///
    /// # Errors
    /// An entry does not encode.
    pub(super) fn add_whole(
        &self,
        call: &mut redis::ScriptInvocation<'_>,
    ) -> Result<(), StoreError> {
        call.arg(self.entries.len());
        for entry in self.entries {
            self.add_entry(call, entry)?;
        }
        for (_, positions) in &self.lists {
            call.arg(positions.len());
            for &position in *positions {
                call.arg(self.id_at(position));
            }
        }
        self.add_fields(call);
        Ok(())
    }
}

/// What a plan script replies when it wrote; anything else (0) means it found the plan lease
/// lost or the task no longer planning, and wrote nothing.
const WRITTEN: i64 = 1;

impl Store {
    /// Records the plan — entries, order, pending set, dependency counts and dependents, the
    /// first wave and the ready list — then moves the task to `planned` with the first wave
    /// counted in flight. Starts from scratch each time, so a crash half-way is repaired by a
    /// rerun. Every write checks that `lease` is still held and the task still `planning`, so a
    /// holder whose lease lapsed (a long pause) cannot overwrite the work of the one that took
    /// over. `usage` (what the planner's model calls used) is counted on the task's record in
    /// the same call that moves it to `planned` (docs/kinds.md#usage).
    ///
    /// # Errors
    /// Redis fails, an entry does not encode, or the lease was lost or the task left the
    /// `planning` state meanwhile ([`StoreError::Fenced`]).
    pub async fn record_plan(
        &self,
        id: &str,
        lease: &Lease,
        entries: &[PlanEntry],
        wave: &FirstWave,
        cap: u32,
        usage: &[Usage],
    ) -> Result<(), StoreError> {
        let keys = TaskKeys::new(id);
        let layout = PlanLayout::new(entries, wave, cap);
        let done = if entries.len() <= CHUNK {
            let mut call = RECORD_PLAN.prepare_invoke();
            call.key(keys.whole_plan())
                .key(keys.cleared_by_plan())
                .arg(&lease.token);
            add_usage_block(&mut call, usage);
            layout.add_whole(&mut call)?;
            call.invoke_async::<i64>(&mut self.conn()).await? == WRITTEN
        } else {
            self.record_plan_in_chunks(&keys, lease, &layout, usage)
                .await?
        };
        if done {
            Ok(())
        } else {
            Err(StoreError::Fenced(format!(
                "task {id}: plan lease lost or task no longer planning"
            )))
        }
    }

    /// [`Store::record_plan`] for a plan of more than [`CHUNK`] entries, so that no single call
    /// holds Redis up for long: clears what an earlier attempt left, appends the entries and
    /// the wave and ready lists chunk by chunk, then moves the task to `planned`. Returns false
    /// as soon as a step finds itself fenced.
    async fn record_plan_in_chunks(
        &self,
        keys: &TaskKeys,
        lease: &Lease,
        layout: &PlanLayout<'_>,
        usage: &[Usage],
    ) -> Result<bool, StoreError> {
        let mut conn = self.conn();
        let reset: i64 = RESET_PLAN
            .key(keys.all(&[Key::PlanLease, Key::Task]))
            .key(keys.cleared_by_plan())
            .arg(&lease.token)
            .invoke_async(&mut conn)
            .await?;
        if reset != WRITTEN {
            return Ok(false);
        }
        for (chunk_index, chunk) in layout.entries.chunks(CHUNK).enumerate() {
            let mut call = APPEND_PLAN.prepare_invoke();
            call.key(keys.all(&PLAN_ENTRIES))
                .arg(&lease.token)
                .arg(chunk_index * CHUNK);
            for entry in chunk {
                layout.add_entry(&mut call, entry)?;
            }
            if call.invoke_async::<i64>(&mut conn).await? != WRITTEN {
                return Ok(false);
            }
        }
        for &(list, positions) in &layout.lists {
            for chunk in positions.chunks(CHUNK) {
                let mut call = APPEND_LIST.prepare_invoke();
                call.key(keys.all(&[Key::PlanLease, Key::Task, list]))
                    .arg(&lease.token);
                for &position in chunk {
                    call.arg(layout.id_at(position));
                }
                if call.invoke_async::<i64>(&mut conn).await? != WRITTEN {
                    return Ok(false);
                }
            }
        }
        let mut call = MARK_PLANNED.prepare_invoke();
        call.key(keys.all(&PLAN_ENTRIES)).arg(&lease.token);
        add_usage_block(&mut call, usage);
        layout.add_fields(&mut call);
        Ok(call.invoke_async::<i64>(&mut conn).await? == WRITTEN)
    }

    /// Remembers that first-wave subtasks `0..published` are confirmed by the broker.
    ///
    /// # Errors
    /// Redis fails.
    pub async fn set_published(&self, id: &str, published: u64) -> Result<(), StoreError> {
        let keys = TaskKeys::new(id);
        redis::cmd("HSET")
            .arg(keys.task())
            .arg("published")
            .arg(published)
            .query_async::<()>(&mut self.conn())
            .await?;
        Ok(())
    }

    /// Moves a planned task to `running` once its whole plan (`published` subtasks) is
    /// confirmed, and releases the plan `lease` in the same round trip ([`Lease::release`] is
    /// then a no-op). A task that finished meanwhile stays finished.
    ///
    /// # Errors
    /// Redis fails.
    pub async fn mark_running(
        &self,
        id: &str,
        published: u64,
        lease: &Lease,
    ) -> Result<(), StoreError> {
        let keys = TaskKeys::new(id);
        lease.stop_renewing();
        MARK_RUNNING
            .key(keys.task())
            .key(&lease.key)
            .arg(published)
            .arg(&lease.token)
            .invoke_async::<i64>(&mut self.conn())
            .await?;
        lease.mark_released();
        Ok(())
    }
}
