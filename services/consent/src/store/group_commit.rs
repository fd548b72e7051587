//! Group commit of consent writes and grouped state reads.

use std::collections::HashMap;

use custodia_core::{
    ApiError,
    group_commit::GroupCommit,
    idempotency::{self, RequestKey},
    outbox::AccessEvent,
    storage::Db,
};
use custodia_proto::consent::v1::ConsentEvent;
use prost::Message;

use super::{
    ConsentStore,
    postgres::write_postgres,
    script::{events_by_id, replayed_all, write_script},
    states::states_in,
};
use crate::cache::CachedState;

/// One decision to write: the event and the state it leaves.
#[derive(Debug, Clone)]
pub struct NewRecord {
    /// Keyed subject hash.
    pub subject_hash: String,
    /// Purpose id (or [`super::DIRECT_MARKETING`]).
    pub purpose_id: String,
    /// The event as returned by the API (subject value blanked).
    pub event: ConsentEvent,
    /// When the subject decided (µs).
    pub decision_us: i64,
    /// When a grant lapses (µs).
    pub expire_us: Option<i64>,
}

/// A receipt to store with a consent write.
#[derive(Debug, Clone)]
pub struct Receipt {
    /// Receipt id (`receipts/{id}`).
    pub id: String,
    /// Keyed hash of the subject it was issued to.
    pub subject_hash: String,
    /// The signed receipt, encoded.
    pub body: Vec<u8>,
}

/// One consent write (RecordConsent, WithdrawConsent, RecordObjection) as
/// [`ConsentStore::record`] gets it.
///
/// Concurrent writes are committed together: one transaction, one disk flush and a
/// fixed number of statements per group of jobs, not per job. Within a group, jobs
/// take their change numbers in queue order, so a later job's state wins and the
/// change stream sees them in that order; a job repeating the request id of an
/// earlier one (in the database or earlier in the group) replays its events.
#[derive(Debug, Clone)]
pub struct WriteJob {
    /// Idempotency key of the call, if it sent a `request_id`.
    pub key: Option<RequestKey>,
    /// Events to append and the states they leave.
    pub records: Vec<NewRecord>,
    /// Receipt to store, if any.
    pub receipt: Option<Receipt>,
    /// Access event, enqueued in the same transaction.
    pub access: AccessEvent,
    /// Record time (µs).
    pub now_us: i64,
}

/// What one [`WriteJob`] returns: its events (or those of the call it replays).
pub type WriteResult = Result<Vec<ConsentEvent>, ApiError>;

/// The group-commit queue of consent writes.
pub type Writes = GroupCommit<WriteJob, WriteResult>;

/// Most jobs in one group.
const MAX_GROUP_JOBS: usize = 512;

/// Rows per multi-row statement (at most 8 parameters each).
pub(super) const ROWS_PER_STATEMENT: usize = 200;

/// Most parameters of a group written as one PostgreSQL statement (its limit is
/// 65,535); a larger group takes one statement per table and chunk.
pub(super) const MAX_STATEMENT_PARAMS: usize = 30_000;

/// Reads of (purpose id, subject hash) by concurrent checks, shared (see
/// [`ConsentStore::states_together`]).
pub type StateReads = GroupCommit<(String, String), CachedState>;

/// Most subjects in one shared read (a BatchCheckConsent's 10,000 go alone).
const MAX_READ_GROUP: usize = 10_000;

impl ConsentStore {
    /// Writes `records` (events plus current state) and `access` in one transaction;
    /// a retry with the same key (see [`idempotency`]) returns the first call's
    /// events instead.
    ///
    /// Concurrent calls share the transaction (group commit, see [`WriteJob`]); this
    /// returns once it is committed.
    pub async fn record(
        &self,
        key: Option<&RequestKey>,
        records: &[NewRecord],
        receipt: Option<(&str, &str, Vec<u8>)>,
        access: &AccessEvent,
        now_us: i64,
    ) -> Result<Vec<ConsentEvent>, ApiError> {
        let job = WriteJob {
            key: key.cloned(),
            records: records.to_vec(),
            receipt: receipt.map(|(id, subject_hash, body)| Receipt {
                id: id.to_string(),
                subject_hash: subject_hash.to_string(),
                body,
            }),
            access: access.clone(),
            now_us,
        };
        self.record_all(vec![job])
            .await?
            .pop()
            .unwrap_or_else(|| Err(ApiError::internal(anyhow::anyhow!("no write result"))))
    }

    /// Writes `jobs` in one transaction (with whatever concurrent calls submit
    /// meanwhile); one result per job, in order. When the transaction fails, every
    /// job of the call fails (a job submitted alone gets its own error).
    pub async fn record_all(&self, jobs: Vec<WriteJob>) -> Result<Vec<WriteResult>, ApiError> {
        self.writes().submit(jobs).await.map_err(ApiError::internal)
    }

    /// The events an earlier call with `key` recorded (erased ones left out),
    /// if there was such a call; IDEMPOTENCY_KEY_REUSED if it sent another body.
    pub async fn replay_of(&self, key: &RequestKey) -> Result<Option<Vec<ConsentEvent>>, ApiError> {
        let mut conn = self.db().pool().acquire().await?;
        let Some(earlier) = idempotency::find(&mut conn, key).await? else {
            return Ok(None);
        };
        let ids: Vec<&str> = earlier
            .resource
            .split(',')
            .filter(|id| !id.is_empty())
            .collect();
        let found = events_by_id(&mut conn, self.db().backend(), &ids).await?;
        Ok(Some(
            ids.iter()
                .filter_map(|id| found.get(*id))
                .cloned()
                .collect(),
        ))
    }
}

/// The queue of state reads of `db`: one [`ConsentStore::states`] query per
/// purpose in the group.
pub(super) fn state_reads(db: Db) -> StateReads {
    GroupCommit::new(MAX_READ_GROUP, move |keys: Vec<(String, String)>| {
        let db = db.clone();
        async move {
            let mut by_purpose: HashMap<&str, Vec<&str>> = HashMap::new();
            for (pid, hash) in &keys {
                by_purpose.entry(pid).or_default().push(hash);
            }
            let mut found: HashMap<(&str, String), CachedState> = HashMap::new();
            for (pid, hashes) in by_purpose {
                for (hash, state) in states_in(&db, &hashes, pid).await? {
                    found.insert((pid, hash), state);
                }
            }
            Ok(keys
                .iter()
                .map(|(pid, hash)| {
                    found
                        .get(&(pid.as_str(), hash.clone()))
                        .cloned()
                        .unwrap_or_default()
                })
                .collect())
        }
    })
}

/// The queue writing consent jobs to `db`.
pub(super) fn writes(db: Db) -> Writes {
    GroupCommit::new(MAX_GROUP_JOBS, move |jobs: Vec<WriteJob>| {
        let db = db.clone();
        async move {
            // Optimistic first: no request id of the group looked up, the insert of
            // the ids fails if one was claimed before (a client's retry). Then again
            // with the lookup, which turns such a job into a replay. Any other
            // failure is not retried here.
            let written = match write_jobs(&db, &jobs, false).await {
                Err(e) if e.is_unique_violation() => write_jobs(&db, &jobs, true).await,
                written => written,
            };
            match written {
                Ok(results) => Ok(results),
                // Alone, the job gets its own error (its kind intact).
                Err(e) if jobs.len() == 1 => Ok(vec![Err(e)]),
                // In a group: rolled back; GroupCommit retries each job alone.
                Err(e) => Err(anyhow::Error::new(e)),
            }
        }
    })
}

/// What a job of a group does.
enum Plan {
    /// Writes its records.
    Write,
    /// Repeats an earlier call: returns its events (by id).
    Replay(Vec<String>),
    /// Repeats the job at this index of the same group.
    Same(usize),
    /// Reuses a key with another request body: refused.
    Reused,
}

/// The refusal of `job`, whose key was used before with another body.
fn reused(job: &WriteJob) -> ApiError {
    idempotency::reused(job.key.as_ref().map(RequestKey::method).unwrap_or_default())
}

pub(super) fn event_id(event: &ConsentEvent) -> &str {
    event.name.rsplit('/').next().unwrap_or_default()
}

/// The ids of `job`'s events, comma-separated: what its idempotency key names.
pub(super) fn event_ids(job: &WriteJob) -> String {
    let ids: Vec<&str> = job.records.iter().map(|r| event_id(&r.event)).collect();
    ids.join(",")
}

/// Writes `jobs` in one transaction; one result per job, in order.
///
/// `look_up`: first look up which request ids earlier calls claimed (replays);
/// without, a claimed id makes the write fail on the key's uniqueness. Without
/// the lookup a group is one message to SQLite's worker thread (`BEGIN`, every
/// write, `COMMIT`) and one statement of constant text on PostgreSQL's native
/// connection (see [`write_postgres`]); with it, a transaction of two.
async fn write_jobs(
    db: &Db,
    jobs: &[WriteJob],
    look_up: bool,
) -> Result<Vec<WriteResult>, ApiError> {
    if !look_up && let Some(pool) = db.native_postgres() {
        let plans = plan(jobs, &HashMap::new());
        write_postgres(pool, &writing(jobs, &plans), &access_of(jobs, &plans)).await?;
        return Ok(results(jobs, &plans, &HashMap::new()));
    }
    let backend = db.backend();
    let mut tx = db.begin_script().await?;
    let earlier = if look_up {
        replayed_all(&mut tx, backend, jobs).await?
    } else {
        HashMap::new()
    };
    let plans = plan(jobs, &earlier);
    let replay_ids: Vec<&str> = plans
        .iter()
        .flat_map(|p| match p {
            Plan::Replay(ids) => ids.iter().map(String::as_str).collect(),
            _ => Vec::new(),
        })
        .collect();
    let stored = if replay_ids.is_empty() {
        HashMap::new()
    } else {
        events_by_id(tx.conn().await?, backend, &replay_ids).await?
    };
    let writing = writing(jobs, &plans);
    let access = access_of(jobs, &plans);
    if access.is_empty() {
        // Only refusals: end the transaction now, while this writer holds the turn.
        tx.rollback().await?;
    } else {
        tx.commit(write_script(backend, &writing, &access)?).await?;
    }
    Ok(results(jobs, &plans, &stored))
}

/// The access events of `jobs` given their plans: a replay is an access too
/// (its answer holds the subject's data), marked as one; a refused reuse of a
/// key answers nothing and records nothing here.
fn access_of(jobs: &[WriteJob], plans: &[Plan]) -> Vec<AccessEvent> {
    jobs.iter()
        .zip(plans)
        .filter_map(|(job, plan)| match plan {
            Plan::Write => Some(job.access.clone()),
            Plan::Same(_) | Plan::Replay(_) => {
                let mut event = job.access.clone();
                event.detail = serde_json::json!({ "replay": true }).to_string();
                Some(event)
            }
            Plan::Reused => None,
        })
        .collect()
}

/// What each job does, given what `earlier` calls left by key: the first job of
/// a key writes, later ones of the group repeat it; a key used before (or
/// earlier in the group) with another request body is refused.
fn plan(jobs: &[WriteJob], earlier: &HashMap<KeyOf, Earlier>) -> Vec<Plan> {
    let mut first_of: HashMap<KeyOf, usize> = HashMap::new();
    jobs.iter()
        .enumerate()
        .map(|(i, job)| {
            let Some(key) = &job.key else {
                return Plan::Write;
            };
            let id = key_of(key);
            if let Some(e) = earlier.get(&id) {
                if e.fingerprint != key.fingerprint() {
                    return Plan::Reused;
                }
                let ids = e
                    .resource
                    .split(',')
                    .filter(|id| !id.is_empty())
                    .map(str::to_string)
                    .collect();
                return Plan::Replay(ids);
            }
            match first_of.get(&id) {
                Some(&first) => {
                    let same = jobs[first]
                        .key
                        .as_ref()
                        .is_some_and(|k| k.fingerprint() == key.fingerprint());
                    if same {
                        Plan::Same(first)
                    } else {
                        Plan::Reused
                    }
                }
                None => {
                    first_of.insert(id, i);
                    Plan::Write
                }
            }
        })
        .collect()
}

/// The identity of a key: (principal, method, request id).
pub(super) type KeyOf = (String, String, String);

fn key_of(key: &RequestKey) -> KeyOf {
    (
        key.principal().to_string(),
        key.method().to_string(),
        key.request_id().to_string(),
    )
}

/// What an earlier call with a key left: its fingerprint and event ids.
pub(super) struct Earlier {
    pub(super) fingerprint: String,
    pub(super) resource: String,
}

/// The jobs that write.
fn writing<'a>(jobs: &'a [WriteJob], plans: &[Plan]) -> Vec<&'a WriteJob> {
    jobs.iter()
        .zip(plans)
        .filter(|(_, p)| matches!(p, Plan::Write))
        .map(|(j, _)| j)
        .collect()
}

/// Each job's result: its events, those of the job it repeats, or the `stored`
/// events of the earlier call it replays.
fn results(
    jobs: &[WriteJob],
    plans: &[Plan],
    stored: &HashMap<String, ConsentEvent>,
) -> Vec<WriteResult> {
    let events_of = |job: &WriteJob| job.records.iter().map(|r| r.event.clone()).collect();
    jobs.iter()
        .zip(plans)
        .map(|(job, plan)| {
            Ok(match plan {
                Plan::Write => events_of(job),
                Plan::Same(first) => events_of(&jobs[*first]),
                Plan::Reused => return Err(reused(job)),
                Plan::Replay(ids) => ids
                    .iter()
                    .filter_map(|id| stored.get(id))
                    .cloned()
                    .collect(),
            })
        })
        .collect()
}

/// A record of a group: (index in the group, record, encoded event, record time).
pub(super) type Numbered<'a> = (i64, &'a NewRecord, Vec<u8>, i64);

/// The records of `jobs`, in order. Event `i` takes change number `first + i`.
pub(super) fn numbered<'a>(jobs: &[&'a WriteJob]) -> Vec<Numbered<'a>> {
    jobs.iter()
        .flat_map(|j| j.records.iter().map(move |r| (r, j.now_us)))
        .enumerate()
        .map(|(i, (r, now_us))| (i as i64, r, r.event.encode_to_vec(), now_us))
        .collect()
}

/// The state each (subject, purpose) is left in: the index of its last event, in
/// order. One row per key, as PostgreSQL refuses to update a row twice in one
/// statement.
pub(super) fn last_of_each(events: &[Numbered]) -> Vec<usize> {
    let mut last: HashMap<(&str, &str), usize> = HashMap::new();
    for (i, (_, r, _, _)) in events.iter().enumerate() {
        last.insert((&r.subject_hash, &r.purpose_id), i);
    }
    let mut states: Vec<usize> = last.into_values().collect();
    states.sort_unstable();
    states
}
