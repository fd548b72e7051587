//! Every subject's current states in memory (the state index), so that a check of a
//! subject nobody checked lately, and above all a BatchCheckConsent of a newsletter
//! run over 10,000 such subjects, reads no database (the check cache only holds
//! what was checked).
//!
//! - **Loaded whole** by the follower ([`crate::cache::follow`]) when it starts,
//!   after an erasure on another replica (erasure deletes events, so there is
//!   nothing to tail) and after it lost the change log; page by page, not as one
//!   snapshot: whatever changes during the load is in the change log after the
//!   position the follower took before loading, and is marked stale by its next poll.
//! - **Kept current** like the check cache: a write on this replica marks its
//!   subject stale after its transaction commits and before it answers; the
//!   follower marks the subjects of every write it tails (other replicas' and this
//!   one's) and, after each poll, reads the stale subjects again. A stale subject is
//!   looked up in the database as before. A re-read only clears the mark it was
//!   started for: a write that marks the subject again meanwhile keeps it stale.
//! - **Served** only once the first poll after a load has marked and re-read what
//!   changed during it, and only while the follower is fresh (the check cache's
//!   rule): otherwise every lookup says [`None`] and the caller reads the database.
//! - **Bounded**: a table of more than `max_rows` states is not loaded (or is
//!   dropped when it grows past it), and checks read the database as before; about
//!   100 bytes per subject with one state, 24 more per further state (measured:
//!   see BENCHMARKS.md). `consent.state_index_max_rows`.

use std::{
    collections::HashMap,
    hash::BuildHasher,
    sync::{
        Mutex,
        atomic::{AtomicU8, AtomicU64, AtomicUsize, Ordering},
    },
};

use custodia_core::ApiError;
use custodia_proto::consent::v1::ConsentState;

use crate::{
    cache::CachedState,
    decision::StateRow,
    store::ConsentStore,
    store::{DIRECT_MARKETING, StateRowOf},
};

const SHARDS: usize = 64;
/// State rows per page of a load.
const LOAD_PAGE: i64 = 20_000;

/// A keyed subject hash (64 hex digits) as its 32 bytes.
type Key = [u8; 32];

/// Interned purpose id.
pub type PurposeNo = u32;

/// Not loaded (start, after a reset): every lookup misses.
const EMPTY: u8 = 0;
/// Loaded, but what changed during the load is not marked yet.
const LOADED: u8 = 1;
/// Loaded and followed: lookups are answered.
const SERVING: u8 = 2;
/// Too big for `max_rows`: not loaded again until the process restarts.
const OFF: u8 = 3;

/// One state row, compact: 24 bytes against 40 for a purpose number and a
/// [`StateRow`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Entry {
    decision_us: i64,
    /// [`NO_EXPIRY`]: none.
    expire_us: i64,
    purpose: PurposeNo,
    state: i32,
}

const NO_EXPIRY: i64 = i64::MIN;

impl Entry {
    fn new(purpose: PurposeNo, (_, _, state, decision_us, expire_us): &StateRowOf) -> Self {
        Self {
            decision_us: *decision_us,
            expire_us: expire_us.unwrap_or(NO_EXPIRY),
            purpose,
            state: *state as i32,
        }
    }

    fn row(&self) -> StateRow {
        StateRow {
            state: ConsentState::try_from(self.state).unwrap_or_default(),
            decision_us: self.decision_us,
            expire_us: (self.expire_us != NO_EXPIRY).then_some(self.expire_us),
        }
    }
}

/// A subject's rows, inline when there is one (most subjects).
#[derive(Debug, Clone)]
enum Rows {
    One(Entry),
    Many(Box<[Entry]>),
}

impl Rows {
    fn as_slice(&self) -> &[Entry] {
        match self {
            Rows::One(e) => std::slice::from_ref(e),
            Rows::Many(rows) => rows,
        }
    }

    fn push(&mut self, e: Entry) {
        *self = Rows::Many(self.as_slice().iter().copied().chain([e]).collect());
    }
}

/// Adds `e` to the rows of `key` in `map`.
fn add<S: BuildHasher>(map: &mut HashMap<Key, Rows, S>, key: Key, e: Entry) {
    match map.entry(key) {
        std::collections::hash_map::Entry::Vacant(v) => {
            v.insert(Rows::One(e));
        }
        std::collections::hash_map::Entry::Occupied(mut o) => o.get_mut().push(e),
    }
}

#[derive(Debug, Default)]
struct Shard {
    /// Subject -> its state rows (every purpose it has one for).
    subjects: HashMap<Key, Rows, foldhash::fast::RandomState>,
    /// Subjects changed since their rows were read, with the mark of the change.
    stale: HashMap<Key, u64, foldhash::fast::RandomState>,
}

/// The state index of one replica (see the module docs).
#[derive(Debug)]
pub struct StateIndex {
    shards: Vec<Mutex<Shard>>,
    hasher: foldhash::fast::RandomState,
    purposes: Mutex<HashMap<String, PurposeNo>>,
    phase: AtomicU8,
    marks: AtomicU64,
    rows: AtomicUsize,
    max_rows: usize,
}

fn key(subject_hash: &str) -> Option<Key> {
    let mut key = [0u8; 32];
    hex::decode_to_slice(subject_hash, &mut key).ok()?;
    Some(key)
}

impl StateIndex {
    /// An index of at most `max_rows` states; 0 turns it off.
    pub fn new(max_rows: usize) -> Self {
        Self {
            shards: (0..SHARDS).map(|_| Mutex::default()).collect(),
            hasher: foldhash::fast::RandomState::default(),
            purposes: Mutex::new(HashMap::from([(DIRECT_MARKETING.to_string(), 0)])),
            phase: AtomicU8::new(if max_rows == 0 { OFF } else { EMPTY }),
            marks: AtomicU64::new(0),
            rows: AtomicUsize::new(0),
            max_rows,
        }
    }

    fn shard(&self, key: &Key) -> &Mutex<Shard> {
        &self.shards[self.hasher.hash_one(key) as usize % SHARDS]
    }

    /// Whether lookups are answered (the caller also needs a fresh follower).
    pub fn serving(&self) -> bool {
        self.phase.load(Ordering::Acquire) == SERVING
    }

    /// Whether the follower should load the index.
    pub fn wants_load(&self) -> bool {
        self.phase.load(Ordering::Acquire) == EMPTY
    }

    /// The purpose's number, if any state row ever named it.
    pub fn purpose_no(&self, purpose_id: &str) -> Option<PurposeNo> {
        self.purposes
            .lock()
            .expect("index purposes")
            .get(purpose_id)
            .copied()
    }

    fn intern(&self, purposes: &mut HashMap<String, PurposeNo>, purpose_id: &str) -> PurposeNo {
        if let Some(no) = purposes.get(purpose_id) {
            return *no;
        }
        let no = purposes.len() as PurposeNo;
        purposes.insert(purpose_id.to_string(), no);
        no
    }

    /// Rows read from the database as index entries by subject key, their purposes
    /// numbered (new ones interned). Rows of a subject hash that is not 64 hex
    /// digits are left out: such a subject is never looked up here.
    fn entries(&self, rows: &[StateRowOf]) -> Vec<(Key, Entry)> {
        let mut purposes = self.purposes.lock().expect("index purposes");
        rows.iter()
            .filter_map(|row| {
                let key = key(&row.0)?;
                Some((key, Entry::new(self.intern(&mut purposes, &row.1), row)))
            })
            .collect()
    }

    /// The state of a subject for purpose `purpose_id` numbered `purpose` (from
    /// [`Self::purpose_no`] before the call), or `None` when the index cannot say
    /// (not serving, subject stale).
    pub fn lookup(
        &self,
        subject_hash: &str,
        purpose_id: &str,
        purpose: Option<PurposeNo>,
    ) -> Option<CachedState> {
        if !self.serving() {
            return None;
        }
        let key = key(subject_hash)?;
        let shard = self.shard(&key).lock().expect("index shard");
        if shard.stale.contains_key(&key) {
            return None;
        }
        let Some(rows) = shard.subjects.get(&key) else {
            return Some((None, false));
        };
        // A purpose first named after the caller took its number.
        let purpose = purpose.or_else(|| self.purpose_no(purpose_id));
        let rows = rows.as_slice();
        let row = purpose.and_then(|p| rows.iter().find(|e| e.purpose == p).map(Entry::row));
        let objected = rows
            .iter()
            .any(|e| e.purpose == 0 && e.state == ConsentState::Objected as i32);
        Some((row, objected))
    }

    /// The subject changed (a write committed, or the follower saw one): its rows
    /// are not answered until read again.
    pub fn mark_stale(&self, subject_hash: &str) {
        if self.phase.load(Ordering::Acquire) == OFF {
            return;
        }
        let Some(key) = key(subject_hash) else {
            return;
        };
        let mark = self.marks.fetch_add(1, Ordering::AcqRel) + 1;
        self.shard(&key)
            .lock()
            .expect("index shard")
            .stale
            .insert(key, mark);
    }

    /// Forgets everything; the follower loads it again (after an erasure elsewhere,
    /// or when it lost the change log). Stale marks are kept: a re-read clears them.
    pub fn reset(&self) {
        if self
            .phase
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |p| {
                (p != OFF).then_some(EMPTY)
            })
            .is_err()
        {
            return;
        }
        for shard in &self.shards {
            shard.lock().expect("index shard").subjects.clear();
        }
        self.rows.store(0, Ordering::Release);
    }

    fn turn_off(&self, rows: usize) {
        tracing::warn!(
            rows,
            max_rows = self.max_rows,
            "consent state index: more states than consent.state_index_max_rows; \
             checks of subjects not in the check cache read the database"
        );
        self.phase.store(OFF, Ordering::Release);
        for shard in &self.shards {
            let mut shard = shard.lock().expect("index shard");
            shard.subjects.clear();
            shard.stale.clear();
        }
        self.rows.store(0, Ordering::Release);
    }

    /// Loads every state row (see the module docs). Errors leave it not serving.
    pub async fn load(&self, store: &ConsentStore) -> Result<(), ApiError> {
        self.load_pages(store, LOAD_PAGE).await
    }

    /// [`Self::load`], `page` rows per query.
    pub async fn load_pages(&self, store: &ConsentStore, page: i64) -> Result<(), ApiError> {
        if !self.wants_load() {
            return Ok(());
        }
        let t0 = std::time::Instant::now();
        let mut loaded: Vec<HashMap<Key, Rows, foldhash::fast::RandomState>> =
            (0..SHARDS).map(|_| HashMap::default()).collect();
        let mut after = None;
        let mut count = 0;
        loop {
            let (rows, last) = store.state_rows_after(after.as_ref(), page).await?;
            let full_page = rows.len() as i64 == page;
            count += rows.len();
            if count > self.max_rows {
                self.turn_off(count);
                return Ok(());
            }
            for (key, e) in self.entries(&rows) {
                add(
                    &mut loaded[self.hasher.hash_one(key) as usize % SHARDS],
                    key,
                    e,
                );
            }
            match last {
                Some(last) if full_page => after = Some(last),
                _ => break,
            }
        }
        for (shard, subjects) in self.shards.iter().zip(loaded) {
            shard.lock().expect("index shard").subjects = subjects;
        }
        self.rows.store(count, Ordering::Release);
        let _ = self
            .phase
            .compare_exchange(EMPTY, LOADED, Ordering::AcqRel, Ordering::Acquire);
        tracing::info!(
            rows = count,
            ms = t0.elapsed().as_millis() as u64,
            "consent state index loaded"
        );
        Ok(())
    }

    /// Reads the stale subjects again and clears the marks that did not move
    /// meanwhile; then serves if loaded (called after each poll of the follower).
    pub async fn refresh(&self, store: &ConsentStore) -> Result<(), ApiError> {
        let phase = self.phase.load(Ordering::Acquire);
        if phase != LOADED && phase != SERVING {
            return Ok(());
        }
        let pending: Vec<(Key, u64)> = self
            .shards
            .iter()
            .flat_map(|s| {
                let shard = s.lock().expect("index shard");
                shard
                    .stale
                    .iter()
                    .map(|(k, m)| (*k, *m))
                    .collect::<Vec<_>>()
            })
            .collect();
        if !pending.is_empty() {
            let hashes: Vec<String> = pending.iter().map(|(k, _)| hex::encode(k)).collect();
            let rows = store.rows_of_subjects(&hashes).await?;
            self.install(&pending, rows);
        }
        let _ = self
            .phase
            .compare_exchange(LOADED, SERVING, Ordering::AcqRel, Ordering::Acquire);
        Ok(())
    }

    fn install(&self, pending: &[(Key, u64)], rows: Vec<StateRowOf>) {
        let mut by_subject: HashMap<Key, Rows> = HashMap::new();
        for (key, e) in self.entries(&rows) {
            add(&mut by_subject, key, e);
        }
        let mut total = self.rows.load(Ordering::Acquire);
        for (key, mark) in pending {
            let mut shard = self.shard(key).lock().expect("index shard");
            if shard.stale.get(key) != Some(mark) {
                continue; // changed again while it was read: stays stale
            }
            shard.stale.remove(key);
            let old = match by_subject.remove(key) {
                Some(rows) => {
                    total += rows.as_slice().len();
                    shard.subjects.insert(*key, rows)
                }
                None => shard.subjects.remove(key),
            };
            total -= old.map_or(0, |r| r.as_slice().len());
        }
        self.rows.store(total, Ordering::Release);
        if total > self.max_rows {
            self.turn_off(total);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn row(state: ConsentState) -> StateRow {
        StateRow {
            state,
            decision_us: 1,
            expire_us: None,
        }
    }

    fn hash(i: u8) -> String {
        hex::encode([i; 32])
    }

    fn serving(index: &StateIndex) {
        index.phase.store(SERVING, Ordering::Release);
    }

    /// What a refresh would take for subject `i`: its key with the latest mark.
    fn pending_of(index: &StateIndex, i: u8) -> Vec<(Key, u64)> {
        vec![(key(&hash(i)).unwrap(), index.marks.load(Ordering::Acquire))]
    }

    #[test]
    fn answers_known_and_absent_subjects_and_objections() {
        let index = StateIndex::new(100);
        assert_eq!(index.lookup(&hash(1), "p", None), None, "not loaded");
        serving(&index);
        let p = {
            let mut purposes = index.purposes.lock().unwrap();
            index.intern(&mut purposes, "newsletter")
        };
        index.mark_stale(&hash(1));
        let pending = pending_of(&index, 1);
        index.install(
            &pending,
            vec![
                (hash(1), "newsletter".into(), ConsentState::Granted, 1, None),
                (
                    hash(1),
                    DIRECT_MARKETING.into(),
                    ConsentState::Objected,
                    1,
                    None,
                ),
            ],
        );
        assert_eq!(
            index.lookup(&hash(1), "newsletter", Some(p)),
            Some((Some(row(ConsentState::Granted)), true))
        );
        assert_eq!(
            index.lookup(&hash(2), "newsletter", Some(p)),
            Some((None, false))
        );
        assert_eq!(index.lookup("not-hex", "newsletter", Some(p)), None);
        assert_eq!(index.rows.load(Ordering::Acquire), 2);
    }

    #[test]
    fn a_reread_racing_a_write_keeps_the_subject_stale() {
        let index = StateIndex::new(100);
        serving(&index);
        index.mark_stale(&hash(1));
        let pending = pending_of(&index, 1);
        // A write commits and marks the subject again while it is being read.
        index.mark_stale(&hash(1));
        index.install(
            &pending,
            vec![(hash(1), "p".into(), ConsentState::Granted, 1, None)],
        );
        assert_eq!(index.lookup(&hash(1), "p", None), None, "still stale");
        let pending = pending_of(&index, 1);
        index.install(&pending, Vec::new());
        assert_eq!(index.lookup(&hash(1), "p", None), Some((None, false)));
    }

    #[test]
    fn rows_stay_compact() {
        assert_eq!(std::mem::size_of::<Entry>(), 24);
        assert!(std::mem::size_of::<Rows>() <= 32);
        let e = Entry::new(
            3,
            &(
                String::new(),
                String::new(),
                ConsentState::Granted,
                5,
                Some(9),
            ),
        );
        assert_eq!(
            e.row(),
            StateRow {
                state: ConsentState::Granted,
                decision_us: 5,
                expire_us: Some(9)
            }
        );
        let mut rows = Rows::One(e);
        rows.push(Entry { purpose: 4, ..e });
        assert_eq!(rows.as_slice().len(), 2);
    }

    #[test]
    fn growing_past_the_bound_turns_it_off() {
        let index = StateIndex::new(1);
        serving(&index);
        index.mark_stale(&hash(1));
        let pending = pending_of(&index, 1);
        index.install(
            &pending,
            vec![
                (hash(1), "a".into(), ConsentState::Granted, 1, None),
                (hash(1), "b".into(), ConsentState::Granted, 1, None),
            ],
        );
        assert!(!index.serving());
        assert_eq!(index.lookup(&hash(1), "p", None), None);
        index.reset();
        assert!(!index.wants_load(), "stays off");
    }
}
