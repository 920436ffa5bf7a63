//! The Redis keys of one task, and the named groups of them that scripts share.
//!
//! Scripts get their keys as `KEYS[1..n]`, by position. For the groups several scripts share,
//! the order is written once here ([`GRAPH`], [`PLAN_ENTRIES`] and [`PLAN_LISTS`]) and once at
//! the top of the Lua prelude that binds each position to a name (`local TASK = KEYS[1]`); a
//! unit test checks that the two agree.

/// One key of a task, by the suffix it has after the task's prefix.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Key {
    Task,
    Waiters,
    Plan,
    Order,
    Wave,
    Pending,
    Results,
    Done,
    Waiting,
    Dependents,
    Ready,
    Outbox,
    WorkerTypes,
    Types,
    Children,
    Starts,
    Outcome,
    PlanLease,
    SynthLease,
    Cancel,
    Held,
}

impl Key {
    /// The key's name after `chorus:{<id>}:`, also the name its Lua header gives it.
    pub(super) const fn suffix(self) -> &'static str {
        match self {
            Self::Task => "task",
            Self::Waiters => "waiters",
            Self::Plan => "plan",
            Self::Order => "order",
            Self::Wave => "wave",
            Self::Pending => "pending",
            Self::Results => "results",
            Self::Done => "done",
            Self::Waiting => "waiting",
            Self::Dependents => "dependents",
            Self::Ready => "ready",
            Self::Outbox => "outbox",
            Self::WorkerTypes => "worker-types",
            Self::Types => "types",
            Self::Children => "children",
            Self::Starts => "starts",
            Self::Outcome => "outcome",
            Self::PlanLease => "plan-lease",
            Self::SynthLease => "synth-lease",
            Self::Cancel => "cancel",
            Self::Held => "held",
        }
    }
}

/// `KEYS[1..12]` of the scripts that change the dependency graph, as `lua/prelude/graph.lua`
/// binds them.
pub(super) const GRAPH: [Key; 12] = [
    Key::Task,
    Key::Pending,
    Key::Results,
    Key::Plan,
    Key::Order,
    Key::Waiting,
    Key::Dependents,
    Key::Ready,
    Key::Outbox,
    Key::Types,
    Key::Done,
    Key::WorkerTypes,
];

/// `KEYS[1..9]` of the scripts that record plan entries, as `lua/prelude/plan.lua` binds them.
pub(super) const PLAN_ENTRIES: [Key; 9] = [
    Key::PlanLease,
    Key::Task,
    Key::Plan,
    Key::Order,
    Key::Pending,
    Key::Waiting,
    Key::Dependents,
    Key::Types,
    Key::WorkerTypes,
];

/// `KEYS[10..11]` of the scripts that record a whole plan, after [`PLAN_ENTRIES`]: the first
/// wave and the ready list.
pub(super) const PLAN_LISTS: [Key; 2] = [Key::Wave, Key::Ready];

/// Working state, dropped when the task finishes (and before a plan is recorded afresh).
pub(super) const WORKING: [Key; 12] = [
    Key::Plan,
    Key::Order,
    Key::Wave,
    Key::Pending,
    Key::Results,
    Key::Done,
    Key::Waiting,
    Key::Dependents,
    Key::Ready,
    Key::Outbox,
    Key::Starts,
    Key::WorkerTypes,
];

/// The keys of one task, made on demand (a script call needs only some of them).
#[derive(Clone, Debug)]
pub struct TaskKeys {
    /// `chorus:{<id>}:`
    prefix: String,
}

impl TaskKeys {
    /// Keys of task `id`.
    pub fn new(id: &str) -> Self {
        Self {
            prefix: format!("chorus:{{{id}}}:"),
        }
    }

    /// The full name of `key`.
    pub(super) fn get(&self, key: Key) -> String {
        let suffix = key.suffix();
        let mut name = String::with_capacity(self.prefix.len() + suffix.len());
        name.push_str(&self.prefix);
        name.push_str(suffix);
        name
    }

    /// The full names of `keys`, in that order, as a script takes them.
    pub(super) fn all(&self, keys: &[Key]) -> Vec<String> {
        keys.iter().map(|&key| self.get(key)).collect()
    }

    /// `KEYS[1..11]` of the scripts that record a whole plan: [`PLAN_ENTRIES`] then
    /// [`PLAN_LISTS`].
    pub(super) fn whole_plan(&self) -> Vec<String> {
        let mut keys = self.all(&PLAN_ENTRIES);
        keys.extend(self.all(&PLAN_LISTS));
        keys
    }

    /// What recording a plan afresh drops first: the [`WORKING`] keys and the per-type
    /// counters.
    pub(super) fn cleared_by_plan(&self) -> Vec<String> {
        let mut keys = self.all(&WORKING);
        keys.push(self.get(Key::Types));
        keys
    }

    /// Task hash.
    pub fn task(&self) -> String {
        self.get(Key::Task)
    }

    /// Set of reply targets.
    pub fn waiters(&self) -> String {
        self.get(Key::Waiters)
    }

    /// Plan entries by subtask id.
    pub fn plan(&self) -> String {
        self.get(Key::Plan)
    }

    /// Set of unsettled subtask ids.
    pub fn pending(&self) -> String {
        self.get(Key::Pending)
    }

    /// Hash of settled subtasks.
    pub fn results(&self) -> String {
        self.get(Key::Results)
    }

    /// The outcome.
    pub fn outcome(&self) -> String {
        self.get(Key::Outcome)
    }

    /// Hash of subtask id → runs started after a redelivery (poison detection).
    pub fn starts(&self) -> String {
        self.get(Key::Starts)
    }

    /// Lease of the orchestrator planning and publishing the task.
    pub fn plan_lease(&self) -> String {
        self.get(Key::PlanLease)
    }

    /// Lease of the synthesizer finishing the task.
    pub fn synth_lease(&self) -> String {
        self.get(Key::SynthLease)
    }

    /// A cancel that came before the task was claimed, kept until its claim applies it.
    pub fn cancel(&self) -> String {
        self.get(Key::Cancel)
    }

    /// Set (with a short TTL, refreshed) while a worker holds subtasks of the task, running or
    /// prefetched: the sweeper then takes none of them for lost.
    pub fn held(&self) -> String {
        self.get(Key::Held)
    }

    /// Subtask ids in plan order.
    pub fn order(&self) -> String {
        self.get(Key::Order)
    }

    /// First-wave ids, when not the whole order.
    pub fn wave(&self) -> String {
        self.get(Key::Wave)
    }

    /// Settled status per subtask.
    pub fn done(&self) -> String {
        self.get(Key::Done)
    }

    /// Unmet dependency counts.
    pub fn waiting(&self) -> String {
        self.get(Key::Waiting)
    }

    /// Who waits for whom.
    pub fn dependents(&self) -> String {
        self.get(Key::Dependents)
    }

    /// Released when a slot frees.
    pub fn ready(&self) -> String {
        self.get(Key::Ready)
    }

    /// Released, publication unconfirmed.
    pub fn outbox(&self) -> String {
        self.get(Key::Outbox)
    }

    /// Per worker type counters.
    pub fn types(&self) -> String {
        self.get(Key::Types)
    }

    /// Child task ids.
    pub fn children(&self) -> String {
        self.get(Key::Children)
    }

    /// Subtask id → worker type, for subtasks of a type other than `default`.
    pub fn worker_types(&self) -> String {
        self.get(Key::WorkerTypes)
    }
}
