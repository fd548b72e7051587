//! The log's storage on SQLite or PostgreSQL (one implementation over portable
//! SQL): gap-free appends, signed heads, queries, subject keys and shredding.

use std::collections::HashMap;

use custodia_core::storage::{Backend, Db, Params, Script, placeholders};
use sqlx::{AnyConnection, AssertSqlSafe, Row, any::AnyRow};

use crate::{
    entry::{
        self, BATCH_ENTRY_VERSION, ENTRY_VERSION, Entry, EntryColumns, Sealed, SealedMember,
        SubjectFields,
    },
    merkle::{Hash, leaf_hash},
};

/// An event to append, as received.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewEvent {
    /// Sender's id; appending the same id twice returns the first sequence number.
    pub event_id: String,
    /// When the access happened (µs since the epoch).
    pub time_us: i64,
    /// Calling principal.
    pub actor: String,
    /// Service that served the call.
    pub service: String,
    /// gRPC method.
    pub method: String,
    /// What was done (`read`, `check`, ...).
    pub action: String,
    /// Resource name.
    pub resource: String,
    /// Purpose, "" when unknown.
    pub purpose: String,
    /// `ok`, `denied` or `error`.
    pub outcome: String,
    /// gRPC status code returned.
    pub status_code: i32,
    /// Trace id.
    pub trace_id: String,
    /// Details as JSON ("" when none); sealed with the subject when there is one.
    pub detail: String,
    /// The subject (type and keyed hash; its `detail` is ignored), when there is one.
    pub subject: Option<SubjectFields>,
    /// The subjects of an access to several at once (type and keyed hash each),
    /// stored as one entry; `subject` is then `None` and `detail` stays in clear.
    pub members: Vec<SubjectFields>,
}

/// An entry read back, with its subject opened when the key still exists.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredEntry {
    /// The entry as hashed.
    pub entry: Entry,
    /// The subject, `None` when there was none or it has been shredded.
    pub subject: Option<SubjectFields>,
    /// True when the entry had a subject whose key was destroyed.
    pub shredded: bool,
    /// The members of a batch entry, each `None` once its key was destroyed.
    pub members: Vec<Option<SubjectFields>>,
}

/// A signed tree head as stored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredHead {
    /// Number of entries covered.
    pub tree_size: u64,
    /// RFC 6962 root hash.
    pub root: Hash,
    /// Signing time, µs since the epoch (the signature covers it in ms).
    pub timestamp_us: i64,
    /// Id of the signing key.
    pub key_id: String,
    /// Ed25519 signature.
    pub signature: Vec<u8>,
}

/// Filters of `ListEvents`; all set filters must match.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct EventFilter {
    /// Keyed subject hash.
    pub subject_hash: Option<String>,
    /// Principal.
    pub actor: Option<String>,
    /// Method.
    pub method: Option<String>,
    /// Action verb.
    pub action: Option<String>,
    /// Resource name.
    pub resource: Option<String>,
    /// Service.
    pub service: Option<String>,
    /// Outcome (`ok`, `denied`, `error`).
    pub outcome: Option<String>,
    /// Earliest event time (µs, inclusive).
    pub from_us: Option<i64>,
    /// Latest event time (µs, exclusive).
    pub to_us: Option<i64>,
}

/// Storage of one audit log.
#[derive(Debug, Clone)]
pub struct LogStore {
    db: Db,
}

fn hash_of(bytes: &[u8]) -> anyhow::Result<Hash> {
    bytes
        .try_into()
        .map_err(|_| anyhow::anyhow!("stored hash is not 32 bytes"))
}

/// A subject key as stored.
fn subject_key(bytes: Vec<u8>) -> anyhow::Result<[u8; 32]> {
    bytes
        .try_into()
        .map_err(|_| anyhow::anyhow!("stored subject key is not 32 bytes"))
}

/// The columns of a head in the order [`head_from_row`] reads them (a macro so
/// the queries stay `&'static str`).
macro_rules! head_select {
    () => {
        "SELECT tree_size, root_hash, timestamp_us, key_id, signature FROM audit_tree_heads"
    };
}

/// Page cache of a SQLite connection that appends: 64 MiB (negative = KiB).
const SQLITE_CACHE_PRAGMA: &str = "PRAGMA cache_size = -65536";

/// Rows per multi-row INSERT (keeps bound parameters well under both engines' limits).
const INSERT_CHUNK: usize = 400;

impl LogStore {
    /// The log in `db` (migrated).
    pub fn new(db: Db) -> Self {
        Self { db }
    }

    /// The database.
    pub fn db(&self) -> &Db {
        &self.db
    }

    /// Appends `events` in one transaction and returns each one's sequence number and
    /// whether it was a duplicate: ids already in the log (or repeated in the batch)
    /// get their first number back.
    pub async fn append(
        &self,
        events: &[NewEvent],
        now_us: i64,
    ) -> anyhow::Result<Vec<(u64, bool)>> {
        Ok(self.append_with_leaves(events, now_us).await?.0)
    }

    /// Like [`Self::append`], also returning the leaf hash of every entry written
    /// (not of duplicates), by sequence number.
    pub async fn append_with_leaves(
        &self,
        events: &[NewEvent],
        now_us: i64,
    ) -> anyhow::Result<Appended> {
        if let Some(native) = self.db.native_postgres() {
            return append_postgres(native, events, now_us).await;
        }
        let mut tx = self.db.begin_write().await?;
        let backend = self.db.backend();
        if backend == Backend::Sqlite {
            // SQLite's default page cache (2 MiB per connection) is far smaller than
            // one group commit touches across the six indexes, so without this it
            // spills dirty pages to the WAL mid-transaction and re-reads index pages
            // through the OS (~30% of append throughput). Per connection, allocated on
            // use. All appends run on the one writer connection (`Db::write_pool`),
            // so one cache of this size per database, not one per pooled connection.
            sqlx::query(SQLITE_CACHE_PRAGMA).execute(&mut *tx).await?;
        }
        // Taking the row lock first serialises appenders (across replicas too), so
        // sequence numbers are gap-free and in commit order.
        let next: i64 = sqlx::query(LOCK_NEXT_SEQ_SQL)
            .fetch_one(&mut *tx)
            .await?
            .try_get(0)?;

        let existing = existing_seqs(&mut tx, backend, events).await?;
        let keys = subject_keys(&mut tx, backend, events, now_us).await?;
        let built = build_entries(events, next as u64, &existing, seal_all(events, &keys));

        let mut script = Script::new(backend);
        script.insert_rows(
            (
                "INSERT INTO audit_entries (seq, event_id, entry, leaf_hash, time_us, actor, \
                 service, method, action, resource, purpose, outcome, appended_us)",
                "",
            ),
            13,
            INSERT_CHUNK,
            &built.fresh,
            |b, (seq, e, bytes, leaf)| {
                b.bind(*seq as i64)
                    .bind(e.event_id.clone())
                    .bind(bytes.clone())
                    .bind(leaf.to_vec())
                    .bind(e.time_us)
                    .bind(e.actor.clone())
                    .bind(e.service.clone())
                    .bind(e.method.clone())
                    .bind(e.action.clone())
                    .bind(e.resource.clone())
                    .bind(e.purpose.clone())
                    .bind(e.outcome.clone())
                    .bind(now_us);
            },
        );
        let indexed = built.indexed();
        script.insert_rows(
            ("INSERT INTO audit_subject_index (subject_hash, seq)", ""),
            2,
            INSERT_CHUNK,
            &indexed,
            |b, (seq, hash)| {
                b.bind(hash.to_string()).bind(*seq as i64);
            },
        );
        // One message to SQLite's worker thread for all the rows.
        script.execute(&mut tx).await?;
        sqlx::query(SET_NEXT_SEQ_SQL)
            .bind(built.next as i64)
            .execute(&mut *tx)
            .await?;
        tx.commit().await?;
        Ok(built.into_result())
    }

    /// Number of entries in the log.
    pub async fn size(&self) -> anyhow::Result<u64> {
        let n: i64 = sqlx::query("SELECT next_seq FROM audit_log_state WHERE id = 1")
            .fetch_one(self.db.pool())
            .await?
            .try_get(0)?;
        Ok(n as u64)
    }

    /// Up to `limit` `(seq, leaf hash)` pairs from `start`, in order.
    pub async fn leaf_hashes(&self, start: u64, limit: usize) -> anyhow::Result<Vec<(u64, Hash)>> {
        let rows = sqlx::query(
            "SELECT seq, leaf_hash FROM audit_entries WHERE seq >= $1 ORDER BY seq LIMIT $2",
        )
        .bind(start as i64)
        .bind(limit as i64)
        .fetch_all(self.db.pool())
        .await?;
        rows.iter()
            .map(|r| {
                let seq: i64 = r.try_get(0)?;
                let hash: Vec<u8> = r.try_get(1)?;
                Ok((seq as u64, hash_of(&hash)?))
            })
            .collect()
    }

    /// Raw rows for verification: `(seq, entry bytes, leaf hash, projection)`. The
    /// query columns come back encoded by the database as one value (see
    /// [`Projection`]): a quarter of the columns to fetch per row.
    pub async fn raw_entries(&self, start: u64, limit: usize) -> anyhow::Result<Vec<RawEntry>> {
        let rows = sqlx::query(AssertSqlSafe(RAW_ENTRIES_SQL))
            .bind(start as i64)
            .bind(limit as i64)
            .fetch_all(self.db.pool())
            .await?;
        rows.iter().map(RawEntry::from_row).collect()
    }

    /// Records a signed head (a head for an existing size is kept as it was).
    pub async fn insert_head(&self, head: &StoredHead) -> anyhow::Result<()> {
        // In line with the appends (SQLite): without the turn, the insert waits in
        // SQLite's busy handler, which sleeps up to 100 ms between tries and can
        // miss every gap between back-to-back append groups (heads seconds late).
        let _turn = self.db.write_turn().await;
        sqlx::query(
            "INSERT INTO audit_tree_heads (tree_size, root_hash, timestamp_us, key_id, signature) \
             VALUES ($1, $2, $3, $4, $5) ON CONFLICT (tree_size) DO NOTHING",
        )
        .bind(head.tree_size as i64)
        .bind(head.root.to_vec())
        .bind(head.timestamp_us)
        .bind(head.key_id.clone())
        .bind(head.signature.clone())
        .execute(self.db.write_pool())
        .await?;
        Ok(())
    }

    /// Adds a head-signing key to the keys ListSigningKeys hands out, first used
    /// at `now_us`; a key already there keeps its first use.
    pub async fn add_signing_key(
        &self,
        key_id: &str,
        public_key: &[u8],
        now_us: i64,
    ) -> anyhow::Result<()> {
        let _turn = self.db.write_turn().await;
        sqlx::query(
            "INSERT INTO audit_signing_keys (key_id, public_key, first_used_us) \
             VALUES ($1, $2, $3) ON CONFLICT (key_id) DO NOTHING",
        )
        .bind(key_id.to_string())
        .bind(public_key.to_vec())
        .bind(now_us)
        .execute(self.db.write_pool())
        .await?;
        Ok(())
    }

    /// Every key that has signed heads, newest first: (key id, public key, first
    /// use in µs).
    pub async fn signing_keys(&self) -> anyhow::Result<Vec<(String, Vec<u8>, i64)>> {
        let rows = sqlx::query(
            "SELECT key_id, public_key, first_used_us FROM audit_signing_keys \
             ORDER BY first_used_us DESC, key_id",
        )
        .fetch_all(self.db.pool())
        .await?;
        rows.iter()
            .map(|r| Ok((r.try_get(0)?, r.try_get(1)?, r.try_get(2)?)))
            .collect()
    }

    /// The head with the largest tree size.
    pub async fn latest_head(&self) -> anyhow::Result<Option<StoredHead>> {
        let row = sqlx::query(concat!(head_select!(), " ORDER BY tree_size DESC LIMIT 1"))
            .fetch_optional(self.db.pool())
            .await?;
        row.as_ref().map(head_from_row).transpose()
    }

    /// The head signed for `tree_size`, if any.
    pub async fn head_at(&self, tree_size: u64) -> anyhow::Result<Option<StoredHead>> {
        let row = sqlx::query(concat!(head_select!(), " WHERE tree_size = $1"))
            .bind(tree_size as i64)
            .fetch_optional(self.db.pool())
            .await?;
        row.as_ref().map(head_from_row).transpose()
    }

    /// Up to `limit` heads of size at least `min_size` and above `after`, by size.
    pub async fn heads_page(
        &self,
        min_size: u64,
        after: Option<u64>,
        limit: usize,
    ) -> anyhow::Result<Vec<StoredHead>> {
        let from = after.map_or(min_size, |a| (a + 1).max(min_size));
        let rows = sqlx::query(concat!(
            head_select!(),
            " WHERE tree_size >= $1 ORDER BY tree_size LIMIT $2"
        ))
        .bind(from as i64)
        .bind(limit as i64)
        .fetch_all(self.db.pool())
        .await?;
        rows.iter().map(head_from_row).collect()
    }

    /// Entries matching `filter` with `seq > after`, oldest first, at most `limit`.
    pub async fn list(
        &self,
        filter: &EventFilter,
        after: Option<u64>,
        limit: usize,
    ) -> anyhow::Result<Vec<StoredEntry>> {
        let mut p = Params::new();
        let mut clauses = Vec::new();
        let mut from = "audit_entries e".to_string();
        if let Some(hash) = &filter.subject_hash {
            from = format!(
                "audit_subject_index i JOIN audit_entries e ON e.seq = i.seq AND i.subject_hash = {}",
                p.text(hash.clone())
            );
        }
        for (column, value) in [
            ("e.actor", &filter.actor),
            ("e.method", &filter.method),
            ("e.action", &filter.action),
            ("e.resource", &filter.resource),
            ("e.service", &filter.service),
            ("e.outcome", &filter.outcome),
        ] {
            if let Some(v) = value {
                clauses.push(format!("{column} = {}", p.text(v.clone())));
            }
        }
        if let Some(from_us) = filter.from_us {
            clauses.push(format!("e.time_us >= {}", p.int(from_us)));
        }
        if let Some(to_us) = filter.to_us {
            clauses.push(format!("e.time_us < {}", p.int(to_us)));
        }
        if let Some(after) = after {
            clauses.push(format!("e.seq > {}", p.int(after as i64)));
        }
        let where_clause = if clauses.is_empty() {
            String::new()
        } else {
            format!("WHERE {}", clauses.join(" AND "))
        };
        let sql = format!(
            "SELECT e.entry FROM {from} {where_clause} ORDER BY e.seq LIMIT {}",
            p.int(limit as i64)
        );
        let q = p.bind(sqlx::query(AssertSqlSafe(sql)));
        let rows = q.fetch_all(self.db.pool()).await?;
        let entries = rows
            .iter()
            .map(|r| Entry::from_bytes(&r.try_get::<Vec<u8>, _>(0)?))
            .collect::<anyhow::Result<Vec<_>>>()?;
        self.open_all(entries).await
    }

    /// Opens the sealed subjects of `entries` with the keys that still exist.
    async fn open_all(&self, entries: Vec<Entry>) -> anyhow::Result<Vec<StoredEntry>> {
        let mut key_ids: Vec<String> = entries
            .iter()
            .flat_map(|e| {
                e.sealed
                    .iter()
                    .map(|s| s.key_id.clone())
                    .chain(e.members.iter().map(|m| m.key_id.clone()))
            })
            .collect();
        key_ids.sort();
        key_ids.dedup();
        let mut keys: HashMap<String, Vec<u8>> = HashMap::new();
        for chunk in key_ids.chunks(500) {
            let sql = format!(
                "SELECT key_id, key FROM audit_subject_keys WHERE key IS NOT NULL AND key_id IN ({})",
                placeholders(self.db.backend(), 1, chunk.len())
            );
            let mut q = sqlx::query(AssertSqlSafe(sql));
            for id in chunk {
                q = q.bind(id.clone());
            }
            for row in q.fetch_all(self.db.pool()).await? {
                keys.insert(row.try_get(0)?, row.try_get(1)?);
            }
        }
        Ok(entries
            .into_iter()
            .map(|entry| {
                let subject = entry.sealed.as_ref().and_then(|s| {
                    keys.get(&s.key_id)
                        .and_then(|k| entry::open(k, &entry.event_id, s))
                });
                let shredded = entry.sealed.is_some() && subject.is_none();
                let members = entry
                    .members
                    .iter()
                    .enumerate()
                    .map(|(i, m)| {
                        keys.get(&m.key_id)
                            .and_then(|k| entry::open_member(k, &entry.event_id, i, m))
                    })
                    .collect();
                StoredEntry {
                    entry,
                    subject,
                    shredded,
                    members,
                }
            })
            .collect())
    }

    /// Destroys the key of `subject_hash` and its search index; returns how many
    /// entries became unreadable. Idempotent.
    pub async fn shred(&self, subject_hash: &str, now_us: i64) -> anyhow::Result<u64> {
        let mut tx = self.db.begin_write().await?;
        // The appenders' lock: an append that took it first commits before the key
        // and the index go (and is shredded with them); one that takes it after
        // sees the key destroyed (see `append_postgres`).
        sqlx::query(LOCK_NEXT_SEQ_SQL).execute(&mut *tx).await?;
        let removed = sqlx::query("DELETE FROM audit_subject_index WHERE subject_hash = $1")
            .bind(subject_hash.to_string())
            .execute(&mut *tx)
            .await?
            .rows_affected();
        sqlx::query(
            "UPDATE audit_subject_keys SET key = NULL, subject_hash = NULL, shredded_us = $1 \
             WHERE subject_hash = $2",
        )
        .bind(now_us)
        .bind(subject_hash.to_string())
        .execute(&mut *tx)
        .await?;
        tx.commit().await?;
        Ok(removed)
    }
}

/// One stored row, unparsed, as `custodia audit verify` reads it.
#[derive(Debug, Clone)]
pub struct RawEntry {
    /// Sequence column.
    pub seq: u64,
    /// Entry bytes.
    pub entry: Vec<u8>,
    /// Stored leaf hash column.
    pub leaf_hash: Vec<u8>,
    /// Clear query columns, as stored (`None` when the source has no such
    /// columns, e.g. a log read through the API; `Some(None)` never happens: a
    /// NULL column reads as a projection that matches no entry).
    pub projection: Option<Projection>,
}

impl RawEntry {
    /// One row of [`RAW_ENTRIES_SQL`], from whichever driver read it.
    pub fn from_row<R: Row>(r: &R) -> anyhow::Result<Self>
    where
        usize: sqlx::ColumnIndex<R>,
        i64: for<'r> sqlx::Decode<'r, R::Database> + sqlx::Type<R::Database>,
        Vec<u8>: for<'r> sqlx::Decode<'r, R::Database> + sqlx::Type<R::Database>,
        Option<String>: for<'r> sqlx::Decode<'r, R::Database> + sqlx::Type<R::Database>,
    {
        let seq: i64 = r.try_get(0)?;
        let projection: Option<String> = r.try_get(3)?;
        Ok(Self {
            seq: seq as u64,
            entry: r.try_get(1)?,
            leaf_hash: r.try_get(2)?,
            projection: Some(Projection(projection.unwrap_or_default())),
        })
    }
}

/// Rows of `audit_entries` from sequence `$1` on, at most `$2`, as [`RawEntry`]
/// reads them.
pub const RAW_ENTRIES_SQL: &str = concat!(
    "SELECT seq, entry, leaf_hash, ",
    "CAST(LENGTH(event_id) AS TEXT) || ':' || event_id || ',' || ",
    "CAST(time_us AS TEXT) || ',' || ",
    "CAST(LENGTH(actor) AS TEXT) || ':' || actor || ',' || ",
    "CAST(LENGTH(service) AS TEXT) || ':' || service || ',' || ",
    "CAST(LENGTH(method) AS TEXT) || ':' || method || ',' || ",
    "CAST(LENGTH(action) AS TEXT) || ':' || action || ',' || ",
    "CAST(LENGTH(resource) AS TEXT) || ':' || resource || ',' || ",
    "CAST(LENGTH(purpose) AS TEXT) || ':' || purpose || ',' || ",
    "CAST(LENGTH(outcome) AS TEXT) || ':' || outcome ",
    "FROM audit_entries WHERE seq >= $1 ORDER BY seq LIMIT $2"
);

/// The clear query columns stored beside each entry (event id, time, actor,
/// service, method, action, resource, purpose, outcome), encoded as one string:
/// each text value prefixed by its length in characters, so two different sets
/// of values never encode alike. The database computes the same encoding in
/// [`RAW_ENTRIES_SQL`] (`LENGTH` counts characters on SQLite and PostgreSQL alike).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Projection(String);

impl Projection {
    /// Whether this is the projection of the entry whose columns are `c` (walks the
    /// encoding in place: verification calls this for every entry).
    pub fn matches(&self, c: &EntryColumns<'_>) -> bool {
        let mut rest = self.0.as_str();
        let texts = [
            &c.actor,
            &c.service,
            &c.method,
            &c.action,
            &c.resource,
            &c.purpose,
            &c.outcome,
        ];
        take_text(&mut rest, &c.event_id)
            && take(&mut rest, ",")
            && take_int(&mut rest, c.time_us)
            && texts
                .iter()
                .all(|v| take(&mut rest, ",") && take_text(&mut rest, v))
            && rest.is_empty()
    }
}

/// Consumes `prefix`.
fn take(rest: &mut &str, prefix: &str) -> bool {
    match rest.strip_prefix(prefix) {
        Some(tail) => {
            *rest = tail;
            true
        }
        None => false,
    }
}

/// Consumes a canonical decimal number (no sign, no leading zero) equal to `n`.
fn take_digits(rest: &mut &str, n: u64) -> bool {
    let end = rest
        .find(|c: char| !c.is_ascii_digit())
        .unwrap_or(rest.len());
    let (digits, tail) = rest.split_at(end);
    let canonical = digits == "0" || !digits.starts_with('0');
    if canonical && digits.parse::<u64>() == Ok(n) {
        *rest = tail;
        true
    } else {
        false
    }
}

/// Consumes the decimal form of `n`.
fn take_int(rest: &mut &str, n: i64) -> bool {
    (n >= 0 || take(rest, "-")) && take_digits(rest, n.unsigned_abs())
}

/// Consumes `<length in characters>:<value>` for `v`.
fn take_text(rest: &mut &str, v: &str) -> bool {
    take_digits(rest, v.chars().count() as u64) && take(rest, ":") && take(rest, v)
}

fn head_from_row(r: &AnyRow) -> anyhow::Result<StoredHead> {
    let size: i64 = r.try_get(0)?;
    let root: Vec<u8> = r.try_get(1)?;
    Ok(StoredHead {
        tree_size: size as u64,
        root: hash_of(&root)?,
        timestamp_us: r.try_get(2)?,
        key_id: r.try_get(3)?,
        signature: r.try_get(4)?,
    })
}

/// What an append returns: each event's sequence number and whether it was a
/// duplicate, then the leaf hash of every new entry by sequence number.
pub type Appended = (Vec<(u64, bool)>, Vec<(u64, Hash)>);

/// Takes the log's sequence row lock; returns the next sequence number.
const LOCK_NEXT_SEQ_SQL: &str =
    "UPDATE audit_log_state SET next_seq = next_seq WHERE id = 1 RETURNING next_seq";
/// Moves the next sequence number past an append.
const SET_NEXT_SEQ_SQL: &str = "UPDATE audit_log_state SET next_seq = $1 WHERE id = 1";

/// The entries an append writes, built in memory once the sequence row is locked.
struct Built<'a> {
    /// Per event: its sequence number and whether it was a duplicate.
    seqs: Vec<(u64, bool)>,
    /// New entries: sequence, event, entry bytes, leaf hash.
    fresh: Vec<(u64, &'a NewEvent, Vec<u8>, Hash)>,
    /// The next sequence number after them.
    next: u64,
}

impl Built<'_> {
    /// `(seq, subject hash)` of every subject of the new entries (a batch
    /// entry's members each once).
    fn indexed(&self) -> Vec<(u64, &str)> {
        let mut out = Vec::new();
        for (seq, e, _, _) in &self.fresh {
            let distinct: std::collections::BTreeSet<&str> = e
                .subject
                .iter()
                .chain(&e.members)
                .map(|s| s.subject_hash.as_str())
                .collect();
            out.extend(distinct.into_iter().map(|hash| (*seq, hash)));
        }
        out
    }

    /// What [`LogStore::append_with_leaves`] returns: the sequence numbers, and the
    /// leaf hash of every new entry by sequence number.
    fn into_result(self) -> Appended {
        let leaves = self
            .fresh
            .iter()
            .map(|(seq, _, _, leaf)| (*seq, *leaf))
            .collect();
        (self.seqs, leaves)
    }
}

/// Each event's subject fields sealed with its subject's key from `keys` (none
/// for an event without a subject). The seal does not depend on the sequence
/// number, so it can be made before the sequence row is locked.
fn seal_all(events: &[NewEvent], keys: &HashMap<String, (String, [u8; 32])>) -> Vec<Seals> {
    events
        .iter()
        .map(|event| {
            let sealed = event.subject.as_ref().map(|s| {
                let (key_id, key) = &keys[&s.subject_hash];
                let fields = SubjectFields {
                    detail: event.detail.clone(),
                    ..s.clone()
                };
                entry::seal(key, key_id, &event.event_id, &fields)
            });
            let members = event
                .members
                .iter()
                .enumerate()
                .map(|(i, m)| {
                    let (key_id, key) = &keys[&m.subject_hash];
                    entry::seal_member(
                        key,
                        key_id,
                        &event.event_id,
                        i,
                        &m.subject_type,
                        &m.subject_hash,
                    )
                })
                .collect();
            (sealed, members)
        })
        .collect()
}

/// An event's sealed subject and sealed batch members.
type Seals = (Option<Sealed>, Vec<SealedMember>);

/// Numbers `events` from `next` (skipping ids in `existing` or repeated in the
/// batch), and encodes and hashes the entries, each with its subject fields as
/// `sealed` (from [`seal_all`], in the order of `events`).
fn build_entries<'a>(
    events: &'a [NewEvent],
    mut next: u64,
    existing: &HashMap<String, u64>,
    sealed: Vec<Seals>,
) -> Built<'a> {
    let mut seqs = Vec::with_capacity(events.len());
    let mut fresh = Vec::new();
    let mut in_batch: HashMap<&str, u64> = HashMap::new();
    for (event, (sealed, members)) in events.iter().zip(sealed) {
        if let Some(seq) = existing.get(&event.event_id) {
            seqs.push((*seq, true));
            continue;
        }
        if let Some(seq) = in_batch.get(event.event_id.as_str()) {
            seqs.push((*seq, true));
            continue;
        }
        let seq = next;
        next += 1;
        let clear_detail = if event.subject.is_some() {
            String::new()
        } else {
            event.detail.clone()
        };
        let entry = Entry {
            v: if members.is_empty() {
                ENTRY_VERSION
            } else {
                BATCH_ENTRY_VERSION
            },
            seq,
            event_id: event.event_id.clone(),
            time_us: event.time_us,
            actor: event.actor.clone(),
            service: event.service.clone(),
            method: event.method.clone(),
            action: event.action.clone(),
            resource: event.resource.clone(),
            purpose: event.purpose.clone(),
            outcome: event.outcome.clone(),
            status_code: event.status_code,
            trace_id: event.trace_id.clone(),
            detail: clear_detail,
            sealed,
            members,
        };
        in_batch.insert(&event.event_id, seq);
        seqs.push((seq, false));
        let bytes = entry.to_bytes();
        let leaf = leaf_hash(&bytes);
        fresh.push((seq, event, bytes, leaf));
    }
    Built { seqs, fresh, next }
}

/// [`LogStore::append_with_leaves`] on PostgreSQL, through a native connection:
/// the same statements in effect, but each lookup and insert is one statement
/// binding one array per column (`= ANY($1)`, `UNNEST`) instead of one parameter
/// per value, in chunks, through `sqlx::Any` (that took most of an append group's
/// time under the lock; +40-50% appends/s in paired runs, see BENCHMARKS.md).
///
/// The subjects' keys are looked up and created, and the subject fields sealed,
/// before the sequence row is locked: another group's locked insert (see
/// `AuditLog`'s writers) runs meanwhile. Shredding takes the sequence lock too,
/// and under it the append checks that none of its keys was destroyed since.
async fn append_postgres(
    pool: &sqlx::PgPool,
    events: &[NewEvent],
    now_us: i64,
) -> anyhow::Result<Appended> {
    let keys = subject_keys_postgres(pool, events, now_us).await?;
    let sealed = seal_all(events, &keys);

    let mut tx = pool.begin().await?;
    let next: i64 = sqlx::query_scalar(LOCK_NEXT_SEQ_SQL)
        .fetch_one(&mut *tx)
        .await?;
    // A shred that committed since the keys were read destroyed one of them: the
    // events must not be sealed with it, nor their subject indexed again. The
    // group fails and is retried (batches alone, then by their senders), with
    // fresh keys.
    let used: Vec<&str> = keys.values().map(|(key_id, _)| key_id.as_str()).collect();
    let destroyed: i64 = sqlx::query_scalar(
        "SELECT COUNT(*) FROM audit_subject_keys WHERE key_id = ANY($1) AND key IS NULL",
    )
    .bind(&used)
    .fetch_one(&mut *tx)
    .await?;
    anyhow::ensure!(
        destroyed == 0,
        "a subject of the append was shredded while it was prepared; retry"
    );

    let ids: Vec<&str> = events.iter().map(|e| e.event_id.as_str()).collect();
    let existing: HashMap<String, u64> = sqlx::query_as::<_, (String, i64)>(
        "SELECT event_id, seq FROM audit_entries WHERE event_id = ANY($1)",
    )
    .bind(&ids)
    .fetch_all(&mut *tx)
    .await?
    .into_iter()
    .map(|(id, seq)| (id, seq as u64))
    .collect();

    let built = build_entries(events, next as u64, &existing, sealed);
    if !built.fresh.is_empty() {
        let n = built.fresh.len();
        let mut cols = EntryColumnsOf::with_capacity(n);
        for (seq, e, bytes, leaf) in &built.fresh {
            cols.push(*seq, e, bytes, leaf);
        }
        sqlx::query(
            "INSERT INTO audit_entries (seq, event_id, entry, leaf_hash, time_us, actor, \
             service, method, action, resource, purpose, outcome, appended_us) \
             SELECT *, $13 FROM UNNEST($1::bigint[], $2::text[], $3::bytea[], $4::bytea[], \
             $5::bigint[], $6::text[], $7::text[], $8::text[], $9::text[], $10::text[], \
             $11::text[], $12::text[])",
        )
        .bind(&cols.seq)
        .bind(&cols.event_id)
        .bind(&cols.entry)
        .bind(&cols.leaf)
        .bind(&cols.time_us)
        .bind(&cols.actor)
        .bind(&cols.service)
        .bind(&cols.method)
        .bind(&cols.action)
        .bind(&cols.resource)
        .bind(&cols.purpose)
        .bind(&cols.outcome)
        .bind(now_us)
        .execute(&mut *tx)
        .await?;
        let (seqs, subjects): (Vec<i64>, Vec<&str>) = built
            .indexed()
            .into_iter()
            .map(|(seq, hash)| (seq as i64, hash))
            .unzip();
        if !seqs.is_empty() {
            sqlx::query(
                "INSERT INTO audit_subject_index (subject_hash, seq) \
                 SELECT * FROM UNNEST($1::text[], $2::bigint[])",
            )
            .bind(&subjects)
            .bind(&seqs)
            .execute(&mut *tx)
            .await?;
        }
    }
    sqlx::query(SET_NEXT_SEQ_SQL)
        .bind(built.next as i64)
        .execute(&mut *tx)
        .await?;
    tx.commit().await?;
    Ok(built.into_result())
}

/// The columns of new entries, one array each, for an `UNNEST` insert.
struct EntryColumnsOf<'a> {
    seq: Vec<i64>,
    event_id: Vec<&'a str>,
    entry: Vec<&'a [u8]>,
    leaf: Vec<&'a [u8]>,
    time_us: Vec<i64>,
    actor: Vec<&'a str>,
    service: Vec<&'a str>,
    method: Vec<&'a str>,
    action: Vec<&'a str>,
    resource: Vec<&'a str>,
    purpose: Vec<&'a str>,
    outcome: Vec<&'a str>,
}

impl<'a> EntryColumnsOf<'a> {
    fn with_capacity(n: usize) -> Self {
        Self {
            seq: Vec::with_capacity(n),
            event_id: Vec::with_capacity(n),
            entry: Vec::with_capacity(n),
            leaf: Vec::with_capacity(n),
            time_us: Vec::with_capacity(n),
            actor: Vec::with_capacity(n),
            service: Vec::with_capacity(n),
            method: Vec::with_capacity(n),
            action: Vec::with_capacity(n),
            resource: Vec::with_capacity(n),
            purpose: Vec::with_capacity(n),
            outcome: Vec::with_capacity(n),
        }
    }

    fn push(&mut self, seq: u64, e: &'a NewEvent, bytes: &'a [u8], leaf: &'a Hash) {
        self.seq.push(seq as i64);
        self.event_id.push(&e.event_id);
        self.entry.push(bytes);
        self.leaf.push(leaf);
        self.time_us.push(e.time_us);
        self.actor.push(&e.actor);
        self.service.push(&e.service);
        self.method.push(&e.method);
        self.action.push(&e.action);
        self.resource.push(&e.resource);
        self.purpose.push(&e.purpose);
        self.outcome.push(&e.outcome);
    }
}

/// The distinct subject hashes of `events`, sorted.
fn subject_hashes(events: &[NewEvent]) -> Vec<&str> {
    let mut hashes: Vec<&str> = events
        .iter()
        .flat_map(|e| {
            e.subject
                .iter()
                .chain(&e.members)
                .map(|s| s.subject_hash.as_str())
        })
        .collect();
    hashes.sort_unstable();
    hashes.dedup();
    hashes
}

/// The key of every subject in `events`, created when missing, each statement in
/// a transaction of its own (PostgreSQL, native connection). A key another
/// appender created meanwhile wins (the subject hash is unique) and is read back.
async fn subject_keys_postgres(
    pool: &sqlx::PgPool,
    events: &[NewEvent],
    now_us: i64,
) -> anyhow::Result<HashMap<String, (String, [u8; 32])>> {
    let hashes = subject_hashes(events);
    let mut keys = stored_keys_postgres(pool, &hashes).await?;
    let created = new_keys(hashes.into_iter().filter(|h| !keys.contains_key(*h)));
    if created.is_empty() {
        return Ok(keys);
    }
    let (mut key_ids, mut subject_hashes, mut key_bytes) = (vec![], vec![], vec![]);
    for (hash, (key_id, key)) in &created {
        key_ids.push(key_id.as_str());
        subject_hashes.push(hash.as_str());
        key_bytes.push(key.as_slice());
    }
    let inserted: std::collections::HashSet<String> = sqlx::query_scalar(
        "INSERT INTO audit_subject_keys (key_id, subject_hash, key, created_us) \
         SELECT k, h, b, $4 FROM UNNEST($1::text[], $2::text[], $3::bytea[]) AS t (k, h, b) \
         ON CONFLICT (subject_hash) DO NOTHING RETURNING subject_hash",
    )
    .bind(&key_ids)
    .bind(&subject_hashes)
    .bind(&key_bytes)
    .bind(now_us)
    .fetch_all(pool)
    .await?
    .into_iter()
    .collect();
    let lost: Vec<&str> = subject_hashes
        .iter()
        .copied()
        .filter(|h| !inserted.contains(*h))
        .collect();
    let theirs = if lost.is_empty() {
        HashMap::new()
    } else {
        stored_keys_postgres(pool, &lost).await?
    };
    anyhow::ensure!(
        theirs.len() == lost.len(),
        "a subject key was neither created nor found"
    );
    keys.extend(
        created
            .into_iter()
            .filter(|(hash, _)| inserted.contains(hash)),
    );
    keys.extend(theirs);
    Ok(keys)
}

/// The stored keys of `hashes` (PostgreSQL, native connection).
async fn stored_keys_postgres(
    pool: &sqlx::PgPool,
    hashes: &[&str],
) -> anyhow::Result<HashMap<String, (String, [u8; 32])>> {
    let mut keys = HashMap::new();
    let stored = sqlx::query_as::<_, (String, String, Vec<u8>)>(
        "SELECT subject_hash, key_id, key FROM audit_subject_keys WHERE subject_hash = ANY($1)",
    )
    .bind(hashes)
    .fetch_all(pool)
    .await?;
    for (hash, key_id, key) in stored {
        keys.insert(hash, (key_id, subject_key(key)?));
    }
    Ok(keys)
}

/// A fresh key (and time-ordered key id) for each of `hashes`.
fn new_keys<'h>(hashes: impl Iterator<Item = &'h str>) -> Vec<(String, (String, [u8; 32]))> {
    hashes
        .map(|hash| {
            // Time-ordered, so the key-id index grows at its end instead of taking a
            // write at a random page per new subject.
            let key_id = uuid::Uuid::now_v7().simple().to_string();
            (hash.to_string(), (key_id, entry::new_key()))
        })
        .collect()
}

async fn existing_seqs(
    conn: &mut AnyConnection,
    backend: Backend,
    events: &[NewEvent],
) -> anyhow::Result<HashMap<String, u64>> {
    let mut found = HashMap::new();
    for chunk in events.chunks(500) {
        let sql = format!(
            "SELECT event_id, seq FROM audit_entries WHERE event_id IN ({})",
            placeholders(backend, 1, chunk.len())
        );
        let mut q = sqlx::query(AssertSqlSafe(sql));
        for e in chunk {
            q = q.bind(e.event_id.clone());
        }
        for row in q.fetch_all(&mut *conn).await? {
            let seq: i64 = row.try_get(1)?;
            found.insert(row.try_get(0)?, seq as u64);
        }
    }
    Ok(found)
}

/// The key of every subject in `events`, created when missing.
async fn subject_keys(
    conn: &mut AnyConnection,
    backend: Backend,
    events: &[NewEvent],
    now_us: i64,
) -> anyhow::Result<HashMap<String, (String, [u8; 32])>> {
    let hashes = subject_hashes(events);
    let mut keys = HashMap::new();
    for chunk in hashes.chunks(500) {
        let sql = format!(
            "SELECT subject_hash, key_id, key FROM audit_subject_keys WHERE subject_hash IN ({})",
            placeholders(backend, 1, chunk.len())
        );
        let mut q = sqlx::query(AssertSqlSafe(sql));
        for h in chunk {
            q = q.bind(h.to_string());
        }
        for row in q.fetch_all(&mut *conn).await? {
            let key = subject_key(row.try_get(2)?)?;
            keys.insert(
                row.try_get::<String, _>(0)?,
                (row.try_get::<String, _>(1)?, key),
            );
        }
    }
    // New subjects get their keys in multi-row INSERTs (one round trip per chunk, not
    // one per subject: a batch can name hundreds of subjects seen for the first time).
    let missing: Vec<&str> = hashes
        .into_iter()
        .filter(|h| !keys.contains_key(*h))
        .collect();
    let created = new_keys(missing.into_iter());
    let mut script = Script::new(backend);
    script.insert_rows(
        (
            "INSERT INTO audit_subject_keys (key_id, subject_hash, key, created_us)",
            "",
        ),
        4,
        INSERT_CHUNK,
        &created,
        |b, (hash, (key_id, key))| {
            b.bind(key_id.clone())
                .bind(hash.clone())
                .bind(key.to_vec())
                .bind(now_us);
        },
    );
    script.execute(conn).await?;
    keys.extend(created);
    Ok(keys)
}
