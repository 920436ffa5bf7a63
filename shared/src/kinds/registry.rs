//! [`Registry`]: kinds by name, the one value every service of a deployment is given.

use std::{
    collections::{BTreeMap, HashMap},
    sync::Arc,
};

use super::{erased, range_sum, report, wordfreq, DynKind, Kind};
use crate::files::FileRoots;

/// Kinds by name. Every service of a deployment must hold the same kinds.
#[derive(Clone, Default)]
pub struct Registry {
    kinds: HashMap<String, Arc<dyn DynKind>>,
    /// The service's Redis for the `llm` steps of its kinds files (shared limits and cache).
    llm_store: crate::steps::llm::StoreSlot,
}

impl Registry {
    /// An empty registry.
    pub fn new() -> Self {
        Self::default()
    }

    /// Lends `store` to the `llm` steps of this registry's kinds files (and of its clones'):
    /// a service calls it once connected, before it consumes anything. Without it, models are
    /// called without shared limits and without the cache.
    pub fn attach_store(&self, store: &crate::store::Store) {
        self.llm_store.attach(store.clone());
    }

    /// The slot [`Registry::attach_store`] fills, shared with the models of kinds files.
    pub fn llm_store(&self) -> &crate::steps::llm::StoreSlot {
        &self.llm_store
    }

    /// The built-in kinds: `range-sum`, `report` and `wordfreq`, the last with no file roots
    /// (it refuses every path; see [`Registry::builtin_with_roots`]).
    pub fn builtin() -> Self {
        Self::builtin_with_roots(FileRoots::none())
    }

    /// The built-in kinds, with `wordfreq` reading files only under `roots` (`--file-root`).
    pub fn builtin_with_roots(roots: FileRoots) -> Self {
        Self::new()
            .with(range_sum::RangeSum)
            .with(report::Report)
            .with(wordfreq::WordFreq::new(roots))
    }

    /// Adds a kind, replacing any of the same name.
    #[must_use]
    pub fn with<K: Kind>(mut self, kind: K) -> Self {
        let name = kind.name().to_owned();
        self.kinds.insert(name, erased::erase(kind));
        self
    }

    /// Adds a kind already erased (a kinds file's), replacing any of the same name.
    pub(crate) fn insert(&mut self, kind: Arc<dyn DynKind>) {
        self.kinds.insert(kind.name().to_owned(), kind);
    }

    /// The kind called `name`, with its types erased for the services.
    pub fn get(&self, name: &str) -> Option<Arc<dyn DynKind>> {
        self.kinds.get(name).cloned()
    }

    /// Each registered kind's [`DynKind::fingerprint`], by name: what the services announce
    /// (docs/operations.md, "Rolling out a kind").
    pub fn fingerprints(&self) -> BTreeMap<String, String> {
        self.kinds
            .iter()
            .map(|(name, kind)| (name.clone(), kind.fingerprint()))
            .collect()
    }

    /// Registered names, sorted.
    pub fn names(&self) -> Vec<String> {
        let mut names: Vec<String> = self.kinds.keys().cloned().collect();
        names.sort();
        names
    }
}
