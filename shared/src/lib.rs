//! Chorus: the library every Chorus binary is built on — and that your own binaries, with your
//! own kinds, are built on too.
//!
//! # Layout
//! - [`protocol`]: the wire messages (task requests, outcomes, subtasks, results) and encodings;
//!   `protocol::strict`, the strict decoding of what comes from outside.
//! - [`topology`]: names and declarations of exchanges and queues, dead-lettering, delay queues.
//! - [`amqp`]: connections, confirmed publishing with time limits, acks, dead-letter copies,
//!   replies to submitters.
//! - [`consume`]: the reconnecting consume loop with prefetch, concurrency bound and drain.
//! - [`store`]: Redis keys of a task, the atomic Lua scripts of the fan-in, leases (acquired and
//!   released) and run counting for poison detection; one file per operation.
//! - [`finish`]: publishing what results release, review rounds, how a task ends (the decision,
//!   `finish/decide.rs`), synthesis under a lease, storing the outcome once, delivering it,
//!   cancellations and deadlines.
//! - [`graph`]: plan checks (ids, worker types, dependencies, cycles) and the first wave.
//! - [`ratelimit`]: token buckets in Redis shared by every worker of a type.
//! - [`publish`]: publishing released subtasks to their worker type's queue, child tasks,
//!   results and `subtask.<status>` events.
//! - [`kinds`]: the [`kinds::Kind`] trait, the [`kinds::Registry`], built-in kinds.
//! - [`services`]: rolling out a kind one service at a time: each service's announcement of
//!   the kinds it serves (with fingerprints), and leaving work to a live service that has it.
//! - [`client`]: submitting tasks and reading their state, as the `chorus` CLI does.
//! - [`tls`]: TLS of the connections (CA and client certificate files, telling a refused
//!   certificate apart from other connection failures).
//! - [`config`], [`telemetry`], [`shutdown`], [`runtime`], [`error`]: flags, logging, signals,
//!   a service binary's start-up and async runtime, errors.
//! - [`text`]: text from a message (names, ids, reasons) escaped and bounded for logs,
//!   dead-letter headers and outcome errors.
//! - [`files`]: the roots kinds may read files under (`--file-root`), and opening a path
//!   confined to them.
//! - [`steps`]: calling one external step (a command, a pool of processes, an HTTP endpoint)
//!   of a kind defined in a kinds file, with its failure classes.
//! - [`clock`]: wall-clock time in milliseconds since the Unix epoch, as stored and sent.
//! - [`failpoint`]: named crash and stall points for the fault-injection suite.
//! - [`usage`]: tokens and cost of model calls, as steps report them and outcomes sum them.
//! - [`observe`]: the health and metrics listener (`--http-listen`): `/healthz`, `/readyz`,
//!   `/metrics`, and the metrics services record.

pub mod admin;
pub mod amqp;
pub mod client;
pub mod clock;
pub mod config;
pub mod consume;
pub mod error;
pub mod failpoint;
pub mod files;
pub mod finish;
pub mod graph;
pub mod kinds;
pub mod observe;
pub mod protocol;
pub mod publish;
pub mod ratelimit;
pub mod runtime;
pub mod services;
pub mod shutdown;
pub mod steps;
pub mod store;
pub mod sweep;
pub mod telemetry;
pub mod text;
pub mod tls;
pub mod topology;
pub mod usage;
