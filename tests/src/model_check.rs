//! What the checked models share (`model.rs`, `replica_model.rs`): an exhaustive
//! breadth-first check that reports the properties that failed — an `always` with a
//! counterexample, a `sometimes` without an example.

use std::hash::Hash;

use stateright::{Checker, Expectation, HasDiscoveries, Model};

/// The name of the exclusion property every model checks.
pub(crate) const EXCLUSION: &str = "one holder at a time";

/// Checks `model` exhaustively — a `broken` variant only until exclusion fails — and returns
/// the names of the properties that failed and the number of states explored.
pub(crate) fn check<M>(model: M, broken: bool) -> (Vec<&'static str>, usize)
where
    M: Model + Send + Sync + 'static,
    M::State: Hash + Send + Sync + Clone + PartialEq + 'static,
    M::Action: Clone + PartialEq,
{
    let properties: Vec<(&'static str, bool)> = model
        .properties()
        .iter()
        .map(|p| (p.name, matches!(p.expectation, Expectation::Always)))
        .collect();
    let mut builder = model.checker();
    if broken {
        let exclusion = std::collections::BTreeSet::from([EXCLUSION]);
        builder = builder.finish_when(HasDiscoveries::AnyOf(exclusion));
    }
    let checker = builder.spawn_bfs().join();
    let failed = properties
        .into_iter()
        .filter(|(name, is_always)| checker.discovery(name).is_some() == *is_always)
        .map(|(name, _)| name)
        .collect();
    (failed, checker.unique_state_count())
}
