//! What `CheckConsent` reads, kept in memory so a check costs no database read.
//!
//! Two caches, both only ever *hints* that are dropped the moment they may be wrong:
//!
//! - **Subject states** (the current row of a subject for a purpose, and whether the
//!   subject objected to direct marketing), by subject hash. A write on this replica
//!   drops the subject's entries after its transaction commits and before it answers,
//!   so the very next check reads the new state. Writes on other replicas reach this
//!   one through [`follow`]: it tails `consent_events` (whose `seq` is
//!   gap-free and in commit order) every [`FOLLOW_POLL`] and drops the subjects it
//!   sees, and it clears everything when `consent_cache_epoch` moves (erasure, which
//!   deletes events and so leaves nothing to tail). A withdrawal on one replica is
//!   therefore seen by every other within `FOLLOW_POLL` plus one query; and when the
//!   follower has not read the log for [`FOLLOWER_FRESH`] (slow, failing, gone), the
//!   replica stops answering from memory until it has.
//!
//!   A check that read the database while a write committed must not put the old
//!   state back after the write dropped it: each shard has an epoch bumped by every
//!   drop, a check takes the epoch before reading, and its fill is refused if the
//!   epoch moved meanwhile.
//! - **Purposes and the times of their material notices**, per purpose, for at most
//!   [`REGISTER_TTL`]; dropped at once by register changes on this replica.
//!
//! Both are bounded: a full shard forgets an arbitrary entry to make room.
//!
//! Behind the subject states sits the [`StateIndex`]: every subject's states, loaded
//! and kept current by the follower, so that a subject missing here is looked up in
//! memory too (see [`crate::index`]).

use std::{
    collections::{HashMap, HashSet},
    hash::BuildHasher,
    sync::{
        Arc, Mutex,
        atomic::{AtomicU64, Ordering},
    },
    time::{Duration, Instant},
};

use custodia_proto::consent::v1::Purpose;

use crate::{
    decision::StateRow,
    index::{PurposeNo, StateIndex},
    store::ConsentStore,
};

/// How often a replica looks for changes made by the others.
pub const FOLLOW_POLL: Duration = Duration::from_millis(100);
/// How long a purpose and its notices are trusted without a reload.
pub const REGISTER_TTL: Duration = Duration::from_secs(1);
/// Subject states are served from memory only while the follower has read the
/// change log within this long: a follower that is slow, failing or gone turns the
/// cache off instead of letting it answer with what other replicas changed since.
pub const FOLLOWER_FRESH: Duration = Duration::from_millis(500);
const SHARDS: usize = 64;
/// Most notice versions remembered as existing.
const MAX_NOTICES: usize = 10_000;

/// State of one subject for one purpose, as a check needs it.
pub type CachedState = (Option<StateRow>, bool);

#[derive(Debug, Default)]
struct Shard {
    epoch: u64,
    /// subject hash -> (purpose id -> state)
    subjects: HashMap<String, Vec<(String, CachedState)>, foldhash::fast::RandomState>,
}

/// A purpose with its material notice versions.
#[derive(Debug, Clone)]
pub struct CachedPurpose {
    /// The purpose.
    pub purpose: Arc<Purpose>,
    /// The material notice versions covering it, by effective time (ascending):
    /// (effective µs, notice id, version).
    pub material: Arc<Vec<(i64, String, i64)>>,
}

impl CachedPurpose {
    /// A purpose and the material notice versions covering it, as
    /// [`crate::records`] lists them: (effective µs, notice id, version).
    pub fn new(purpose: Purpose, material: Vec<(i64, String, i64)>) -> Self {
        Self {
            purpose: Arc::new(purpose),
            material: Arc::new(material),
        }
    }

    /// The newest material version of notice `notice_id` after `version` that
    /// was in effect at `at_us`: (version, effective µs).
    pub fn superseding(&self, notice_id: &str, version: i64, at_us: i64) -> Option<(i64, i64)> {
        self.material
            .iter()
            .filter(|(us, n, v)| n == notice_id && *v > version && *us <= at_us)
            .map(|(us, _, v)| (*v, *us))
            .max()
    }

    /// The latest material notice in effect at `now_us`.
    pub fn material_at(&self, now_us: i64) -> Option<i64> {
        let n = self.material.partition_point(|(us, ..)| *us <= now_us);
        n.checked_sub(1).map(|i| self.material[i].0)
    }
}

#[derive(Debug, Default)]
struct Register {
    epoch: u64,
    purposes: HashMap<String, (Instant, CachedPurpose)>,
}

/// The check caches of one replica.
#[derive(Debug)]
pub struct CheckCache {
    shards: Vec<Mutex<Shard>>,
    per_shard: usize,
    hasher: foldhash::fast::RandomState,
    register: Mutex<Register>,
    /// Notice versions known to exist.
    notices: Mutex<HashSet<String>>,
    started: Instant,
    /// Until when (µs after `started`) subject states may be served: the last
    /// successful poll of the follower plus [`FOLLOWER_FRESH`]; 0 before the first.
    fresh_until_us: AtomicU64,
    /// Every subject's states, behind the cache.
    index: StateIndex,
}

/// The purpose of a check, as the cache looks it up (taken once per call).
#[derive(Debug, Clone)]
pub struct PurposeKey<'a> {
    id: &'a str,
    no: Option<PurposeNo>,
}

/// Taken before reading the database; a fill with an outdated ticket is refused.
#[derive(Debug, Clone, Copy)]
pub struct Ticket(u64);

impl CheckCache {
    /// A cache holding up to about `capacity` subjects, in front of a state index
    /// of at most `index_rows` states (0: none).
    pub fn new(capacity: usize, index_rows: usize) -> Self {
        Self {
            shards: (0..SHARDS).map(|_| Mutex::default()).collect(),
            per_shard: capacity.div_ceil(SHARDS).max(1),
            hasher: foldhash::fast::RandomState::default(),
            register: Mutex::default(),
            notices: Mutex::default(),
            started: Instant::now(),
            fresh_until_us: AtomicU64::new(0),
            index: StateIndex::new(index_rows),
        }
    }

    /// `purpose_id` as [`Self::state`] takes it.
    pub fn purpose_key<'a>(&self, purpose_id: &'a str) -> PurposeKey<'a> {
        PurposeKey {
            id: purpose_id,
            no: self.index.purpose_no(purpose_id),
        }
    }

    fn now_us(&self) -> u64 {
        self.started.elapsed().as_micros() as u64
    }

    /// The follower has read the change log just now.
    pub fn mark_fresh(&self) {
        self.mark_fresh_since(self.now_us());
    }

    /// The follower has read the change log with a query that started at
    /// `started_us` ([`Self::now_us`]): what it reads is known from then, whatever
    /// the follower did after (re-reading stale subjects for the index).
    fn mark_fresh_since(&self, started_us: u64) {
        let until = started_us + FOLLOWER_FRESH.as_micros() as u64;
        self.fresh_until_us.store(until, Ordering::Release);
    }

    /// Whether subject states may be served from memory.
    fn fresh(&self) -> bool {
        self.now_us() < self.fresh_until_us.load(Ordering::Acquire)
    }

    fn shard(&self, subject_hash: &str) -> &Mutex<Shard> {
        let i = self.hasher.hash_one(subject_hash) as usize % SHARDS;
        &self.shards[i]
    }

    /// The cached (or indexed) state, or a ticket to fill it with after reading the
    /// database.
    pub fn state(&self, subject_hash: &str, purpose: &PurposeKey) -> Result<CachedState, Ticket> {
        let purpose_id = purpose.id;
        if self.fresh()
            && let Some(state) = self.index.lookup(subject_hash, purpose_id, purpose.no)
        {
            return Ok(state);
        }
        let shard = self.shard(subject_hash).lock().expect("cache shard");
        if !self.fresh() {
            return Err(Ticket(shard.epoch));
        }
        shard
            .subjects
            .get(subject_hash)
            .and_then(|states| states.iter().find(|(p, _)| p == purpose_id))
            .map(|(_, s)| s.clone())
            .ok_or(Ticket(shard.epoch))
    }

    /// Remembers a state read from the database, unless a write may have changed it
    /// since `ticket` was taken.
    pub fn fill(&self, ticket: Ticket, subject_hash: &str, purpose_id: &str, state: CachedState) {
        let mut shard = self.shard(subject_hash).lock().expect("cache shard");
        if shard.epoch != ticket.0 || !self.fresh() {
            return;
        }
        if !shard.subjects.contains_key(subject_hash) && shard.subjects.len() >= self.per_shard {
            let victim = shard.subjects.keys().next().cloned();
            if let Some(victim) = victim {
                shard.subjects.remove(&victim);
            }
        }
        let states = shard.subjects.entry(subject_hash.to_string()).or_default();
        match states.iter_mut().find(|(p, _)| p == purpose_id) {
            Some(slot) => slot.1 = state,
            None => states.push((purpose_id.to_string(), state)),
        }
    }

    /// Drops what is known of a subject (after a write to it committed).
    pub fn forget(&self, subject_hash: &str) {
        let mut shard = self.shard(subject_hash).lock().expect("cache shard");
        shard.epoch += 1;
        shard.subjects.remove(subject_hash);
        drop(shard);
        self.index.mark_stale(subject_hash);
    }

    /// Drops every subject state (after an erasure), the index's too: the follower
    /// loads it again.
    pub fn forget_all(&self) {
        self.index.reset();
        for shard in &self.shards {
            let mut shard = shard.lock().expect("cache shard");
            shard.epoch += 1;
            shard.subjects.clear();
        }
    }

    /// The cached purpose, if loaded less than [`REGISTER_TTL`] ago; otherwise a
    /// ticket for [`Self::fill_purpose`].
    pub fn purpose(&self, purpose_id: &str) -> Result<CachedPurpose, Ticket> {
        let register = self.register.lock().expect("register cache");
        match register.purposes.get(purpose_id) {
            Some((at, p)) if at.elapsed() < REGISTER_TTL => Ok(p.clone()),
            _ => Err(Ticket(register.epoch)),
        }
    }

    /// Remembers a purpose read from the database.
    pub fn fill_purpose(&self, ticket: Ticket, purpose_id: &str, purpose: CachedPurpose) {
        let mut register = self.register.lock().expect("register cache");
        if register.epoch == ticket.0 {
            register
                .purposes
                .insert(purpose_id.to_string(), (Instant::now(), purpose));
        }
    }

    /// Whether notice version `name` is known to exist.
    pub fn knows_notice(&self, name: &str) -> bool {
        self.notices.lock().expect("notice cache").contains(name)
    }

    /// Remembers that notice version `name` exists (versions are immutable once
    /// published, so this never goes stale).
    pub fn remember_notice(&self, name: &str) {
        let mut notices = self.notices.lock().expect("notice cache");
        if notices.len() >= MAX_NOTICES {
            notices.clear();
        }
        notices.insert(name.to_string());
    }

    /// Drops every cached purpose (after a register change on this replica).
    pub fn forget_register(&self) {
        let mut register = self.register.lock().expect("register cache");
        register.epoch += 1;
        register.purposes.clear();
    }
}

/// Drops the states of subjects changed on other replicas, until shutdown (see the
/// module docs). When the database cannot be read it drops everything: a replica
/// that cannot see the others' writes must not answer from memory.
pub async fn follow(
    cache: Arc<CheckCache>,
    store: ConsentStore,
    mut shutdown: tokio::sync::watch::Receiver<bool>,
) {
    let mut position: Option<(i64, i64)> = None;
    loop {
        match position {
            None => match tokio::try_join!(store.last_change(), store.erasure_epoch()) {
                Ok((seq, epoch)) => {
                    // Nothing is served or remembered from memory until the poll
                    // after the load: what other replicas change while it runs
                    // (a second for a million states) comes after `seq`, and that
                    // poll drops it. Anything cached before now may predate writes
                    // not yet seen.
                    cache.fresh_until_us.store(0, Ordering::Release);
                    cache.forget_all();
                    match cache.index.load(&store).await {
                        Ok(()) => {
                            position = Some((seq, epoch));
                            continue;
                        }
                        // Tried again after the poll interval, from a new position.
                        Err(e) => tracing::warn!(error = %e, "consent state index: cannot load"),
                    }
                }
                Err(e) => tracing::warn!(error = %e, "consent cache: cannot read the change log"),
            },
            Some((seq, epoch)) => match (cache.now_us(), store.changes_since(seq, 10_000).await) {
                (polled_at, Ok((subjects, last, now_epoch))) => {
                    if now_epoch != epoch {
                        cache.forget_all();
                        if cache.index.wants_load() {
                            // Erased subjects leave nothing to tail: load it all again.
                            position = None;
                            continue;
                        }
                    } else {
                        for s in &subjects {
                            cache.forget(s);
                        }
                    }
                    position = Some((last, now_epoch));
                    if subjects.len() >= 10_000 {
                        continue;
                    }
                    if let Err(e) = cache.index.refresh(&store).await {
                        tracing::warn!(error = %e, "consent state index: cannot read changed subjects");
                    }
                    // From when the log was read: a slow refresh must not stretch
                    // how long what another replica wrote meanwhile goes unseen.
                    cache.mark_fresh_since(polled_at);
                }
                (_, Err(e)) => {
                    tracing::warn!(error = %e, "consent cache: cannot read the change log");
                    cache.forget_all();
                    cache.forget_register();
                    position = None;
                }
            },
        }
        tokio::select! {
            _ = tokio::time::sleep(FOLLOW_POLL) => {}
            _ = shutdown.changed() => return,
        }
        if *shutdown.borrow() {
            return;
        }
    }
}

#[cfg(test)]
mod tests {
    use custodia_proto::consent::v1::ConsentState;

    use super::*;

    fn granted() -> CachedState {
        (
            Some(StateRow {
                state: ConsentState::Granted,
                decision_us: 1,
                expire_us: None,
            }),
            false,
        )
    }

    #[test]
    fn nothing_is_served_without_a_fresh_follower() {
        let cache = CheckCache::new(100, 0);
        let ticket = cache.state("s", &cache.purpose_key("p")).unwrap_err();
        cache.fill(ticket, "s", "p", granted());
        assert!(
            cache.state("s", &cache.purpose_key("p")).is_err(),
            "no follower poll yet"
        );
        cache.mark_fresh();
        let ticket = cache.state("s", &cache.purpose_key("p")).unwrap_err();
        cache.fill(ticket, "s", "p", granted());
        assert_eq!(
            cache.state("s", &cache.purpose_key("p")).unwrap(),
            granted()
        );
        cache.fresh_until_us.store(0, Ordering::Release);
        assert!(
            cache.state("s", &cache.purpose_key("p")).is_err(),
            "the follower fell behind"
        );
    }

    #[test]
    fn a_fill_racing_a_write_is_refused() {
        let cache = CheckCache::new(100, 0);
        cache.mark_fresh();
        let ticket = cache.state("s", &cache.purpose_key("p")).unwrap_err();
        // A write commits and drops the subject while the check was reading.
        cache.forget("s");
        cache.fill(ticket, "s", "p", granted());
        assert!(cache.state("s", &cache.purpose_key("p")).is_err());
        let ticket = cache.state("s", &cache.purpose_key("p")).unwrap_err();
        cache.fill(ticket, "s", "p", granted());
        assert_eq!(
            cache.state("s", &cache.purpose_key("p")).unwrap(),
            granted()
        );
        cache.forget_all();
        assert!(cache.state("s", &cache.purpose_key("p")).is_err());
    }

    #[test]
    fn stays_bounded() {
        let cache = CheckCache::new(SHARDS, 0);
        cache.mark_fresh();
        for i in 0..10_000 {
            let s = format!("s{i}");
            let t = cache.state(&s, &cache.purpose_key("p")).unwrap_err();
            cache.fill(t, &s, "p", granted());
        }
        let held: usize = cache
            .shards
            .iter()
            .map(|s| s.lock().unwrap().subjects.len())
            .sum();
        assert!(held <= SHARDS, "{held}");
    }

    #[test]
    fn material_notice_in_effect() {
        let p = CachedPurpose::new(
            Purpose::default(),
            vec![
                (10, "privacy".into(), 2),
                (20, "cookies".into(), 1),
                (30, "privacy".into(), 4),
            ],
        );
        // Version 4 of `privacy` supersedes 1-3 once in effect; `cookies` 1 is
        // the newest of its notice.
        assert_eq!(p.superseding("privacy", 1, 29), Some((2, 10)));
        assert_eq!(p.superseding("privacy", 1, 30), Some((4, 30)));
        assert_eq!(p.superseding("privacy", 2, 29), None);
        assert_eq!(p.superseding("privacy", 4, 99), None);
        assert_eq!(p.superseding("cookies", 1, 99), None);
        assert_eq!(p.superseding("privacy", 1, 5), None);
        assert_eq!(p.material_at(5), None);
        assert_eq!(p.material_at(20), Some(20));
        assert_eq!(p.material_at(25), Some(20));
        assert_eq!(p.material_at(99), Some(30));
    }
}
