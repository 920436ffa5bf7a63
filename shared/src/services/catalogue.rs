//! What `chorus kinds` prints: the kinds a deployment serves, gathered from the live services'
//! announcements, each definition (fingerprint) with its steps and the services running it.

use std::collections::BTreeMap;

use serde::Serialize;

use super::{Announcement, Role};

/// The kinds of a deployment, by name.
#[derive(Debug, Serialize, PartialEq, Eq)]
pub struct Catalogue {
    /// Live services that announced themselves.
    pub services: usize,
    /// Each kind any of them serves, sorted by name.
    pub kinds: Vec<KindView>,
}

/// One kind as the deployment serves it.
#[derive(Debug, Serialize, PartialEq, Eq)]
pub struct KindView {
    /// Kind name.
    pub kind: String,
    /// Each live definition of it, sorted by fingerprint: more than one while a changed
    /// definition is being rolled out.
    pub definitions: Vec<Definition>,
    /// Roles of the deployment that no live service of which has the kind (a task of it
    /// cannot finish while one is missing).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub missing_roles: Vec<Role>,
    /// Set when two definitions are live, with what that means.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub warning: Option<String>,
}

/// One definition (fingerprint) of a kind and where it runs.
#[derive(Debug, Serialize, PartialEq, Eq)]
pub struct Definition {
    /// [`crate::kinds::DynKind::fingerprint`].
    pub fingerprint: String,
    /// Step name → what runs it.
    pub steps: BTreeMap<String, String>,
    /// Instances serving it, sorted.
    pub served_by: Vec<Server>,
}

/// One live service serving a definition.
#[derive(Debug, Serialize, PartialEq, Eq, PartialOrd, Ord)]
pub struct Server {
    /// Role.
    pub role: Role,
    /// Instance id (host, process id, random part).
    pub instance: String,
    /// Worker types (workers only).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub worker_types: Vec<String>,
}

/// The catalogue of `live` announcements (instance id, announcement).
pub fn catalogue(live: &[(String, Announcement)]) -> Catalogue {
    let mut kinds: BTreeMap<&str, BTreeMap<&str, Definition>> = BTreeMap::new();
    for (instance, announcement) in live {
        for (kind, fingerprint) in &announcement.kinds {
            let definition = kinds
                .entry(kind)
                .or_default()
                .entry(fingerprint)
                .or_insert_with(|| Definition {
                    fingerprint: fingerprint.clone(),
                    steps: BTreeMap::new(),
                    served_by: Vec::new(),
                });
            if let Some(steps) = announcement.steps.get(kind) {
                definition.steps.extend(steps.iter().cloned());
            }
            definition.served_by.push(Server {
                role: announcement.role,
                instance: instance.clone(),
                worker_types: announcement.worker_types.clone(),
            });
        }
    }
    let kinds = kinds
        .into_iter()
        .map(|(kind, definitions)| {
            let mut definitions: Vec<Definition> = definitions.into_values().collect();
            for definition in &mut definitions {
                definition.served_by.sort();
            }
            let missing_roles = [Role::Orchestrator, Role::Worker, Role::Synthesizer]
                .into_iter()
                .filter(|role| {
                    !definitions
                        .iter()
                        .any(|d| d.served_by.iter().any(|s| s.role == *role))
                })
                .collect();
            let warning = (definitions.len() > 1).then(|| {
                format!(
                    "{} definitions are live: each task runs on the one it was planned with while a service has it",
                    definitions.len()
                )
            });
            KindView {
                kind: kind.to_owned(),
                definitions,
                missing_roles,
                warning,
            }
        })
        .collect();
    Catalogue {
        services: live.len(),
        kinds,
    }
}
