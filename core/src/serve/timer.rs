//! When the one expiry task must be woken: it sleeps until the deadline it was armed for, and
//! an operation that brings the table's next deadline before that (or gives a sleeping timer
//! its first) must wake it. Kept beside the table, under the driver's table lock.

use std::time::Instant;

use crate::Table;

/// The deadline the expiry task is armed for (`None`: it sleeps until woken).
#[derive(Debug, Default)]
pub struct Timer {
    armed: Option<Instant>,
}

impl Timer {
    /// After an operation on `table`: true when the expiry task must be woken (the next
    /// deadline moved before the one it sleeps until, or it sleeps without one); it is then
    /// counted as armed for the new deadline.
    pub fn after_op(&mut self, table: &Table) -> bool {
        let next = table.next_deadline();
        let wake = match (next, self.armed) {
            (Some(n), Some(a)) => n < a,
            (Some(_), None) => true,
            (None, _) => false,
        };
        if wake {
            self.armed = next;
        }
        wake
    }

    /// The expiry task arms itself: the table's next deadline, which it sleeps until.
    pub fn arm(&mut self, table: &Table) -> Option<Instant> {
        self.armed = table.next_deadline();
        self.armed
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::serve::{Outcome, Request, apply};
    use crate::{AcquireRequest, TableConfig, Wait};
    use bytes::Bytes;
    use std::time::Duration;

    fn lock(t: &mut Table, now: Instant, key: &'static [u8], ttl: Duration) {
        let r = Request::Acquire(AcquireRequest {
            session: 1,
            req: 0,
            key: Bytes::from_static(key),
            mode: crate::Mode::Exclusive,
            ttl,
            wait: Wait::No,
            owner: None,
            ticket: 0,
            fence_block: 1,
        });
        assert!(matches!(
            apply(t, now, 1, r, &mut Vec::new()),
            Ok(Outcome::Granted(_))
        ));
    }

    #[test]
    fn the_timer_is_woken_only_for_an_earlier_deadline() {
        let mut t = Table::new(TableConfig::default());
        let mut timer = Timer::default();
        let now = Instant::now();
        assert!(!timer.after_op(&t), "no deadline: nothing to wake for");
        lock(&mut t, now, b"a", Duration::from_secs(10));
        assert!(
            timer.after_op(&t),
            "a sleeping timer gets its first deadline"
        );
        lock(&mut t, now, b"b", Duration::from_secs(20));
        assert!(
            !timer.after_op(&t),
            "a later deadline waits for the armed one"
        );
        lock(&mut t, now, b"c", Duration::from_secs(5));
        assert!(timer.after_op(&t), "an earlier deadline wakes it");
        assert_eq!(timer.arm(&t), Some(now + Duration::from_secs(5)));
    }
}
