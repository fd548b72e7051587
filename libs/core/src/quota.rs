//! The per-principal quota on access events that name subjects
//! (`audit.max_subject_events_per_minute`): one cheap call could make thousands
//! of audit entries (a BatchCheckConsent names 10,000 subjects), so a principal
//! may cause at most N of them a minute, and a call that would go over is
//! refused with RESOURCE_EXHAUSTED and a `RetryInfo`, before it writes anything.
//!
//! Reads that name subjects take from it, one per subject named (CheckConsent 1,
//! BatchCheckConsent its subjects, ListConsentEvents, ListSubjectConsents and
//! ListSubjectAccesses their identifiers, ListEvents by subject 1). Writes do
//! not: a withdrawal or objection refused for a quota would keep a subject from
//! exercising a right that must stay as easy as giving consent (Art. 7(3),
//! 21), and writes are paced by their durable commits anyway.
//!
//! The built-in `admin` principal is exempt. It holds every scope (it can
//! shred the log or erase subjects), so a quota would contain nothing its
//! holder cannot do worse; it is the operator's own token, for back-fills and
//! for the load generator, which checks consent at 40,000-60,000 a second as
//! `admin`. The callers the quota is for are the configured principals, the
//! systems that integrate with custodia (a CRM, a web banner).
//!
//! The limiter is `governor`'s GCRA, keyed by principal: a principal may spend
//! N at once, and gets them back at N a minute. A call naming more than N
//! subjects never fits (RESOURCE_EXHAUSTED without a `RetryInfo`): a quota
//! below 10,000 refuses a full BatchCheckConsent outright. Its clock is the service clock,
//! so tests move its time instead of sleeping. The state is per process: with
//! several replicas, each has its own quota.

use std::{num::NonZeroU32, sync::Arc, time::Duration};

use governor::{
    Quota, RateLimiter, clock::Clock as GovernorClock, middleware::NoOpMiddleware, nanos::Nanos,
    state::keyed::DefaultKeyedStateStore,
};

use crate::{ApiError, auth::ADMIN_PRINCIPAL, legal_time::Clock};

/// The service clock as `governor` reads time: nanoseconds since the epoch
/// (0 before it).
#[derive(Debug, Clone)]
struct ServiceClock(Arc<dyn Clock>);

impl GovernorClock for ServiceClock {
    type Instant = Nanos;

    fn now(&self) -> Nanos {
        let now = self.0.now();
        let nanos = now.timestamp_nanos_opt().unwrap_or(0).max(0);
        Nanos::from(nanos as u64)
    }
}

type Limiter =
    RateLimiter<String, DefaultKeyedStateStore<String>, ServiceClock, NoOpMiddleware<Nanos>>;

/// Each principal's allowance of access events naming a subject; cheap to
/// clone (clones share the allowance).
#[derive(Clone)]
pub struct SubjectQuota {
    /// `None` when the quota is off.
    limiter: Option<Arc<Limiter>>,
    per_minute: u32,
}

impl std::fmt::Debug for SubjectQuota {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SubjectQuota")
            .field("per_minute", &self.per_minute)
            .finish_non_exhaustive()
    }
}

impl SubjectQuota {
    /// `per_minute` events per principal and minute on `clock`; 0: no quota.
    pub fn new(per_minute: u32, clock: Arc<dyn Clock>) -> Self {
        let limiter = NonZeroU32::new(per_minute).map(|n| {
            Arc::new(RateLimiter::new(
                Quota::per_minute(n),
                DefaultKeyedStateStore::default(),
                ServiceClock(clock),
            ))
        });
        Self {
            limiter,
            per_minute,
        }
    }

    /// Takes `events` from `principal`'s allowance, all or none. RESOURCE_EXHAUSTED
    /// when they do not fit: with when they will, or without when they never
    /// can (more than the quota at once).
    pub fn take(&self, principal: &str, events: usize) -> Result<(), ApiError> {
        let Some(limiter) = &self.limiter else {
            return Ok(());
        };
        let Some(n) = NonZeroU32::new(u32::try_from(events).unwrap_or(u32::MAX)) else {
            return Ok(());
        };
        if principal == ADMIN_PRINCIPAL {
            return Ok(());
        }
        let per_minute = self.per_minute;
        match limiter.check_key_n(&principal.to_string(), n) {
            Ok(Ok(())) => Ok(()),
            Ok(Err(not_until)) => {
                let wait = not_until.wait_time_from(limiter.clock().now());
                // Whole milliseconds, at least one: a zero delay reads as "now".
                let wait = Duration::from_millis(
                    u64::try_from(wait.as_millis()).unwrap_or(u64::MAX).max(1),
                );
                Err(ApiError::ResourceExhausted {
                    message: format!(
                        "principal `{principal}` has used its quota of {per_minute} subject \
                         access events per minute (audit.max_subject_events_per_minute); \
                         these {events} fit again in {} ms",
                        wait.as_millis()
                    ),
                    retry_after: Some(wait),
                })
            }
            Err(_) => Err(ApiError::ResourceExhausted {
                message: format!(
                    "this call names {events} subjects, more than the quota of {per_minute} \
                     subject access events per minute (audit.max_subject_events_per_minute) \
                     allows at once"
                ),
                retry_after: None,
            }),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::legal_time::ManualClock;

    fn quota(per_minute: u32) -> (SubjectQuota, ManualClock) {
        let clock = ManualClock::new("2026-11-02T09:00:00Z".parse().unwrap());
        let quota = SubjectQuota::new(per_minute, Arc::new(clock.clone()));
        (quota, clock)
    }

    fn retry_after(result: Result<(), ApiError>) -> Option<Duration> {
        match result {
            Err(ApiError::ResourceExhausted { retry_after, .. }) => retry_after,
            other => panic!("expected RESOURCE_EXHAUSTED, got {other:?}"),
        }
    }

    #[test]
    fn a_principal_spends_its_quota_then_waits_for_it() {
        let (quota, clock) = quota(600);
        quota.take("crm", 600).expect("the whole quota at once");
        // 600 a minute: one back every 100 ms.
        let wait = retry_after(quota.take("crm", 1)).expect("a time to retry");
        assert_eq!(wait, Duration::from_millis(100));
        assert_eq!(
            retry_after(quota.take("crm", 10)),
            Some(Duration::from_secs(1))
        );
        clock.advance(chrono::Duration::milliseconds(999));
        assert!(quota.take("crm", 10).is_err(), "not yet");
        clock.advance(chrono::Duration::milliseconds(1));
        quota.take("crm", 10).expect("10 back after a second");
        assert!(quota.take("crm", 1).is_err(), "and no more");
        clock.advance(chrono::Duration::minutes(1));
        quota.take("crm", 600).expect("all back after a minute");
    }

    #[test]
    fn a_refused_call_takes_nothing() {
        let (quota, _) = quota(100);
        quota.take("crm", 60).unwrap();
        assert!(quota.take("crm", 41).is_err());
        quota
            .take("crm", 40)
            .expect("the refused 41 were not taken");
    }

    #[test]
    fn principals_have_their_own_quotas() {
        let (quota, _) = quota(100);
        quota.take("crm", 100).unwrap();
        assert!(quota.take("crm", 1).is_err());
        quota
            .take("web-banner", 100)
            .expect("another principal's own");
    }

    #[test]
    fn more_than_the_quota_at_once_never_fits() {
        let (quota, _) = quota(100);
        assert_eq!(retry_after(quota.take("crm", 101)), None);
        quota.take("crm", 100).expect("and took nothing");
    }

    #[test]
    fn off_and_admin_and_nothing_named_are_free() {
        let (off, _) = quota(0);
        off.take("crm", 1_000_000).unwrap();
        let (quota, _) = quota(1);
        quota.take(ADMIN_PRINCIPAL, 1_000_000).unwrap();
        quota.take("crm", 0).unwrap();
        quota.take("crm", 1).unwrap();
        assert!(quota.take("crm", 1).is_err());
    }
}
