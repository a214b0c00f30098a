//! Rate-limited log lines for events that can repeat thousands of times a second (a send
//! failing on every datagram, a re-backup failing for every chunk a RECLAIM evicted): at most
//! one line per call site and interval, the next one saying how many were left out.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use parking_lot::Mutex;

/// The limit of one call site (a `static`).
pub struct LogLimit {
    every: Duration,
    last: Mutex<Option<Instant>>,
    skipped: AtomicU64,
}

impl LogLimit {
    /// At most one line per `every`.
    pub const fn new(every: Duration) -> Self {
        LogLimit {
            every,
            last: Mutex::new(None),
            skipped: AtomicU64::new(0),
        }
    }

    /// Whether to log now: `Some(n)` with the `n` lines left out since the last one logged,
    /// else `None` (this one is counted and left out).
    pub fn check(&self) -> Option<u64> {
        let now = Instant::now();
        let mut last = self.last.lock();
        if last.is_some_and(|t| now.duration_since(t) < self.every) {
            self.skipped.fetch_add(1, Ordering::Relaxed);
            return None;
        }
        *last = Some(now);
        Some(self.skipped.swap(0, Ordering::Relaxed))
    }
}

/// " (and 12 more like it)" for `skipped` lines left out, else "".
pub fn more(skipped: u64) -> String {
    if skipped == 0 {
        String::new()
    } else {
        format!(" (and {skipped} more like it since the last such line)")
    }
}

/// Logs with `tracing` at `$level` through the limit `$limit` (a `static LogLimit`).
#[macro_export]
macro_rules! log_limited {
    ($limit:expr, $level:ident, $($arg:tt)+) => {
        if let Some(skipped) = $limit.check() {
            tracing::$level!("{}{}", format_args!($($arg)+), $crate::log_limit::more(skipped));
        }
    };
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_line_per_interval_then_the_count_of_those_left_out() {
        let limit = LogLimit::new(Duration::from_millis(200));
        assert_eq!(limit.check(), Some(0));
        assert_eq!(limit.check(), None);
        assert_eq!(limit.check(), None);
        std::thread::sleep(Duration::from_millis(250));
        assert_eq!(limit.check(), Some(2));
        assert_eq!(limit.check(), None);
        assert_eq!(more(0), "");
        assert_eq!(more(3), " (and 3 more like it since the last such line)");
    }
}
