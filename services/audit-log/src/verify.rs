//! `custodia audit verify`: recomputes the whole tree from the stored entries,
//! checks every signed head, and names the first sequence number where the data no
//! longer matches. Streams the log (O(log n) memory), so it scales to millions of
//! entries.

use std::collections::HashMap;

use ed25519_dalek::VerifyingKey;

use crate::{
    entry::Entry,
    merkle::{Recomputer, leaf_hash},
    signer::verify_head,
    store::{LogStore, Projection, RawEntry, StoredHead},
};

/// Entries read per round trip.
const CHUNK: usize = 10_000;

/// What verification found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Report {
    /// Entries read and checked.
    pub entries: u64,
    /// Signed heads checked.
    pub heads: u64,
    /// The first problem, if any.
    pub problem: Option<Problem>,
}

/// The first place the log no longer matches.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Problem {
    /// First sequence number affected.
    pub seq: u64,
    /// What is wrong there.
    pub reason: String,
}

impl Report {
    /// True when no problem was found.
    pub fn is_ok(&self) -> bool {
        self.problem.is_none()
    }
}

impl std::fmt::Display for Report {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match &self.problem {
            None => write!(
                f,
                "ok: {} entries, {} signed heads verified",
                self.entries, self.heads
            ),
            Some(p) => write!(
                f,
                "TAMPERED: first bad sequence number {}: {} ({} entries and {} heads checked before it)",
                p.seq, p.reason, self.entries, self.heads
            ),
        }
    }
}

/// Checks one raw row against its expected position; the reason if it does not match.
fn check_row(expected: u64, raw: &RawEntry) -> Result<(), String> {
    if raw.seq != expected {
        return Err(if raw.seq > expected {
            format!(
                "entry {expected} is missing (next stored entry is {})",
                raw.seq
            )
        } else {
            format!("entry {} appears out of order", raw.seq)
        });
    }
    if raw.leaf_hash.as_slice() != leaf_hash(&raw.entry).as_slice() {
        return Err("entry bytes do not match their leaf hash".into());
    }
    let entry =
        Entry::from_bytes(&raw.entry).map_err(|_| "entry bytes do not parse".to_string())?;
    if entry.seq != expected {
        return Err(format!(
            "entry recorded for position {} is stored at position {expected} (reordered or inserted)",
            entry.seq
        ));
    }
    if Projection::of(&entry) != raw.projection {
        return Err("query columns differ from the hashed entry".into());
    }
    Ok(())
}

/// Checks one head against the recomputed root at its size.
fn check_head(
    head: &StoredHead,
    root: &[u8; 32],
    keys: &HashMap<String, VerifyingKey>,
) -> Result<(), String> {
    let Some(key) = keys.get(&head.key_id) else {
        return Err(format!(
            "head of size {} is signed by unknown key {}",
            head.tree_size, head.key_id
        ));
    };
    let ts_ms = (head.timestamp_us / 1000).max(0) as u64;
    if !verify_head(key, head.tree_size, ts_ms, &head.root, &head.signature) {
        return Err(format!(
            "signature of the head of size {} is invalid",
            head.tree_size
        ));
    }
    if &head.root != root {
        return Err(format!(
            "signed head of size {} does not match the entries (forked or altered log)",
            head.tree_size
        ));
    }
    Ok(())
}

/// Checks every head whose size equals the recomputed tree's size.
fn check_heads_at<'a>(
    heads: &mut std::iter::Peekable<impl Iterator<Item = &'a StoredHead>>,
    tree: &Recomputer,
    keys: &HashMap<String, VerifyingKey>,
    report: &mut Report,
    last_head_size: &mut u64,
) -> Result<(), Problem> {
    while let Some(head) = heads.next_if(|h| h.tree_size == tree.size()) {
        // A head that disagrees with data that checked out entry by entry: the
        // damage lies after the previous good head.
        check_head(head, &tree.root(), keys).map_err(|reason| Problem {
            seq: (*last_head_size).min(head.tree_size.saturating_sub(1)),
            reason,
        })?;
        *last_head_size = head.tree_size;
        report.heads += 1;
    }
    Ok(())
}

/// Verifies the log in `store` against `keys` (key id -> public key).
pub async fn verify(
    store: &LogStore,
    keys: &HashMap<String, VerifyingKey>,
) -> anyhow::Result<Report> {
    let heads = store.heads().await?;
    let mut heads_iter = heads.iter().peekable();
    let mut report = Report {
        entries: 0,
        heads: 0,
        problem: None,
    };
    let mut tree = Recomputer::new();
    let mut last_head_size = 0u64;
    // The empty head (size 0) is checked before any entry.
    if let Err(p) = check_heads_at(
        &mut heads_iter,
        &tree,
        keys,
        &mut report,
        &mut last_head_size,
    ) {
        report.problem = Some(p);
        return Ok(report);
    }
    loop {
        let rows = store.raw_entries(tree.size(), CHUNK).await?;
        if rows.is_empty() {
            break;
        }
        for raw in &rows {
            let expected = tree.size();
            if let Err(reason) = check_row(expected, raw) {
                report.problem = Some(Problem {
                    seq: expected,
                    reason,
                });
                return Ok(report);
            }
            tree.push(leaf_hash(&raw.entry));
            report.entries += 1;
            if let Err(p) = check_heads_at(
                &mut heads_iter,
                &tree,
                keys,
                &mut report,
                &mut last_head_size,
            ) {
                report.problem = Some(p);
                return Ok(report);
            }
        }
    }
    if let Some(head) = heads_iter.next() {
        report.problem = Some(Problem {
            seq: tree.size(),
            reason: format!(
                "the log ends at {} entries but a head was signed for {} (truncated)",
                tree.size(),
                head.tree_size
            ),
        });
    }
    Ok(report)
}

/// Verifies the audit-log database of `config`. Trusted keys: each `KEY_ID=HEX` in
/// `public_keys`, or when none is given the key of the configured signer.
pub async fn verify_database(
    config: &custodia_core::Config,
    public_keys: &[String],
) -> anyhow::Result<Report> {
    let mut keys = HashMap::new();
    for spec in public_keys {
        let (id, hex_key) = spec
            .split_once('=')
            .ok_or_else(|| anyhow::anyhow!("--public-key expects KEY_ID=HEX, got {spec:?}"))?;
        let bytes: [u8; 32] = hex::decode(hex_key)
            .ok()
            .and_then(|b| b.try_into().ok())
            .ok_or_else(|| anyhow::anyhow!("--public-key {id}: expected 64 hex characters"))?;
        keys.insert(id.to_string(), VerifyingKey::from_bytes(&bytes)?);
    }
    if keys.is_empty() {
        let signer = crate::keys::head_signer(config)?;
        keys.insert(signer.key_id().to_string(), signer.public_key());
    }
    let db =
        custodia_core::storage::open_service(config, custodia_core::ServiceName::AuditLog).await?;
    let report = verify(&LogStore::new(db.clone()), &keys).await;
    db.close().await;
    report
}
