//! Typed clients of a [`TestApp`] that call as the admin principal, so a
//! scenario says what it asks, not how it authenticates:
//! `app.consent().await.check_consent(request)`.

use custodia_proto::{
    audit::v1::audit_log_service_client::AuditLogServiceClient,
    breach::v1::breach_service_client::BreachServiceClient,
    consent::v1::consent_service_client::ConsentServiceClient,
    dsar::v1::dsar_service_client::DsarServiceClient,
};
use tonic::{
    Request, Status,
    metadata::MetadataValue,
    service::{Interceptor, interceptor::InterceptedService},
    transport::Channel,
};

use crate::{ADMIN_TOKEN, TestApp};

/// Sends `Bearer <token>` with every call that carries no `authorization` of
/// its own: a call wrapped in [`crate::authed`] with another principal's token
/// keeps it.
#[derive(Debug, Clone, Copy)]
pub struct Bearer(pub &'static str);

impl Interceptor for Bearer {
    fn call(&mut self, mut request: Request<()>) -> Result<Request<()>, Status> {
        if !request.metadata().contains_key("authorization") {
            let value: MetadataValue<_> =
                format!("Bearer {}", self.0).parse().expect("ascii token");
            request.metadata_mut().insert("authorization", value);
        }
        Ok(request)
    }
}

/// A channel whose calls carry a [`Bearer`] token: the transport of every typed
/// client here (`ConsentServiceClient<Authed>`, a connector's `DataSourceClient<Authed>`).
pub type Authed = InterceptedService<Channel, Bearer>;

/// The [`Bearer`] of the admin principal of test servers.
pub const ADMIN: Bearer = Bearer(ADMIN_TOKEN);

/// ConsentService, as the admin.
pub type ConsentClient = ConsentServiceClient<Authed>;
/// DsarService, as the admin.
pub type DsarClient = DsarServiceClient<Authed>;
/// BreachService, as the admin.
pub type BreachClient = BreachServiceClient<Authed>;
/// AuditLogService, as the admin.
pub type AuditClient = AuditLogServiceClient<Authed>;

impl TestApp {
    /// A ConsentService client calling as the admin.
    pub async fn consent(&self) -> ConsentClient {
        ConsentServiceClient::with_interceptor(self.channel().await, ADMIN)
    }

    /// A DsarService client calling as the admin.
    pub async fn dsar(&self) -> DsarClient {
        DsarServiceClient::with_interceptor(self.channel().await, ADMIN)
    }

    /// A BreachService client calling as the admin.
    pub async fn breach(&self) -> BreachClient {
        BreachServiceClient::with_interceptor(self.channel().await, ADMIN)
    }

    /// An AuditLogService client calling as the admin.
    pub async fn audit(&self) -> AuditClient {
        AuditLogServiceClient::with_interceptor(self.channel().await, ADMIN)
    }

    /// Calls the unary RPC at `path` (`/package.Service/Method`) as the admin,
    /// sending `message` as it encodes: a message declared by hand can carry bytes
    /// the generated types would refuse to build (invalid UTF-8, say).
    pub async fn call_raw<M, R>(&self, path: &'static str, message: M) -> Result<R, Status>
    where
        M: prost::Message + Send + Sync + 'static,
        R: prost::Message + Default + Send + Sync + 'static,
    {
        let mut grpc = tonic::client::Grpc::new(self.channel().await);
        grpc.ready().await.expect("channel ready");
        grpc.unary(
            crate::authed(message, ADMIN_TOKEN),
            path.parse().expect("method path"),
            tonic_prost::ProstCodec::default(),
        )
        .await
        .map(tonic::Response::into_inner)
    }
}
