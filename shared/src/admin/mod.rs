//! What operators look at beyond one task they know: the recent tasks (`tasks`), for
//! `chorus tasks` and the dashboard, which builds its pages on these functions.

pub mod tasks;
