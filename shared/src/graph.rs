//! Plans as dependency graphs: unique and valid ids and worker types, dependencies that name a
//! subtask of the task, no cycles (the cycle is named when there is one), and the first wave of
//! subtasks to release under a concurrency cap.

use std::collections::{HashMap, HashSet};

use crate::protocol::{self, PlanEntry};
use crate::text;

/// Where the dependencies of checked entries may point.
enum Scope<'a> {
    /// Anywhere in the entries themselves (a whole plan; cycles are looked for separately).
    WholePlan,
    /// An earlier entry, or one of these existing subtasks.
    After(&'a HashSet<String>),
    /// An earlier entry, or any other id (the store checks those exist).
    Spawn,
}

/// Checks a whole plan. Every dependency must name an entry of the plan.
///
/// # Errors
/// The first problem found, worded for the submitter: a bad or duplicate id, a bad worker type,
/// an unknown dependency or a cycle (`a → b → a`).
pub fn check_plan(entries: &[PlanEntry]) -> Result<(), String> {
    check_entries(entries, &Scope::WholePlan)?;
    match find_cycle(entries) {
        Some(cycle) => Err(format!("dependency cycle: {}", cycle.join(" → "))),
        None => Ok(()),
    }
}

/// Checks subtasks added to a running task by a review. A dependency may name one of `entries`
/// listed before it, or a subtask in `existing`; a cycle is then impossible.
///
/// # Errors
/// As [`check_plan`].
pub fn check_additions(entries: &[PlanEntry], existing: &HashSet<String>) -> Result<(), String> {
    check_entries(entries, &Scope::After(existing))
}

/// Checks subtasks a handler spawned: a dependency on a sibling must name an earlier one;
/// dependencies on other ids are checked against the task when they are recorded.
///
/// # Errors
/// As [`check_plan`].
pub fn check_spawned(entries: &[PlanEntry]) -> Result<(), String> {
    check_entries(entries, &Scope::Spawn)
}

fn check_entries(entries: &[PlanEntry], scope: &Scope<'_>) -> Result<(), String> {
    let mut seen: HashSet<&str> = HashSet::with_capacity(entries.len());
    let all: HashSet<&str> = entries.iter().map(|e| e.id.as_str()).collect();
    for entry in entries {
        protocol::validate_subtask_id(&entry.id).map_err(|e| e.to_string())?;
        protocol::validate_worker_type(&entry.worker_type).map_err(|e| e.to_string())?;
        if !seen.insert(entry.id.as_str()) {
            return Err(format!(
                "subtask id {} is used twice",
                text::quoted(&entry.id)
            ));
        }
        let mut deps: HashSet<&str> = HashSet::with_capacity(entry.depends_on.len());
        for dep in &entry.depends_on {
            protocol::validate_subtask_id(dep)
                .map_err(|e| format!("dependency of subtask {}: {e}", text::quoted(&entry.id)))?;
            if dep == &entry.id {
                return Err(format!(
                    "subtask {} depends on itself",
                    text::quoted(&entry.id)
                ));
            }
            if !deps.insert(dep.as_str()) {
                return Err(format!(
                    "subtask {} lists {} twice",
                    text::quoted(&entry.id),
                    text::quoted(dep)
                ));
            }
            let known = match scope {
                Scope::WholePlan => all.contains(dep.as_str()),
                Scope::After(existing) => seen.contains(dep.as_str()) || existing.contains(dep),
                Scope::Spawn => seen.contains(dep.as_str()) || !all.contains(dep.as_str()),
            };
            if !known {
                return Err(format!(
                    "subtask {} depends on unknown subtask {}",
                    text::quoted(&entry.id),
                    text::quoted(dep)
                ));
            }
        }
    }
    Ok(())
}

/// A dependency cycle, as the ids along it with the first repeated at the end; `None` when the
/// graph is acyclic. Iterative, so deep chains do not overflow the stack.
pub fn find_cycle(entries: &[PlanEntry]) -> Option<Vec<String>> {
    let index: HashMap<&str, usize> = entries
        .iter()
        .enumerate()
        .map(|(i, e)| (e.id.as_str(), i))
        .collect();
    let mut mark = vec![Mark::Unvisited; entries.len()];
    for root in 0..entries.len() {
        if mark[root] != Mark::Unvisited {
            continue;
        }
        // (node, next dependency to look at)
        let mut stack: Vec<(usize, usize)> = vec![(root, 0)];
        mark[root] = Mark::OnPath;
        while let Some(&mut (node, ref mut next)) = stack.last_mut() {
            let deps = &entries[node].depends_on;
            if *next >= deps.len() {
                mark[node] = Mark::Done;
                stack.pop();
                continue;
            }
            let dep = &deps[*next];
            *next += 1;
            let Some(&target) = index.get(dep.as_str()) else {
                continue;
            };
            match mark[target] {
                Mark::Unvisited => {
                    mark[target] = Mark::OnPath;
                    stack.push((target, 0));
                }
                Mark::OnPath => {
                    let start = stack.iter().position(|&(n, _)| n == target).unwrap_or(0);
                    let mut cycle: Vec<String> = stack[start..]
                        .iter()
                        .map(|&(n, _)| entries[n].id.clone())
                        .collect();
                    cycle.push(entries[target].id.clone());
                    return Some(cycle);
                }
                Mark::Done => {}
            }
        }
    }
    None
}

/// Where the depth-first search of [`find_cycle`] stands with a subtask.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Mark {
    Unvisited,
    /// On the path being explored: reaching it again closes a cycle.
    OnPath,
    /// Explored, with everything it depends on.
    Done,
}

/// How the plan's subtasks start: `release` go out at once; `ready` wait for a slot under the
/// concurrency cap, in this order; the rest wait for their dependencies.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct FirstWave {
    /// Positions in the plan of the subtasks released at once.
    pub release: Vec<usize>,
    /// Positions of the subtasks whose dependencies are met (none) but that wait for a slot.
    pub ready: Vec<usize>,
}

/// The first wave: subtasks without dependencies, in plan order, at most `cap` of them
/// released (0 = no cap).
pub fn first_wave(entries: &[PlanEntry], cap: u32) -> FirstWave {
    let cap = if cap == 0 { usize::MAX } else { cap as usize };
    let mut wave = FirstWave::default();
    for (position, entry) in entries.iter().enumerate() {
        if !entry.depends_on.is_empty() {
            continue;
        }
        if wave.release.len() < cap {
            wave.release.push(position);
        } else {
            wave.ready.push(position);
        }
    }
    wave
}

#[cfg(test)]
mod tests;
