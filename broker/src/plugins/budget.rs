//! A plugin call's time budget, counted in CPU time of the thread running it.
//!
//! The epoch ticker (`engine`) makes a running call look at its clock every tick
//! ([`CallClock::tick`]). What is charged is the CPU time the call's thread used between ticks,
//! so a call that spins is stopped after about its budget of running time (between `budget`
//! and `budget + 2 TICK` after it started: the first tick starts the count), while a call
//! whose thread is off the CPU — a loaded machine, other threads running — is not charged for
//! that time, however many ticks pass meanwhile (a 1 ms budget failed spuriously on a loaded
//! 2-core CI machine when every tick observed counted as running time).
//!
//! A call that waits in the host (a mirror plugin's Redis I/O) is not charged for the wait
//! either: its thread runs other tasks meanwhile, and the clock starts again when it resumes
//! ([`CallClock::resumed`]); Redis time is bounded by the connections' own timeouts.
//!
//! Backstop: a call may observe at most `WALL_SLACK` times its budget in ticks, whatever its
//! CPU clock says (time the thread's clock cannot see: a call moved to another thread while it
//! waited in the host). Where the thread CPU clock cannot be read, every tick observed counts
//! as a tick of running time.

use std::thread::ThreadId;
use std::time::Duration;

use super::engine::{TICK, deadline_ticks};

/// The backstop, in multiples of a call's budget in ticks.
const WALL_SLACK: u64 = 8;

/// The clock of one call (or one instantiation) of a plugin.
#[derive(Debug, Default)]
pub struct CallClock {
    budget: Duration,
    /// Running time charged so far.
    used: Duration,
    /// Ticks the call may still observe (the backstop).
    ticks_left: u64,
    /// The call's thread and its CPU clock at the last tick (`None` before the first tick).
    last: Option<(ThreadId, Duration)>,
}

impl CallClock {
    /// The clock of a call allowed `budget` of running time (no system call: most calls end
    /// before the first tick).
    pub fn start(budget: Duration) -> CallClock {
        CallClock {
            budget,
            used: Duration::ZERO,
            ticks_left: deadline_ticks(budget).saturating_mul(WALL_SLACK),
            last: None,
        }
    }

    /// The call resumes after waiting in the host (a mirror plugin's Redis I/O): what its
    /// thread ran meanwhile — other tasks — is not charged; counting starts again at the next
    /// tick.
    pub fn resumed(&mut self) {
        self.last = None;
    }

    /// One epoch tick observed by the running call, on the call's thread: `false` when the
    /// call has used its budget and must be interrupted.
    pub fn tick(&mut self) -> bool {
        self.ticks_left = self.ticks_left.saturating_sub(1);
        if self.ticks_left == 0 {
            return false;
        }
        let here = std::thread::current().id();
        let now = thread_cpu();
        match (now, self.last) {
            (Some(cpu), Some((thread, before))) if thread == here => {
                self.used += cpu.saturating_sub(before);
            }
            // The first tick, or the call moved threads: counted from here on.
            (Some(_), _) => {}
            (None, _) => self.used += TICK,
        }
        self.last = now.map(|cpu| (here, cpu));
        self.used < self.budget
    }
}

/// The CPU time the calling thread has used, if the OS tells.
fn thread_cpu() -> Option<Duration> {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: `ts` is a valid, writable timespec for the duration of the call.
    let rc = unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut ts) };
    if rc != 0 {
        return None;
    }
    let secs = u64::try_from(ts.tv_sec).ok()?;
    let nanos = u32::try_from(ts.tv_nsec).ok()?;
    Some(Duration::new(secs, nanos))
}

#[cfg(test)]
mod tests {
    use std::time::Instant;

    use super::*;

    /// Spins until this thread has used `d` more CPU time.
    fn spin_cpu(d: Duration) {
        let start = thread_cpu().expect("a thread CPU clock");
        let bound = Instant::now() + Duration::from_secs(10);
        while thread_cpu().expect("a thread CPU clock") - start < d && Instant::now() < bound {
            std::hint::black_box(0u64);
        }
    }

    #[test]
    fn a_call_that_runs_is_stopped_after_its_budget() {
        let mut clock = CallClock::start(Duration::from_millis(1));
        let mut ticks = 0;
        while clock.tick() {
            spin_cpu(TICK);
            ticks += 1;
            assert!(ticks < 10, "never stopped");
        }
        // The first tick starts the count; then a tick of running time each.
        assert!((2..=4).contains(&ticks), "{ticks} ticks");
    }

    #[test]
    fn what_the_thread_ran_while_the_call_waited_in_the_host_is_not_charged() {
        let mut clock = CallClock::start(Duration::from_millis(1));
        assert!(clock.tick());
        // Another task on this thread while the call waits for Redis.
        spin_cpu(Duration::from_millis(3));
        clock.resumed();
        assert!(clock.tick(), "charged for another task's time");
        spin_cpu(Duration::from_millis(2));
        assert!(!clock.tick(), "its own running time is charged");
    }

    /// The CI failure: a call whose thread was off the CPU across several ticks (a loaded
    /// machine) was interrupted as if it had run; it is charged only what it ran.
    #[test]
    fn a_call_off_the_cpu_is_not_charged_for_the_wait() {
        let mut clock = CallClock::start(Duration::from_millis(1));
        for i in 0..20 {
            std::thread::sleep(TICK);
            assert!(clock.tick(), "interrupted at tick {i} while sleeping");
        }
        // The backstop: 8 times the budget in ticks (3 × 8 = 24 observed).
        let more = (0..10).take_while(|_| clock.tick()).count();
        assert_eq!(more, 3, "the backstop");
    }
}
