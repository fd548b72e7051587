//! Behaviour every [`OutboxStore`] backend must have. Run by the SQLite and the
//! Postgres tests alike; a backend that fails it is not a backend.

use chrono::{TimeZone, Utc};

use super::{AccessEvent, EventBatch, OutboxStore, Outcome};

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

    // FIFO, full round trip of every field. A row is never split, so `peek` may
    // return more than asked when events share a row (a read-event journal's rows
    // are merged when moved into the table), never fewer while any wait.
    let events: Vec<_> = (0..5).map(event).collect();
    for e in &events {
        store.enqueue(e).await.unwrap();
    }
    let peeked = store.peek(3).await.unwrap();
    assert!(peeked.len() >= 3, "{} events peeked", peeked.len());
    assert_eq!(
        peeked.iter().map(|(_, e)| e.clone()).collect::<Vec<_>>(),
        events[..peeked.len()].to_vec(),
        "oldest first, every field kept"
    );

    // Enqueueing the same event id again is a no-op.
    store.enqueue(&events[0]).await.unwrap();
    assert_eq!(store.pending().await.unwrap(), 5);

    // A failed attempt keeps the events; an ack removes exactly the acked rows.
    let ids: Vec<i64> = peeked.iter().map(|(id, _)| *id).collect();
    store.record_attempt(&ids).await.unwrap();
    assert_eq!(store.pending().await.unwrap(), 5);
    let first_row = ids.iter().take_while(|id| **id == ids[0]).count();
    store.ack(&ids[..1]).await.unwrap();
    let rest = store.peek(10).await.unwrap();
    assert_eq!(
        rest.iter().map(|(_, e)| e.event_id).collect::<Vec<_>>(),
        events[first_row..]
            .iter()
            .map(|e| e.event_id)
            .collect::<Vec<_>>()
    );
    let all: Vec<i64> = rest.iter().map(|(id, _)| *id).collect();
    store.ack(&all).await.unwrap();
    assert_eq!(store.pending().await.unwrap(), 0);
    // Acking unknown ids is harmless (a retry after a crash).
    store.ack(&all).await.unwrap();

    bundles(store).await;
}

/// Events of one call that differ only in id and subject (a batch check) are
/// stored together and come back as the same events, in order.
async fn bundles<S: OutboxStore>(store: &S) {
    let lone = event(7);
    let mut batch = EventBatch::new(event(42));
    for n in 0..2_500u32 {
        batch.push("email", &format!("{n:064x}"));
    }
    let many = batch.clone().into_events();
    store.enqueue(&lone).await.unwrap();
    store.enqueue_batch(batch.clone()).await.unwrap();
    assert_eq!(
        store.pending().await.unwrap(),
        2_501,
        "pending counts events"
    );
    store.enqueue_batch(batch).await.unwrap();
    assert_eq!(
        store.pending().await.unwrap(),
        2_501,
        "enqueueing again is a no-op"
    );

    // A row that would overflow the limit waits for the next peek...
    let first = store.peek(10).await.unwrap();
    assert_eq!(first.len(), 1);
    assert_eq!(first[0].1, lone);
    store.ack(&[first[0].0]).await.unwrap();
    // ...unless it is the oldest: then it comes whole.
    let second = store.peek(10).await.unwrap();
    let ids: std::collections::BTreeSet<i64> = second.iter().map(|(id, _)| *id).collect();
    assert_eq!(ids.len(), 1, "a stored bundle shares one position");
    let rest = store.peek(100_000).await.unwrap();
    let got: Vec<AccessEvent> = rest.iter().map(|(_, e)| e.clone()).collect();
    assert_eq!(got, many, "every field of every event kept, in order");
    assert_eq!(
        &got[..second.len()],
        &second.iter().map(|(_, e)| e.clone()).collect::<Vec<_>>()[..]
    );
    let positions: Vec<i64> = rest.iter().map(|(id, _)| *id).collect();
    store.ack(&positions).await.unwrap();
    assert_eq!(store.pending().await.unwrap(), 0);
}
