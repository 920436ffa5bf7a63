//! What operators look at beyond one task they know: the recent tasks (`tasks`), for
//! `chorus tasks` and the dashboard, which builds its pages on these functions; a task's
//! subtasks as a dependency graph (`graph`), for `chorus graph`; the dead letters of
//! `chorus.dead` (`dead`), for `chorus dead`.

pub mod dashboard;
pub mod dead;
pub mod graph;
pub mod tasks;
