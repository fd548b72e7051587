//! The source of "now": the system clock in production, a manual one in tests.

use std::sync::{Arc, Mutex, PoisonError};

use chrono::{DateTime, Duration, Utc};

/// Tells the current time; services hold an `Arc<dyn Clock>`.
pub trait Clock: Send + Sync + std::fmt::Debug {
    /// The current instant.
    fn now(&self) -> DateTime<Utc>;
}

/// The operating system's clock.
#[derive(Debug, Clone, Copy, Default)]
pub struct SystemClock;

impl Clock for SystemClock {
    fn now(&self) -> DateTime<Utc> {
        Utc::now()
    }
}

/// A clock that only moves when told to; clones share the same time.
#[derive(Debug, Clone)]
pub struct ManualClock {
    now: Arc<Mutex<DateTime<Utc>>>,
}

impl ManualClock {
    /// A clock stopped at `now`.
    pub fn new(now: DateTime<Utc>) -> Self {
        Self {
            now: Arc::new(Mutex::new(now)),
        }
    }

    /// Moves the clock to `now` (backwards is allowed).
    pub fn set(&self, now: DateTime<Utc>) {
        *self.lock() = now;
    }

    /// Moves the clock by `by` (negative moves it back).
    ///
    /// # Panics
    /// If the result leaves chrono's range (year ±262,143).
    pub fn advance(&self, by: Duration) {
        let mut now = self.lock();
        *now = now
            .checked_add_signed(by)
            .expect("ManualClock advanced out of chrono's range");
    }

    // A panic while holding the lock cannot leave a half-written instant, so a
    // poisoned lock is still safe to use.
    fn lock(&self) -> std::sync::MutexGuard<'_, DateTime<Utc>> {
        self.now.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

impl Clock for ManualClock {
    fn now(&self) -> DateTime<Utc> {
        *self.lock()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(s: &str) -> DateTime<Utc> {
        s.parse().expect("timestamp")
    }

    #[test]
    fn manual_clock_starts_where_told() {
        let clock = ManualClock::new(at("2026-11-02T09:00:00Z"));
        assert_eq!(clock.now(), at("2026-11-02T09:00:00Z"));
    }

    #[test]
    fn manual_clock_advances_and_sets() {
        let clock = ManualClock::new(at("2026-11-02T09:00:00Z"));
        clock.advance(Duration::hours(71) + Duration::minutes(59));
        assert_eq!(clock.now(), at("2026-11-05T08:59:00Z"));
        clock.advance(Duration::seconds(-59));
        assert_eq!(clock.now(), at("2026-11-05T08:58:01Z"));
        clock.set(at("2030-01-01T00:00:00Z"));
        assert_eq!(clock.now(), at("2030-01-01T00:00:00Z"));
    }

    #[test]
    fn manual_clock_clones_share_time_through_dyn_clock() {
        let clock = Arc::new(ManualClock::new(at("2026-01-01T00:00:00Z")));
        let shared: Arc<dyn Clock> = clock.clone();
        let cloned = (*clock).clone();
        cloned.advance(Duration::days(31));
        assert_eq!(shared.now(), at("2026-02-01T00:00:00Z"));
        assert_eq!(clock.now(), at("2026-02-01T00:00:00Z"));
    }

    #[test]
    fn system_clock_is_close_to_utc_now() {
        let before = Utc::now();
        let now = SystemClock.now();
        assert!(now >= before && now <= Utc::now());
    }
}
