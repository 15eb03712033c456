//! When to tell about a failing backend, so that one that is down for an hour, or that fails and
//! works by turns, cannot flood the application's logs. The first failure is told in full. After
//! that, at most one failure record per interval: a summary while failures go on, or, after a
//! quiet interval with nothing failed since the last record, a new failure in full. A flush that
//! works after a failure record gets one line saying so, and that line is owed once per failure
//! record: a backend that fails and works by turns gives at most two records per interval.

use std::time::{Duration, Instant};

/// What to tell after a flush, if anything.
#[derive(Debug, Clone, PartialEq)]
pub enum Report {
    /// A failure after nothing failed untold: tell it in full.
    First,
    /// Failures went on: `failed` more flushes failed since the last record, `since` ago, and
    /// flushes worked `recovered` times in between without being told.
    StillFailing {
        failed: u64,
        since: Duration,
        recovered: u64,
    },
    /// A flush worked after `failed` failed ones since the last line that said so (or ever).
    Recovered { failed: u64 },
}

/// The state behind [`Report`]s, one per buffer. Time is passed in, so that it can be tested.
#[derive(Debug, Clone)]
pub struct FailureLog {
    interval: Duration,
    /// Failed flushes in a row, up to now (0: the last flush worked).
    in_a_row: u64,
    /// When the last failure record was made.
    last_failure_record: Option<Instant>,
    /// Failed flushes, and failed-then-working turns, since the last record.
    untold: u64,
    untold_recoveries: u64,
    /// Failed flushes since the last recovery line.
    since_recovered: u64,
    /// Whether the last record said the backend fails, so that a recovery line is owed.
    owed_recovery: bool,
}

impl FailureLog {
    /// At most one failure record per `interval`.
    pub fn new(interval: Duration) -> Self {
        FailureLog {
            interval,
            in_a_row: 0,
            last_failure_record: None,
            untold: 0,
            untold_recoveries: 0,
            since_recovered: 0,
            owed_recovery: false,
        }
    }

    /// Whether [`succeeded`](Self::succeeded) has anything to do: the last flush failed, or a
    /// recovery line is owed.
    pub fn failing(&self) -> bool {
        self.in_a_row > 0 || self.owed_recovery
    }

    /// A flush failed at `now`.
    pub fn failed(&mut self, now: Instant) -> Option<Report> {
        self.in_a_row += 1;
        self.since_recovered += 1;
        let since = self
            .last_failure_record
            .map(|last| now.saturating_duration_since(last));
        if since.is_some_and(|since| since < self.interval) {
            self.untold += 1;
            return None;
        }
        self.last_failure_record = Some(now);
        // The same trouble goes on if the last record said it fails, or failures went untold.
        let going_on = std::mem::replace(&mut self.owed_recovery, true) || self.untold > 0;
        let failed = std::mem::take(&mut self.untold) + 1;
        let recovered = std::mem::take(&mut self.untold_recoveries);
        match since {
            Some(since) if going_on => Some(Report::StillFailing {
                failed,
                since,
                recovered,
            }),
            _ => Some(Report::First),
        }
    }

    /// A flush worked.
    pub fn succeeded(&mut self) -> Option<Report> {
        if std::mem::take(&mut self.in_a_row) > 0 && !self.owed_recovery {
            self.untold_recoveries += 1;
        }
        if !std::mem::take(&mut self.owed_recovery) {
            return None;
        }
        (self.untold, self.untold_recoveries) = (0, 0);
        let failed = std::mem::take(&mut self.since_recovered);
        Some(Report::Recovered { failed })
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
        assert!(!log.failing());
        assert_eq!(log.failed(at(0)), Some(Report::First));
        for s in 1..60 {
            assert_eq!(log.failed(at(s)), None, "second {s}");
        }
        assert_eq!(
            log.failed(at(60)),
            Some(Report::StillFailing {
                failed: 60,
                since: Duration::from_secs(60),
                recovered: 0,
            })
        );
        assert_eq!(log.failed(at(61)), None);
        assert!(log.failing());
        assert_eq!(log.succeeded(), Some(Report::Recovered { failed: 62 }));
        assert!(!log.failing());
        assert_eq!(log.succeeded(), None);
        // A new run of failures within the interval is not told at once, but with the next
        // record, as part of the same trouble.
        assert_eq!(log.failed(at(62)), None);
        assert_eq!(log.failed(at(63)), None);
        assert_eq!(
            log.succeeded(),
            None,
            "no record said it failed: no line owed"
        );
        assert_eq!(
            log.failed(at(120)),
            Some(Report::StillFailing {
                failed: 3,
                since: Duration::from_secs(60),
                recovered: 1,
            })
        );
        assert_eq!(log.succeeded(), Some(Report::Recovered { failed: 3 }));
    }

    #[test]
    fn a_backend_that_fails_and_works_by_turns_gives_two_records_per_interval() {
        let start = Instant::now();
        let mut log = FailureLog::new(Duration::from_secs(60));
        let mut records = Vec::new();
        for s in 0..600 {
            if let Some(r) = log.failed(start + Duration::from_secs(s)) {
                records.push(r);
            }
            if let Some(r) = log.succeeded() {
                records.push(r);
            }
        }
        assert_eq!(records.len(), 20, "{records:?}");
        assert_eq!(records[0], Report::First);
        assert_eq!(records[1], Report::Recovered { failed: 1 });
        for pair in records[2..].chunks(2) {
            assert_eq!(
                pair,
                [
                    Report::StillFailing {
                        failed: 60,
                        since: Duration::from_secs(60),
                        recovered: 59,
                    },
                    Report::Recovered { failed: 60 },
                ]
            );
        }
    }

    #[test]
    fn a_new_failure_after_a_quiet_interval_is_told_in_full() {
        let start = Instant::now();
        let mut log = FailureLog::new(Duration::from_secs(60));
        assert_eq!(log.failed(start), Some(Report::First));
        assert_eq!(log.succeeded(), Some(Report::Recovered { failed: 1 }));
        let later = start + Duration::from_secs(61);
        assert_eq!(log.failed(later), Some(Report::First));
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
                    since: Duration::ZERO,
                    recovered: 0,
                })
            );
        }
        assert_eq!(log.succeeded(), Some(Report::Recovered { failed: 4 }));
        assert_eq!(log.failed(now), Some(Report::First));
    }
}
