//! Writes the database could not take (a full disk, a read-only file system): kept in
//! memory, in order, and retried; beyond [`HELD_MAX`] the oldest go, and what went is
//! tallied so that, once writing resumes, one gap record says which alerts were not stored.

use std::collections::VecDeque;

use super::Write;
use crate::alert::Update;

/// Writes held at most (an alert document is a few KiB: tens of MiB at worst).
pub const HELD_MAX: usize = 10_000;

/// Alerts that were never stored: how many, and when they first and last happened.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Unstored {
    pub alerts: u64,
    pub first_ms: u64,
    pub last_ms: u64,
}

impl Unstored {
    fn add(&mut self, at_ms: u64) {
        self.first_ms = if self.alerts == 0 {
            at_ms
        } else {
            self.first_ms.min(at_ms)
        };
        self.last_ms = self.last_ms.max(at_ms);
        self.alerts += 1;
    }
}

/// The held writes and what was dropped from them.
#[derive(Debug, Default)]
pub struct Held {
    writes: VecDeque<Write>,
    unstored: Unstored,
    dropped_total: u64,
    max: usize,
}

impl Held {
    pub fn new(max: usize) -> Held {
        Held {
            writes: VecDeque::new(),
            unstored: Unstored::default(),
            dropped_total: 0,
            max,
        }
    }

    pub fn is_empty(&self) -> bool {
        self.writes.is_empty()
    }

    pub fn len(&self) -> usize {
        self.writes.len()
    }

    /// Holds `batch` after what is held (flushes are answered: nothing more will come of
    /// them); the oldest beyond the bound are dropped and new alerts among them tallied.
    pub fn hold(&mut self, batch: impl IntoIterator<Item = Write>) {
        for w in batch {
            match w {
                Write::Flush(done) => {
                    let _ = done.send(());
                }
                w => self.writes.push_back(w),
            }
        }
        while self.writes.len() > self.max {
            if let Some(Write::Alert(Update::New(ev))) = self.writes.pop_front() {
                self.unstored.add(ev.last_ms);
                self.dropped_total += 1;
            }
        }
    }

    /// Alerts dropped since the start.
    pub fn dropped_total(&self) -> u64 {
        self.dropped_total
    }

    /// Everything held, oldest first, to be written before anything newer.
    pub fn take(&mut self) -> Vec<Write> {
        self.writes.drain(..).collect()
    }

    /// What was dropped since the last call.
    pub fn take_unstored(&mut self) -> Option<Unstored> {
        let u = std::mem::take(&mut self.unstored);
        (u.alerts > 0).then_some(u)
    }

    /// Puts an unstored tally back (its gap record could not be written).
    pub fn restore_unstored(&mut self, u: Unstored) {
        if self.unstored.alerts == 0 {
            self.unstored = u;
        } else {
            self.unstored.alerts += u.alerts;
            self.unstored.first_ms = self.unstored.first_ms.min(u.first_ms);
            self.unstored.last_ms = self.unstored.last_ms.max(u.last_ms);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::test_support::event;

    fn new_alert(last_ms: u64) -> Write {
        let mut e = event("10.0.0.1", last_ms);
        e.last_ms = last_ms;
        Write::Alert(Update::New(Box::new(e)))
    }

    #[test]
    fn the_oldest_go_beyond_the_bound_and_are_tallied() {
        let mut h = Held::new(3);
        h.hold([new_alert(10), Write::Counter("x", 1), new_alert(30)]);
        assert_eq!(h.len(), 3);
        assert_eq!(h.take_unstored(), None);
        h.hold([new_alert(40), new_alert(50)]);
        assert_eq!(h.len(), 3);
        // Dropped: the alert of 10 and the counter (not an alert: not tallied).
        assert_eq!(
            h.take_unstored(),
            Some(Unstored {
                alerts: 1,
                first_ms: 10,
                last_ms: 10
            })
        );
        let kept = h.take();
        let times: Vec<u64> = kept
            .iter()
            .filter_map(|w| match w {
                Write::Alert(Update::New(e)) => Some(e.last_ms),
                _ => None,
            })
            .collect();
        assert_eq!(times, [30, 40, 50]);
        assert!(h.is_empty());
    }

    #[test]
    fn flushes_are_answered_not_held_and_tallies_add_up() {
        let mut h = Held::new(1);
        let (tx, rx) = std::sync::mpsc::channel();
        h.hold([Write::Flush(tx)]);
        assert!(h.is_empty());
        assert!(rx.try_recv().is_ok());
        h.hold([new_alert(20), new_alert(5), new_alert(7)]);
        assert_eq!(h.dropped_total(), 2);
        let u = h.take_unstored().expect("two dropped");
        assert_eq!((u.alerts, u.first_ms, u.last_ms), (2, 5, 20));
        h.restore_unstored(u);
        h.restore_unstored(Unstored {
            alerts: 1,
            first_ms: 1,
            last_ms: 2,
        });
        assert_eq!(
            h.take_unstored(),
            Some(Unstored {
                alerts: 3,
                first_ms: 1,
                last_ms: 20
            })
        );
    }
}
