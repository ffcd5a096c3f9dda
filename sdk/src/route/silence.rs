//! Brokers a client left for not answering in time (a stopped or frozen process, a partition),
//! kept until they answer again. While a broker is *silent* the client sends it nothing new:
//! a `Moved` answer that names it is treated as "no owner yet" (another broker is asked again
//! after a pause), so a client is not sent back by a shard map that still names a frozen
//! owner — whose ownership lease has not run out yet — to wait one more bound there. A probe
//! (`brokers.rs`) connects to each silent broker every [`PROBE_EVERY`]; the first handshake
//! it answers ends its silence, as does [`SILENCE_AT_MOST`].

use std::collections::HashMap;
use std::time::{Duration, Instant};

use parking_lot::Mutex;

use super::target::Target;

/// How often a silent broker is probed.
pub(crate) const PROBE_EVERY: Duration = Duration::from_millis(250);

/// The longest a broker stays silent without answering a probe: after it the client tries it
/// again as any broker (a broker that is really gone fails fast, and is left again).
pub(crate) const SILENCE_AT_MOST: Duration = Duration::from_secs(60);

/// The silent brokers, with when each was left.
#[derive(Default)]
pub(crate) struct Silence {
    since: Mutex<HashMap<Target, Instant>>,
}

impl Silence {
    /// Marks `target` silent. True if it was not already (the caller starts its probe).
    pub(crate) fn mark(&self, target: &Target) -> bool {
        self.since
            .lock()
            .insert(target.clone(), Instant::now())
            .is_none()
    }

    /// Ends `target`'s silence (it answered, or its probe gave up).
    pub(crate) fn lift(&self, target: &Target) {
        self.since.lock().remove(target);
    }

    /// Whether `target` is silent now.
    pub(crate) fn contains(&self, target: &Target) -> bool {
        let mut since = self.since.lock();
        match since.get(target) {
            Some(at) if at.elapsed() < SILENCE_AT_MOST => true,
            Some(_) => {
                since.remove(target);
                false
            }
            None => false,
        }
    }

    /// `targets` in their order, the silent ones last.
    pub(crate) fn answering_first(&self, targets: &[Target]) -> Vec<Target> {
        let (mut ordered, silent): (Vec<Target>, Vec<Target>) =
            targets.iter().cloned().partition(|t| !self.contains(t));
        ordered.extend(silent);
        ordered
    }
}

#[cfg(test)]
mod tests {
    use super::Silence;
    use crate::route::target::parse_url;

    #[test]
    fn a_silent_broker_is_tried_last_until_lifted() {
        let a = parse_url("quic://a:1").unwrap();
        let b = parse_url("quic://b:2").unwrap();
        let silence = Silence::default();
        assert!(silence.mark(&a));
        assert!(!silence.mark(&a), "already silent: no second probe");
        assert!(silence.contains(&a) && !silence.contains(&b));
        assert_eq!(
            silence.answering_first(&[a.clone(), b.clone()]),
            vec![b.clone(), a.clone()]
        );
        silence.lift(&a);
        assert!(!silence.contains(&a));
        assert_eq!(silence.answering_first(&[a.clone(), b.clone()]), vec![a, b]);
    }
}
