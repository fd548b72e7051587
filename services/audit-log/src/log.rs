//! The audit log as a whole: durable appends, an in-memory RFC 6962 tree kept in
//! step with the database, and the integrator that signs tree heads.
//!
//! Any replica appends (sequence numbers come from one locked row, so they are
//! gap-free across replicas). Exactly one replica at a time integrates and signs:
//! on PostgreSQL the one holding a session advisory lock, released by the server
//! when that replica's connection dies, so another takes over and loses nothing
//! (the entries are durable; heads are recomputed from them).
//!
//! Concurrent appends on one replica are written together
//! ([`custodia_core::group_commit`]), so the sequence lock and the fsync are paid
//! once per group instead of once per call. On PostgreSQL two group writers take
//! the calls in turn: a group looks up and creates its subjects' keys and seals
//! its events before it takes the sequence lock, while the other group holds it.

use std::{
    collections::BTreeMap,
    sync::{Arc, Mutex},
    time::Duration,
};

use custodia_core::{
    group_commit::GroupCommit,
    legal_time::Clock,
    storage::{Backend, to_micros},
};
use sqlx::{Row, pool::PoolConnection};
use tokio::sync::{Notify, RwLock, watch};

use crate::{
    merkle::{Hash, MerkleTree, ProofError},
    signer::HeadSigner,
    store::{LogStore, NewEvent, StoredHead},
};

/// Advisory lock key of the integrator ("custodia" in ASCII, as an i64).
const INTEGRATOR_LOCK: i64 = 0x6375_7374_6f64_6961;
/// Leaf hashes read from the database per round when catching up.
const SYNC_CHUNK: usize = 50_000;
/// Least time between two heads this replica signs (each entry is still in a
/// signed head well within a second).
const MIN_HEAD_INTERVAL: Duration = Duration::from_millis(200);
/// How often a replica looks for work appended elsewhere.
const POLL: Duration = Duration::from_millis(250);
/// Most events written in one group commit (batches are never split; a single larger
/// batch is written alone).
const MAX_GROUP_EVENTS: usize = 20_000;
/// The same on SQLite, where a group holds the one write turn for as long as it
/// takes and the integrator's head waits for it: an event acknowledged just after
/// the integrator looked waits up to two groups and the head interval for its
/// head. 20,000 let one group take all 16 load-generator calls and hold the turn
/// ~650 ms on a slow 2-core VM (heads up to 1.07 s late); 4,000 about halves
/// that at no measurable cost in throughput (a group's flush is ~1 ms of ~300).
const MAX_GROUP_EVENTS_SQLITE: usize = 4_000;

/// Group writers on PostgreSQL (see `AuditLog::appends`).
const PG_WRITERS: usize = 2;

/// One audit log: store, tree and signer.
#[derive(Debug)]
pub struct AuditLog {
    store: LogStore,
    tree: RwLock<MerkleTree>,
    signer: HeadSigner,
    clock: Arc<dyn Clock>,
    appended: Notify,
    size_tx: watch::Sender<u64>,
    /// Appends waiting to be written together: (sequence, duplicate) per event.
    /// One group writer on SQLite; on PostgreSQL [`PG_WRITERS`], calls dealt out in
    /// turn: while one group holds the sequence row lock, the next looks up its
    /// subjects' keys and seals its events.
    appends: Vec<GroupCommit<NewEvent, (u64, bool)>>,
    /// The writer of the next call.
    next_writer: std::sync::atomic::AtomicUsize,
    /// Leaf hashes of entries this replica committed and the tree has not taken
    /// yet, by sequence: the integrator need not read its own appends back.
    written: Arc<Mutex<BTreeMap<u64, Hash>>>,
}

impl AuditLog {
    /// Opens the log and loads its tree from the database.
    pub async fn open(
        store: LogStore,
        signer: HeadSigner,
        clock: Arc<dyn Clock>,
    ) -> anyhow::Result<Arc<Self>> {
        // Published before the first head it signs, and kept after a rotation.
        store
            .add_signing_key(
                signer.key_id(),
                signer.public_key().as_bytes(),
                to_micros(clock.now()),
            )
            .await?;
        let (size_tx, _) = watch::channel(0);
        let written = Arc::new(Mutex::new(BTreeMap::new()));
        let writers = match store.db().backend() {
            Backend::Sqlite => 1,
            Backend::Postgres => PG_WRITERS,
        };
        let appends = (0..writers)
            .map(|_| {
                let (store, clock, written) = (store.clone(), clock.clone(), written.clone());
                let max = match store.db().backend() {
                    Backend::Sqlite => MAX_GROUP_EVENTS_SQLITE,
                    Backend::Postgres => MAX_GROUP_EVENTS,
                };
                GroupCommit::new(max, move |events: Vec<NewEvent>| {
                    let (store, now_us) = (store.clone(), to_micros(clock.now()));
                    let written = written.clone();
                    async move {
                        let (seqs, leaves) = store.append_with_leaves(&events, now_us).await?;
                        // Committed: the tree may take these without reading them back.
                        written.lock().expect("written leaves").extend(leaves);
                        Ok(seqs)
                    }
                })
            })
            .collect();
        let log = Arc::new(Self {
            store,
            tree: RwLock::new(MerkleTree::new()),
            signer,
            clock,
            appended: Notify::new(),
            size_tx,
            appends,
            next_writer: std::sync::atomic::AtomicUsize::new(0),
            written,
        });
        log.sync_tree().await?;
        Ok(log)
    }

    /// The store.
    pub fn store(&self) -> &LogStore {
        &self.store
    }

    /// The signer (public key and key id).
    pub fn signer(&self) -> &HeadSigner {
        &self.signer
    }

    /// Subscribes to the log size, which grows as entries are appended (by this replica
    /// or, after a sync, by others).
    pub fn subscribe_size(&self) -> watch::Receiver<u64> {
        self.size_tx.subscribe()
    }

    /// Appends durably; returns each event's sequence number and whether it was a
    /// duplicate of an earlier append.
    ///
    /// Concurrent calls are committed together (see the module docs); the result is
    /// the same as if the batches had been appended one after the other.
    pub async fn append(&self, events: &[NewEvent]) -> anyhow::Result<Vec<(u64, bool)>> {
        let writer = self
            .next_writer
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed)
            % self.appends.len();
        let seqs = self.appends[writer].submit(events.to_vec()).await?;
        self.appended.notify_one();
        if let Some(max) = seqs.iter().map(|(seq, _)| *seq).max() {
            self.size_tx.send_if_modified(|size| {
                let grew = *size < max + 1;
                if grew {
                    *size = max + 1;
                }
                grew
            });
        }
        Ok(seqs)
    }

    /// Brings the in-memory tree up to the database; returns the tree size.
    pub async fn sync_tree(&self) -> anyhow::Result<u64> {
        let mut tree = self.tree.write().await;
        loop {
            self.take_written(&mut tree);
            let start = tree.len();
            let batch = self.store.leaf_hashes(start, SYNC_CHUNK).await?;
            if batch.is_empty() {
                break;
            }
            for (seq, hash) in &batch {
                // Appends commit in sequence order, so a gap means a corrupted store.
                anyhow::ensure!(*seq == tree.len(), "log entry {} is missing", tree.len());
                tree.push(*hash);
            }
            if batch.len() < SYNC_CHUNK {
                break;
            }
        }
        self.take_written(&mut tree);
        let size = tree.len();
        self.size_tx.send_if_modified(|s| {
            let grew = *s < size;
            if grew {
                *s = size;
            }
            grew
        });
        Ok(size)
    }

    /// Moves this replica's committed leaves that continue the tree into it, and
    /// forgets those the tree already has (read from the database).
    fn take_written(&self, tree: &mut MerkleTree) {
        let mut written = self.written.lock().expect("written leaves");
        while let Some(entry) = written.first_entry() {
            match entry.key().cmp(&tree.len()) {
                std::cmp::Ordering::Less => {
                    entry.remove();
                }
                std::cmp::Ordering::Equal => {
                    tree.push(entry.remove());
                }
                // A gap: entries another replica appended; read from the database.
                std::cmp::Ordering::Greater => break,
            }
        }
    }

    /// Signs a head over everything appended so far, if the tree grew since the last
    /// head. Returns the new head. Call only while holding leadership.
    pub async fn integrate(&self) -> anyhow::Result<Option<StoredHead>> {
        let size = self.sync_tree().await?;
        let latest = self.store.latest_head().await?;
        if latest.as_ref().is_some_and(|h| h.tree_size >= size) || (size == 0 && latest.is_some()) {
            return Ok(None);
        }
        let root = self.root(size).await?;
        let now = self.clock.now();
        let timestamp_ms = now.timestamp_millis().max(0) as u64;
        let head = StoredHead {
            tree_size: size,
            root,
            timestamp_us: timestamp_ms as i64 * 1000,
            key_id: self.signer.key_id().to_string(),
            signature: self.signer.sign(size, timestamp_ms, &root).to_vec(),
        };
        self.store.insert_head(&head).await?;
        Ok(Some(head))
    }

    /// Root hash of the first `size` entries.
    pub async fn root(&self, size: u64) -> Result<Hash, ProofError> {
        self.tree.read().await.root(size)
    }

    /// RFC 9162 inclusion proof of entry `seq` in the tree of `size` entries.
    pub async fn inclusion_proof(
        &self,
        seq: u64,
        size: u64,
    ) -> anyhow::Result<Result<(Hash, Vec<Hash>), ProofError>> {
        if size > self.tree.read().await.len() {
            self.sync_tree().await?;
        }
        let tree = self.tree.read().await;
        Ok(tree
            .inclusion_proof(seq, size)
            .map(|p| (tree.leaf(seq).unwrap_or_default(), p)))
    }

    /// RFC 9162 consistency proof between two tree sizes.
    pub async fn consistency_proof(
        &self,
        old: u64,
        new: u64,
    ) -> anyhow::Result<Result<Vec<Hash>, ProofError>> {
        if new > self.tree.read().await.len() {
            self.sync_tree().await?;
        }
        Ok(self.tree.read().await.consistency_proof(old, new))
    }

    /// Runs the integrator until the task is aborted: waits for leadership, then signs
    /// a head whenever entries were appended (here or on another replica).
    pub async fn run_integrator(self: Arc<Self>) {
        loop {
            match self.lead().await {
                Ok(()) => {}
                Err(e) => tracing::warn!(error = %e, "audit integrator failed; retrying"),
            }
            tokio::time::sleep(POLL).await;
        }
    }

    async fn lead(&self) -> anyhow::Result<()> {
        // Keep the connection: the advisory lock lives as long as its session.
        let _lock: Option<PoolConnection<sqlx::Any>> = match self.store.db().backend() {
            Backend::Postgres => {
                let mut conn = self.store.db().pool().acquire().await?;
                let got: bool = sqlx::query("SELECT pg_try_advisory_lock($1)")
                    .bind(INTEGRATOR_LOCK)
                    .fetch_one(&mut *conn)
                    .await?
                    .try_get(0)?;
                if !got {
                    // Another replica integrates; keep our tree fresh for proofs.
                    self.sync_tree().await?;
                    return Ok(());
                }
                Some(conn)
            }
            Backend::Sqlite => None,
        };
        loop {
            if self.integrate().await?.is_some() {
                // A busy log signs a few heads a second, not one per append: the
                // heads table (and what verification reads) grows with time, not load.
                tokio::time::sleep(MIN_HEAD_INTERVAL).await;
            }
            tokio::select! {
                _ = self.appended.notified() => {}
                _ = tokio::time::sleep(POLL) => {}
            }
        }
    }
}
