//! `custodia.connector.v1.DataSource` over the configured tables: each handler
//! validates the request ([`crate::validate`]) and runs its operation:
//!
//! | RPC | operation |
//! |---|---|
//! | GetCapabilities | [`crate::capabilities`] |
//! | ExportSubject | [`crate::export`] |
//! | EraseSubject | [`crate::erasure`] |
//! | RestrictSubject | [`crate::restriction`] |
//! | RectifySubject | [`crate::rectification`] |
//! | ApplyRetention | [`crate::retention`] |
//!
//! Every mutation runs in one transaction that first claims its `request_id`
//! in `custodia_connector_requests`; a repeat finds the claim and gets the
//! first call's stored response, so nothing is changed or counted twice (see
//! [`crate::idempotency`]). The SQL they run is built in
//! [`crate::statements`]; values are converted in [`crate::values`].

use std::{pin::Pin, sync::Arc};

use custodia_core::{ApiError, legal_time::Clock, subject::SubjectId};
use custodia_proto::connector::v1::{self as pb, data_source_server::DataSource};
use futures::Stream;
use sqlx::AnyConnection;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status};

use crate::{
    Table, capabilities,
    db::{Db, Sql},
    erasure, export,
    idempotency::once_per_request,
    rectification, restriction, retention,
    subject::Subject,
    validate,
};

/// Implementation name reported by GetCapabilities.
pub const VERSION: &str = concat!("custodia-connector-sql/", env!("CARGO_PKG_VERSION"));
/// At most this many records per ExportSubject message.
pub const MAX_BATCH_RECORDS: usize = 1000;
/// At most this many bytes per ExportSubject message (a single larger record
/// is sent alone).
pub const MAX_BATCH_BYTES: usize = 1024 * 1024;

type Reply<T> = Result<Response<T>, Status>;
type ExportStream =
    Pin<Box<dyn Stream<Item = Result<pb::ExportSubjectResponse, Status>> + Send + 'static>>;

/// The gRPC handlers.
#[derive(Debug, Clone)]
pub struct SqlDataSource {
    inner: Arc<Inner>,
}

/// What every operation works with: the database, the configured tables and
/// the clock.
#[derive(Debug)]
pub(crate) struct Inner {
    pub(crate) db: Db,
    pub(crate) display_name: String,
    pub(crate) tables: Vec<Table>,
    pub(crate) clock: Arc<dyn Clock>,
}

impl SqlDataSource {
    pub(crate) fn new(
        db: Db,
        display_name: String,
        tables: Vec<Table>,
        clock: Arc<dyn Clock>,
    ) -> Self {
        Self {
            inner: Arc::new(Inner {
                db,
                display_name,
                tables,
                clock,
            }),
        }
    }
}

impl Inner {
    /// A new statement for this database.
    pub(crate) fn sql(&self) -> Sql {
        Sql::new(self.db.backend)
    }

    /// The subject of `ids`, widened to the identifiers its rows hold.
    pub(crate) async fn subject(
        &self,
        conn: &mut AnyConnection,
        ids: Vec<SubjectId>,
    ) -> Result<Subject, ApiError> {
        let mut subject = Subject::new(ids);
        subject
            .widen(conn, &self.tables, self.db.backend)
            .await
            .map_err(ApiError::internal)?;
        Ok(subject)
    }
}

#[tonic::async_trait]
impl DataSource for SqlDataSource {
    type ExportSubjectStream = ExportStream;

    async fn get_capabilities(
        &self,
        _request: Request<pb::GetCapabilitiesRequest>,
    ) -> Reply<pb::GetCapabilitiesResponse> {
        Ok(Response::new(capabilities::capabilities(&self.inner)))
    }

    async fn export_subject(
        &self,
        request: Request<pb::ExportSubjectRequest>,
    ) -> Reply<ExportStream> {
        let req = request.into_inner();
        let (ids, tables) = validate::export(&req, &self.inner.tables)?;
        let (tx, rx) = mpsc::channel(2);
        let inner = self.inner.clone();
        tokio::spawn(async move {
            if let Err(e) = export::export(&inner, ids, tables, &tx).await {
                let _ = tx.send(Err(e.into())).await;
            }
        });
        Ok(Response::new(Box::pin(ReceiverStream::new(rx))))
    }

    async fn erase_subject(
        &self,
        request: Request<pb::EraseSubjectRequest>,
    ) -> Reply<pb::EraseSubjectResponse> {
        let req = request.into_inner();
        let inner = &self.inner;
        let (ids, tables) = validate::erase(&req, &inner.tables)?;
        let now = inner.clock.now();
        let response: pb::EraseSubjectResponse =
            once_per_request!(self, "EraseSubject", req, req.request_id, |conn| {
                erasure::erase(inner, conn, ids, &tables, now).await
            });
        Ok(Response::new(response))
    }

    async fn restrict_subject(
        &self,
        request: Request<pb::RestrictSubjectRequest>,
    ) -> Reply<pb::RestrictSubjectResponse> {
        let req = request.into_inner();
        let inner = &self.inner;
        let (ids, restrict, tables) = validate::restrict(&req, &inner.tables)?;
        let now = inner.clock.now();
        let response: pb::RestrictSubjectResponse =
            once_per_request!(self, "RestrictSubject", req, req.request_id, |conn| {
                restriction::restrict(inner, conn, ids, &tables, restrict, &req.reason, now).await
            });
        Ok(Response::new(response))
    }

    async fn rectify_subject(
        &self,
        request: Request<pb::RectifySubjectRequest>,
    ) -> Reply<pb::RectifySubjectResponse> {
        let req = request.into_inner();
        let inner = &self.inner;
        let ids = validate::rectify(&req)?;
        let response: pb::RectifySubjectResponse =
            once_per_request!(self, "RectifySubject", req, req.request_id, |conn| {
                rectification::rectify(inner, conn, ids, &req.corrections).await
            });
        Ok(Response::new(response))
    }

    async fn apply_retention(
        &self,
        request: Request<pb::ApplyRetentionRequest>,
    ) -> Reply<pb::ApplyRetentionResponse> {
        let req = request.into_inner();
        let inner = &self.inner;
        let rule = validate::retention(&req, &inner.tables)?;
        let now = inner.clock.now();
        let response: pb::ApplyRetentionResponse =
            once_per_request!(self, "ApplyRetention", req, req.request_id, |conn| {
                retention::apply(inner, conn, &rule, req.dry_run, now).await
            });
        Ok(Response::new(response))
    }
}
