//! When to tell about a failing backend, so that one that is down for an hour cannot flood the
//! application's logs: the first failure in full, then at most one summary per interval while the
//! failures go on, then one line when a flush works again.

use std::time::{Duration, Instant};

/// What to tell after a flush, if anything.
#[derive(Debug, Clone, PartialEq)]
pub enum Report {
    /// The first failure since the backend last worked (or ever): tell it in full.
    First,
    /// The failures go on: `failed` more flushes failed since the last report, `since` ago.
    StillFailing { failed: u64, since: Duration },
    /// A flush worked after `failed` failed ones in a row.
    Recovered { failed: u64 },
}

/// The state behind [`Report`]s, one per buffer. Time is passed in, so that it can be tested.
#[derive(Debug, Clone)]
pub struct FailureLog {
    interval: Duration,
    /// Failed flushes in a row, up to now (0: the backend works).
    in_a_row: u64,
    /// When the last report was made, and the failed flushes since then.
    last_report: Option<Instant>,
    untold: u64,
}

impl FailureLog {
    /// At most one [`Report::StillFailing`] per `interval`.
    pub fn new(interval: Duration) -> Self {
        FailureLog {
            interval,
            in_a_row: 0,
            last_report: None,
            untold: 0,
        }
    }

    /// Whether the last flush failed.
    pub fn failing(&self) -> bool {
        self.in_a_row > 0
    }

    /// A flush failed at `now`.
    pub fn failed(&mut self, now: Instant) -> Option<Report> {
        self.in_a_row += 1;
        let Some(last) = self.last_report.filter(|_| self.in_a_row > 1) else {
            self.last_report = Some(now);
            self.untold = 0;
            return Some(Report::First);
        };
        self.untold += 1;
        let since = now.saturating_duration_since(last);
        if since < self.interval {
            return None;
        }
        self.last_report = Some(now);
        let failed = std::mem::take(&mut self.untold);
        Some(Report::StillFailing { failed, since })
    }

    /// A flush worked.
    pub fn succeeded(&mut self) -> Option<Report> {
        let failed = std::mem::take(&mut self.in_a_row);
        self.untold = 0;
        (failed > 0).then_some(Report::Recovered { failed })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_report_then_one_summary_per_interval_then_one_on_recovery() {
        let start = Instant::now();
        let at = |s: u64| start + Duration::from_secs(s);
        let mut log = FailureLog::new(Duration::from_secs(60));
        assert_eq!(log.succeeded(), None, "nothing to tell while it works");
        assert_eq!(log.failed(at(0)), Some(Report::First));
        for s in 1..60 {
            assert_eq!(log.failed(at(s)), None, "second {s}");
        }
        assert_eq!(
            log.failed(at(60)),
            Some(Report::StillFailing {
                failed: 60,
                since: Duration::from_secs(60)
            })
        );
        assert_eq!(log.failed(at(61)), None);
        assert!(log.failing());
        assert_eq!(log.succeeded(), Some(Report::Recovered { failed: 62 }));
        assert!(!log.failing());
        assert_eq!(log.succeeded(), None);
        // A new run of failures starts with a full report again, however soon.
        assert_eq!(log.failed(at(62)), Some(Report::First));
        assert_eq!(log.failed(at(63)), None);
    }

    #[test]
    fn with_no_interval_every_failure_after_the_first_is_summarised() {
        let now = Instant::now();
        let mut log = FailureLog::new(Duration::ZERO);
        assert_eq!(log.failed(now), Some(Report::First));
        for _ in 0..3 {
            assert_eq!(
                log.failed(now),
                Some(Report::StillFailing {
                    failed: 1,
                    since: Duration::ZERO
                })
            );
        }
        assert_eq!(log.succeeded(), Some(Report::Recovered { failed: 4 }));
    }
}
