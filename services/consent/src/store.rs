//! Storage of the consent service on SQLite or PostgreSQL.
//!
//! [`ConsentStore`] is the one interface the service uses. Its methods are
//! written once in portable SQL (`sqlx::Any`), one module per kind of data;
//! where the backends differ, the method picks the backend's module:
//!
//! - `purposes`, `notices`, `receipts`, `erasure`: the register, notices,
//!   receipts and the erasure of a subject (with the suppressions it keeps);
//! - `changes`: the change log (change streams, trails, cache followers);
//! - `states`: subjects' current states (checks, the state index);
//! - `group_commit`: consent writes committed in groups, and state reads of
//!   concurrent checks shared;
//! - `postgres`: PostgreSQL's native paths (one statement binding arrays);
//! - `sqlite`: SQLite's own paths (rows aggregated as JSON);
//! - `script`: the portable write path (SQLite's only one, PostgreSQL's
//!   second attempt of a group).

mod changes;
mod erasure;
mod group_commit;
mod notices;
mod postgres;
mod purposes;
mod receipts;
mod script;
mod sqlite;
mod states;

use std::sync::Arc;

use custodia_core::{
    ApiError,
    storage::{Db, Params},
};
use custodia_proto::consent::v1::Purpose;
use prost::Message;
use sqlx::{AssertSqlSafe, ColumnIndex, Row, any::AnyRow};

pub use erasure::{Erasure, Purged, Suppression, ground_of, minimised};
pub use group_commit::{NewRecord, Receipt, StateReads, WriteJob, WriteResult, Writes};
pub use states::{StateRowOf, States};

/// The protobuf body in column `i` of `row`, decoded; one that does not decode
/// is an internal error like any other failure of the database.
fn body<M: Message + Default>(row: &AnyRow, i: impl ColumnIndex<AnyRow>) -> Result<M, ApiError> {
    let bytes: Vec<u8> = row.try_get(i)?;
    M::decode(bytes.as_slice()).map_err(ApiError::internal)
}

/// `WHERE` and the `clauses` joined by `AND`; nothing when there are none.
fn where_clause(clauses: &[String]) -> String {
    if clauses.is_empty() {
        String::new()
    } else {
        format!("WHERE {}", clauses.join(" AND "))
    }
}

/// Pseudo purpose id under which a blanket objection to direct marketing is kept.
pub const DIRECT_MARKETING: &str = "@direct-marketing";

/// A purpose as stored, with its bookkeeping.
#[derive(Debug, Clone, PartialEq)]
pub struct StoredPurpose {
    /// The id (`newsletter`).
    pub id: String,
    /// The purpose without output-only fields.
    pub purpose: Purpose,
    /// Creation time (µs).
    pub create_us: i64,
    /// Last change (µs).
    pub update_us: i64,
    /// Version tag, new on every change.
    pub etag: String,
}

/// Filters of `ListPurposes`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PurposeFilter {
    /// Only purposes whose next review is before this time (µs).
    pub review_due_before_us: Option<i64>,
    /// Only this lawful basis (enum value).
    pub lawful_basis: Option<i32>,
    /// Only this category (enum value).
    pub category: Option<i32>,
    /// Include retired purposes.
    pub include_retired: bool,
}

/// What a create or update found.
#[derive(Debug, Clone, PartialEq)]
pub enum Written {
    /// Written now.
    Done(Box<StoredPurpose>),
    /// A retry of an earlier call with the same request id: its resource id.
    Replayed(String),
}

/// The consent service's store.
#[derive(Debug, Clone)]
pub struct ConsentStore {
    db: Db,
    /// Consent writes of concurrent calls, committed together (see [`WriteJob`]).
    writes: Arc<Writes>,
    /// Reads of subjects' states by concurrent checks, one query per group (see
    /// [`StateReads`]).
    reads: Arc<StateReads>,
}

impl ConsentStore {
    /// The store in `db` (migrated).
    pub fn new(db: Db) -> Self {
        let writes = Arc::new(group_commit::writes(db.clone()));
        let reads = Arc::new(group_commit::state_reads(db.clone()));
        Self { db, writes, reads }
    }

    /// The group-commit queue of consent writes.
    pub(crate) fn writes(&self) -> &Writes {
        &self.writes
    }

    /// The queue of state reads.
    pub(crate) fn reads(&self) -> &StateReads {
        &self.reads
    }

    /// The database.
    pub fn db(&self) -> &Db {
        &self.db
    }

    /// The rows of `sql`, whose parameters `p` holds, read from the pool.
    async fn rows(&self, p: Params, sql: String) -> Result<Vec<AnyRow>, ApiError> {
        Ok(p.bind(sqlx::query(AssertSqlSafe(sql)))
            .fetch_all(self.db.pool())
            .await?)
    }
}
