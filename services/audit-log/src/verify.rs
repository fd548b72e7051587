//! `custodia audit verify`: recomputes the whole tree from the stored entries,
//! checks every signed head, and names the first sequence number where the data no
//! longer matches. Streams the log (O(log n) memory), so it scales to millions of
//! entries.

use std::collections::{HashMap, VecDeque};

use ed25519_dalek::VerifyingKey;
use futures::future::maybe_done;

use crate::{
    entry::EntryColumns,
    merkle::{Hash, Recomputer, leaf_hash},
    signer::verify_head,
    store::{LogStore, RAW_ENTRIES_SQL, RawEntry, StoredHead},
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
fn check_row(expected: u64, raw: &RawEntry) -> Result<Hash, String> {
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
    let hash = leaf_hash(&raw.entry);
    if raw.leaf_hash.as_slice() != hash.as_slice() {
        return Err("entry bytes do not match their leaf hash".into());
    }
    let entry =
        EntryColumns::parse(&raw.entry).map_err(|_| "entry bytes do not parse".to_string())?;
    if entry.seq != expected {
        return Err(format!(
            "entry recorded for position {} is stored at position {expected} (reordered or inserted)",
            entry.seq
        ));
    }
    if let Some(projection) = &raw.projection
        && !projection.matches(&entry)
    {
        return Err("query columns differ from the hashed entry".into());
    }
    Ok(hash)
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
fn check_heads_at(
    heads: &mut VecDeque<StoredHead>,
    tree: &Recomputer,
    keys: &HashMap<String, VerifyingKey>,
    report: &mut Report,
    last_head_size: &mut u64,
) -> Result<(), Problem> {
    while let Some(head) = heads.pop_front_if(|h| h.tree_size == tree.size()) {
        // A head that disagrees with data that checked out entry by entry: the
        // damage lies after the previous good head.
        check_head(&head, &tree.root(), keys).map_err(|reason| Problem {
            seq: (*last_head_size).min(head.tree_size.saturating_sub(1)),
            reason,
        })?;
        *last_head_size = head.tree_size;
        report.heads += 1;
    }
    Ok(())
}

/// Signed heads read a page at a time, so a long-lived log's millions of heads
/// are never all in memory.
struct Heads {
    buffer: VecDeque<StoredHead>,
    /// Size of the last head read.
    after: Option<u64>,
    exhausted: bool,
}

impl Heads {
    /// Reads until every head of size up to `size` is in the buffer (or none is left).
    async fn fill_to(&mut self, source: &impl LogSource, size: u64) -> anyhow::Result<()> {
        while !self.exhausted && self.buffer.back().is_none_or(|h| h.tree_size <= size) {
            let page = source.heads_page(self.after, HEAD_PAGE).await?;
            // Only an empty page ends it: a server may cap its page size lower.
            self.exhausted = page.is_empty();
            if let Some(last) = page.last() {
                self.after = Some(last.tree_size);
            }
            self.buffer.extend(page);
        }
        Ok(())
    }
}

/// Heads read per page.
const HEAD_PAGE: usize = 1_000;

/// Where verification reads the log from: the database, or a running service.
pub trait LogSource {
    /// Up to `limit` signed heads of size above `after` (all sizes when `None`),
    /// by tree size ascending.
    fn heads_page(
        &self,
        after: Option<u64>,
        limit: usize,
    ) -> impl Future<Output = anyhow::Result<Vec<StoredHead>>>;
    /// Up to `limit` stored rows from sequence `start`, in order.
    fn rows(&self, start: u64, limit: usize)
    -> impl Future<Output = anyhow::Result<Vec<RawEntry>>>;
}

impl LogSource for LogStore {
    async fn heads_page(
        &self,
        after: Option<u64>,
        limit: usize,
    ) -> anyhow::Result<Vec<StoredHead>> {
        LogStore::heads_page(self, 0, after, limit).await
    }
    async fn rows(&self, start: u64, limit: usize) -> anyhow::Result<Vec<RawEntry>> {
        self.raw_entries(start, limit).await
    }
}

/// Verifies the log in `store` against `keys` (key id -> public key).
pub async fn verify(
    store: &impl LogSource,
    keys: &HashMap<String, VerifyingKey>,
) -> anyhow::Result<Report> {
    let mut heads = Heads {
        buffer: VecDeque::new(),
        after: None,
        exhausted: false,
    };
    heads.fill_to(store, 0).await?;
    let mut report = Report {
        entries: 0,
        heads: 0,
        problem: None,
    };
    let mut tree = Recomputer::new();
    let mut last_head_size = 0u64;
    // The empty head (size 0) is checked before any entry.
    if let Err(p) = check_heads_at(
        &mut heads.buffer,
        &tree,
        keys,
        &mut report,
        &mut last_head_size,
    ) {
        report.problem = Some(p);
        return Ok(report);
    }
    let mut next = Box::pin(maybe_done(store.rows(0, CHUNK)));
    loop {
        next.as_mut().await;
        let rows = next
            .as_mut()
            .take_output()
            .expect("a finished read has its rows")?;
        if rows.is_empty() {
            break;
        }
        // Ask for the following chunk before checking this one: the database (or
        // SQLite's worker thread) produces it meanwhile, and the rows are then
        // taken in bulk instead of one wake-up per row.
        let end = tree.size() + rows.len() as u64;
        next = Box::pin(maybe_done(store.rows(end, CHUNK)));
        let _ = futures::poll!(next.as_mut());
        heads.fill_to(store, end).await?;
        for raw in &rows {
            let expected = tree.size();
            match check_row(expected, raw) {
                Ok(hash) => tree.push(hash),
                Err(reason) => {
                    report.problem = Some(Problem {
                        seq: expected,
                        reason,
                    });
                    return Ok(report);
                }
            }
            report.entries += 1;
            if let Err(p) = check_heads_at(
                &mut heads.buffer,
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
    heads.fill_to(store, tree.size()).await?;
    if let Some(head) = heads.buffer.front() {
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

/// Parses `KEY_ID=HEX` trusted keys.
fn parse_keys(public_keys: &[String]) -> anyhow::Result<HashMap<String, VerifyingKey>> {
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
    Ok(keys)
}

/// Verifies a running audit-log at `endpoint`. Trusted keys: `public_keys`, or when
/// none is given the keys the service publishes (weaker: it trusts the service).
pub async fn verify_remote(
    endpoint: &str,
    token: &str,
    public_keys: &[String],
) -> anyhow::Result<Report> {
    let remote = RemoteLog::connect(endpoint, token).await?;
    let mut keys = parse_keys(public_keys)?;
    if keys.is_empty() {
        keys = remote.published_keys().await?;
    }
    verify(&remote, &keys).await
}

/// Verifies the audit-log database of `config`. Trusted keys: each `KEY_ID=HEX` in
/// `public_keys`, or when none is given the key of the configured signer.
pub async fn verify_database(
    config: &custodia_core::Config,
    public_keys: &[String],
) -> anyhow::Result<Report> {
    let mut keys = parse_keys(public_keys)?;
    if keys.is_empty() {
        let signer = crate::keys::head_signer(config)?;
        keys.insert(signer.key_id().to_string(), signer.public_key());
    }
    let service = custodia_core::ServiceName::AuditLog;
    let url = custodia_core::storage::service_url(config, service)?;
    verify_url(&url, service.ident(), &keys).await
}

/// Verifies the log in the database at `url` (its tables in `schema` on
/// PostgreSQL) against `keys`, reading it through a connection of its own.
pub async fn verify_url(
    url: &secrecy::SecretString,
    schema: &str,
    keys: &HashMap<String, VerifyingKey>,
) -> anyhow::Result<Report> {
    let db = custodia_core::storage::connect(url, schema, 1).await?;
    let report = match DirectLog::open(url, schema, LogStore::new(db.clone())).await {
        Ok(direct) => verify(&direct, keys).await,
        Err(e) => Err(e),
    };
    db.close().await;
    report
}

/// The log's database read through a native connection of its own (not the
/// portable pool): no per-value conversion to `sqlx::Any`, and on SQLite a row
/// buffer as large as a chunk, so the driver's worker thread hands rows over in
/// bulk instead of waking the verifier for every row.
struct DirectLog {
    conn: tokio::sync::Mutex<DirectConn>,
    store: LogStore,
}

enum DirectConn {
    Sqlite(sqlx::SqliteConnection),
    Postgres(sqlx::PgConnection),
}

impl DirectLog {
    /// Connects to `url` (the log's tables in `schema` on PostgreSQL).
    async fn open(
        url: &secrecy::SecretString,
        schema: &str,
        store: LogStore,
    ) -> anyhow::Result<Self> {
        use secrecy::ExposeSecret;
        use sqlx::ConnectOptions;
        let raw = url.expose_secret();
        let unreadable = || anyhow::anyhow!("the audit-log database URL could not be parsed");
        let conn = if raw.starts_with("sqlite:") {
            let options = raw
                .parse::<sqlx::sqlite::SqliteConnectOptions>()
                .map_err(|_| unreadable())?;
            DirectConn::Sqlite(
                options
                    .read_only(true)
                    .row_buffer_size(CHUNK)
                    .connect()
                    .await?,
            )
        } else {
            let options = raw
                .parse::<sqlx::postgres::PgConnectOptions>()
                .map_err(|_| unreadable())?;
            DirectConn::Postgres(
                options
                    .options([("search_path", format!("\"{schema}\""))])
                    .connect()
                    .await?,
            )
        };
        Ok(Self {
            conn: tokio::sync::Mutex::new(conn),
            store,
        })
    }
}

impl LogSource for DirectLog {
    async fn heads_page(
        &self,
        after: Option<u64>,
        limit: usize,
    ) -> anyhow::Result<Vec<StoredHead>> {
        self.store.heads_page(0, after, limit).await
    }
    async fn rows(&self, start: u64, limit: usize) -> anyhow::Result<Vec<RawEntry>> {
        let query = sqlx::AssertSqlSafe(RAW_ENTRIES_SQL);
        match &mut *self.conn.lock().await {
            DirectConn::Sqlite(conn) => sqlx::query(query)
                .bind(start as i64)
                .bind(limit as i64)
                .fetch_all(conn)
                .await?
                .iter()
                .map(RawEntry::from_row)
                .collect(),
            DirectConn::Postgres(conn) => sqlx::query(query)
                .bind(start as i64)
                .bind(limit as i64)
                .fetch_all(conn)
                .await?
                .iter()
                .map(RawEntry::from_row)
                .collect(),
        }
    }
}

/// Reads the log from a running audit-log service (`ListLeaves`,
/// `ListSignedTreeHeads`), so a DPO can verify without database access.
#[derive(Debug, Clone)]
pub struct RemoteLog {
    client: custodia_proto::audit::v1::audit_log_service_client::AuditLogServiceClient<
        tonic::transport::Channel,
    >,
    authorization: tonic::metadata::MetadataValue<tonic::metadata::Ascii>,
}

impl RemoteLog {
    /// Connects to `endpoint` with a token holding `audit.read`.
    pub async fn connect(endpoint: &str, token: &str) -> anyhow::Result<Self> {
        // https:// is verified against the system's roots.
        let channel = custodia_core::outbound::Outbound::default()
            .endpoint(endpoint)?
            .connect()
            .await?;
        Ok(Self {
            client:
                custodia_proto::audit::v1::audit_log_service_client::AuditLogServiceClient::new(
                    channel,
                )
                .max_decoding_message_size(64 * 1024 * 1024),
            authorization: format!("Bearer {token}").parse()?,
        })
    }

    fn request<T>(&self, message: T) -> tonic::Request<T> {
        let mut r = tonic::Request::new(message);
        r.metadata_mut()
            .insert("authorization", self.authorization.clone());
        r
    }

    /// The signing keys the service publishes (every page).
    pub async fn published_keys(&self) -> anyhow::Result<HashMap<String, VerifyingKey>> {
        let mut keys = Vec::new();
        let mut page_token = String::new();
        loop {
            let page = self
                .client
                .clone()
                .list_signing_keys(self.request(
                    custodia_proto::audit::v1::ListSigningKeysRequest {
                        page_size: 1000,
                        page_token,
                    },
                ))
                .await?
                .into_inner();
            keys.extend(page.keys);
            if page.next_page_token.is_empty() {
                break;
            }
            page_token = page.next_page_token;
        }
        keys.into_iter()
            .map(|k| {
                let bytes: [u8; 32] = k
                    .public_key
                    .try_into()
                    .map_err(|_| anyhow::anyhow!("published key {} is not 32 bytes", k.key_id))?;
                Ok((k.key_id, VerifyingKey::from_bytes(&bytes)?))
            })
            .collect()
    }
}

impl LogSource for RemoteLog {
    async fn heads_page(
        &self,
        after: Option<u64>,
        limit: usize,
    ) -> anyhow::Result<Vec<StoredHead>> {
        let page = self
            .client
            .clone()
            .list_signed_tree_heads(self.request(
                custodia_proto::audit::v1::ListSignedTreeHeadsRequest {
                    page_size: limit.min(1000) as i32,
                    page_token: String::new(),
                    min_tree_size: after.map_or(0, |a| a as i64 + 1),
                },
            ))
            .await?
            .into_inner();
        page.heads
            .into_iter()
            .map(|h| {
                let root: [u8; 32] = h
                    .root_hash
                    .try_into()
                    .map_err(|_| anyhow::anyhow!("head root is not 32 bytes"))?;
                let ts = h.timestamp.unwrap_or_default();
                Ok(StoredHead {
                    tree_size: h.tree_size as u64,
                    root,
                    timestamp_us: ts.seconds * 1_000_000 + i64::from(ts.nanos / 1000),
                    key_id: h.key_id,
                    signature: h.signature,
                })
            })
            .collect()
    }

    async fn rows(&self, start: u64, limit: usize) -> anyhow::Result<Vec<RawEntry>> {
        let leaves = self
            .client
            .clone()
            .list_leaves(self.request(custodia_proto::audit::v1::ListLeavesRequest {
                start_sequence: start as i64,
                page_size: limit.min(1000) as i32,
                page_token: String::new(),
            }))
            .await?
            .into_inner()
            .leaves;
        Ok(leaves
            .into_iter()
            .map(|l| {
                // The service exposes the hashed bytes only; the query columns are a
                // database detail, checked when verifying the database.
                let projection = None;
                RawEntry {
                    seq: l.sequence as u64,
                    leaf_hash: leaf_hash(&l.leaf_data).to_vec(),
                    entry: l.leaf_data,
                    projection,
                }
            })
            .collect())
    }
}
