//! Waiting for background work: access-event delivery, head integration, a
//! replica's cache following another's writes.

use std::time::Duration;

use custodia_proto::audit::v1::{
    AccessEvent, ListEventsRequest, audit_log_service_client::AuditLogServiceClient,
};
use tonic::transport::Channel;

use crate::{ADMIN_TOKEN, authed};

/// Retries `check` until it returns `Some`: background work (access-event
/// delivery, head integration) is asynchronous. Gives up after 15 s so a broken
/// pipeline fails instead of hanging; this waits for work, it never makes time pass
/// (tests advance the injected clock for that).
pub async fn eventually<T, F, Fut>(mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    let deadline = tokio::time::Instant::now() + Duration::from_secs(15);
    loop {
        if let Some(v) = check().await {
            return v;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "condition not reached in 15 s"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Waits until the first page (1,000 events) ListEvents returns for `filter`
/// satisfies `done` (access events reach audit-log through the outbox, later than
/// the call they describe), and returns that page.
pub async fn audit_events_until(
    channel: Channel,
    filter: ListEventsRequest,
    done: impl Fn(&[AccessEvent]) -> bool,
) -> Vec<AccessEvent> {
    let client = AuditLogServiceClient::new(channel);
    let request = ListEventsRequest {
        page_size: 1000,
        ..filter
    };
    let done = &done;
    eventually(|| {
        let mut client = client.clone();
        let request = request.clone();
        async move {
            let events = client
                .list_events(authed(request, ADMIN_TOKEN))
                .await
                .ok()?
                .into_inner()
                .events;
            done(&events).then_some(events)
        }
    })
    .await
}
