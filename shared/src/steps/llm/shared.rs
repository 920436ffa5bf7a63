//! The Redis a service lends its `llm` steps once it has connected: where the limits and the
//! call cache every worker on every machine shares live (issue 18, points 6 and 7). Steps are
//! built from the kinds file before the service connects, so they hold an empty slot that the
//! service fills ([`crate::kinds::Registry::attach_store`]).

use std::sync::{Arc, OnceLock};

use crate::store::Store;

/// A slot for the service's [`Store`], shared by every model of a registry's kinds files.
/// Clones share the slot. Empty in processes that never call a model with Redis (`chorus kinds
/// check`); steps then run without shared limits and without the cache.
#[derive(Clone, Default)]
pub struct StoreSlot(Arc<OnceLock<Store>>);

impl std::fmt::Debug for StoreSlot {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_tuple("StoreSlot")
            .field(&self.0.get().is_some())
            .finish()
    }
}

impl StoreSlot {
    /// Fills the slot with `store`; a slot already filled keeps its first store (a service
    /// connects once and reconnects inside the store).
    pub fn attach(&self, store: Store) {
        let _ = self.0.set(store);
    }

    /// The store, once attached.
    pub fn get(&self) -> Option<&Store> {
        self.0.get()
    }
}
