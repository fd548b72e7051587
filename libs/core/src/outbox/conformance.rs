//! Behaviour every [`OutboxStore`] backend must have. Run by the SQLite and the
//! Postgres tests alike; a backend that fails it is not a backend.

use chrono::{TimeZone, Utc};

use super::{AccessEvent, OutboxStore, Outcome};

fn event(n: u32) -> AccessEvent {
    let mut e = AccessEvent::new(
        Utc.with_ymd_and_hms(2026, 1, 1, 0, 0, n).unwrap(),
        "crm",
        "consent",
        "CheckConsent",
        Outcome::Ok,
    );
    e.subject_type = Some("email".into());
    e.subject_hash = Some(format!("{n:064x}"));
    e.resource = format!("purposes/p{n}");
    e.purpose = Some("newsletter".into());
    e.trace_id = format!("{n:032x}");
    e
}

/// Runs every check against an empty outbox.
pub async fn run<S: OutboxStore>(store: &S) {
    assert_eq!(store.pending().await.unwrap(), 0, "starts empty");
    assert!(store.peek(10).await.unwrap().is_empty());

    // FIFO, full round trip of every field.
    let events: Vec<_> = (0..5).map(event).collect();
    for e in &events {
        store.enqueue(e).await.unwrap();
    }
    let peeked = store.peek(3).await.unwrap();
    assert_eq!(
        peeked.iter().map(|(_, e)| e.clone()).collect::<Vec<_>>(),
        events[..3].to_vec(),
        "oldest first, every field kept"
    );

    // Enqueueing the same event id again is a no-op.
    store.enqueue(&events[0]).await.unwrap();
    assert_eq!(store.pending().await.unwrap(), 5);

    // A failed attempt keeps the events; an ack removes exactly the acked ones.
    let ids: Vec<i64> = peeked.iter().map(|(id, _)| *id).collect();
    store.record_attempt(&ids).await.unwrap();
    assert_eq!(store.pending().await.unwrap(), 5);
    store.ack(&ids[..2]).await.unwrap();
    let rest = store.peek(10).await.unwrap();
    assert_eq!(
        rest.iter().map(|(_, e)| e.event_id).collect::<Vec<_>>(),
        events[2..].iter().map(|e| e.event_id).collect::<Vec<_>>()
    );
    let all: Vec<i64> = rest.iter().map(|(id, _)| *id).collect();
    store.ack(&all).await.unwrap();
    assert_eq!(store.pending().await.unwrap(), 0);
    // Acking unknown ids is harmless (a retry after a crash).
    store.ack(&all).await.unwrap();
}
