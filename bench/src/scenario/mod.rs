//! One file per scenario, named as `--only` names it; each exposes `run`, which prints its
//! section and adds its rows to the report. A scenario imports the helpers (`crate::fixture`,
//! `opts`, `report`, `load`, `stats`, `procs`, `echo`, `raw`, `redis_lock`), never another
//! scenario; no helper imports a scenario or `main`.

pub mod attack;
pub mod cluster;
pub mod contention;
pub mod embedded;
pub mod expiry;
pub mod memory;
pub mod metrics;
pub mod recall;
pub mod seq;
pub mod table;
pub mod throughput;
