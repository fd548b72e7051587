//! Requests, source tasks, exports, data sources and retention runs on SQLite
//! or PostgreSQL (portable SQL over `sqlx::Any`: no statement differs by
//! backend, so there is no per-backend module).
//!
//! A request is one `dsar_requests` row (the protobuf record and the columns
//! listings filter on) plus its append-only action record, its recipient
//! notifications, one task row per data source and at most one export row.
//! Every change runs in one [`RecordedWrite`]: it first claims the
//! idempotency key, then locks the request row, lets the caller decide on the
//! current state, writes the result and enqueues the access events, so a
//! refused or failed change leaves nothing behind. Every method answers
//! [`ApiError`]; a database failure is INTERNAL.
//!
//! Requests and their parts are in `requests`, data sources in `sources`,
//! retention runs in `runs`.

mod requests;
mod runs;
mod sources;

use custodia_core::{
    ApiError,
    idempotency::RequestKey,
    outbox::{AccessEvent, SqlOutbox},
    recorded_write::RecordedWrite,
    storage::Db,
};
use custodia_proto::dsar::v1::{
    self as pb, ActionEntry, ExportPackage, RecipientNotification, RequestState, SourceTask,
};
use prost::Message;

use crate::model;

/// A request as stored, with everything kept about it.
#[derive(Debug, Clone, Default)]
pub struct Loaded {
    /// The id in `requests/{id}`.
    pub id: String,
    /// The record (without actions, tasks, notifications and export).
    pub record: pb::Request,
    /// The action record, oldest first.
    pub actions: Vec<ActionEntry>,
    /// Source tasks, by source id.
    pub tasks: Vec<SourceTask>,
    /// Recipient notifications, oldest first.
    pub notifications: Vec<RecipientNotification>,
    /// The export package, once building started.
    pub export: Option<ExportRow>,
    /// Version for concurrency checks.
    pub version: i64,
}

impl Loaded {
    /// The current state.
    pub fn state(&self) -> RequestState {
        self.record.state()
    }

    /// The task of source `id`, if any.
    pub fn task(&self, source_id: &str) -> Option<&SourceTask> {
        let name = model::source_name(source_id);
        self.tasks.iter().find(|t| t.data_source == name)
    }
}

/// An export package and where its file is.
#[derive(Debug, Clone, Default)]
pub struct ExportRow {
    /// The package description.
    pub package: ExportPackage,
    /// Path of the zip (empty until built).
    pub path: String,
}

/// The writes a change asks for, applied in one transaction.
#[derive(Debug, Default)]
pub struct Changes {
    /// Action entries to append.
    pub actions: Vec<ActionEntry>,
    /// Tasks to insert or replace (by source).
    pub tasks: Vec<SourceTask>,
    /// Recipient notifications to append.
    pub notifications: Vec<RecipientNotification>,
    /// The export to insert or replace.
    pub export: Option<ExportRow>,
    /// Access events to enqueue beside the caller's.
    pub events: Vec<AccessEvent>,
}

/// What a change did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Done {
    /// Applied.
    Applied,
    /// A retry of an earlier call with the same request_id: that call's resource.
    Replayed(String),
}

/// A task due for an attempt.
#[derive(Debug, Clone)]
pub struct DueTask {
    /// The request id.
    pub request_id: String,
    /// The source id.
    pub source_id: String,
}

/// Filters of `ListRequests`; all set filters must match.
#[derive(Debug, Clone, Default)]
pub struct RequestFilter {
    /// Only these states (any).
    pub states: Vec<RequestState>,
    /// Only this type.
    pub kind: Option<i32>,
    /// Only requests overdue at this time (µs).
    pub overdue_at_us: Option<i64>,
    /// Only due strictly before this (µs).
    pub due_before_us: Option<i64>,
    /// Only requests naming a subject with this hash.
    pub subject_hash: Option<String>,
    /// Only received at or after (µs).
    pub received_from_us: Option<i64>,
    /// Only received before (µs).
    pub received_before_us: Option<i64>,
}

/// The dsar database.
#[derive(Debug, Clone)]
pub struct DsarStore {
    db: Db,
    outbox: SqlOutbox,
}

/// Stored form of a request state.
pub fn state_str(s: RequestState) -> &'static str {
    match s {
        RequestState::Unspecified => "UNSPECIFIED",
        RequestState::Received => "RECEIVED",
        RequestState::IdentityVerification => "IDENTITY_VERIFICATION",
        RequestState::InProgress => "IN_PROGRESS",
        RequestState::Completed => "COMPLETED",
        RequestState::Rejected => "REJECTED",
        RequestState::Cancelled => "CANCELLED",
    }
}

/// Stored form of a task state.
pub fn task_state_str(s: pb::SourceTaskState) -> &'static str {
    match s {
        pb::SourceTaskState::Unspecified => "UNSPECIFIED",
        pb::SourceTaskState::Pending => "PENDING",
        pb::SourceTaskState::Running => "RUNNING",
        pb::SourceTaskState::Succeeded => "SUCCEEDED",
        pb::SourceTaskState::Failed => "FAILED",
        pb::SourceTaskState::Unsupported => "UNSUPPORTED",
        pb::SourceTaskState::HandledManually => "HANDLED_MANUALLY",
    }
}

fn export_state_str(s: pb::ExportState) -> &'static str {
    match s {
        pb::ExportState::Unspecified => "UNSPECIFIED",
        pb::ExportState::Building => "BUILDING",
        pb::ExportState::Ready => "READY",
        pb::ExportState::Failed => "FAILED",
        pb::ExportState::Expired => "EXPIRED",
    }
}

/// A stored protobuf message; one that does not decode is INTERNAL.
fn decode<M: Message + Default>(bytes: &[u8]) -> Result<M, ApiError> {
    M::decode(bytes).map_err(ApiError::internal)
}

impl DsarStore {
    /// The store in `db` (migrated), enqueuing access events in `outbox`.
    pub fn new(db: Db, outbox: SqlOutbox) -> Self {
        Self { db, outbox }
    }

    /// The write of a change of `resource` keyed by `key`, or, for a retry of
    /// an earlier call, that call's resource (the replay recorded with `event`).
    async fn begin(
        &self,
        key: Option<&RequestKey>,
        resource: &str,
        event: Option<&AccessEvent>,
        now_us: i64,
    ) -> Result<Result<RecordedWrite<'_>, Done>, ApiError> {
        let claimed = RecordedWrite::claim(&self.db, &self.outbox, key, resource, now_us).await?;
        Ok(claimed
            .write_or_replay(event, str::to_string)
            .await?
            .map_err(Done::Replayed))
    }
}
