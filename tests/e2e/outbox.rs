//! The forwarder: events leave the outbox only once the sink has them, in order,
//! each exactly once, however often the sink fails first.

use std::sync::{Arc, Mutex};

use crate::storage::sqlite_db;
use custodia_core::{
    config::ReadEventSync,
    outbox::{
        AccessEvent, EventBatch, OutboxStore, Outcome, SqlOutbox,
        forwarder::{EventSink, Forwarder},
    },
};

/// A sink standing in for audit-log that refuses its first `failures` calls.
#[derive(Clone, Default)]
struct FlakySink {
    failures: Arc<Mutex<usize>>,
    received: Arc<Mutex<Vec<AccessEvent>>>,
}

impl EventSink for FlakySink {
    async fn append(&self, events: Vec<AccessEvent>) -> anyhow::Result<()> {
        let mut failures = self.failures.lock().unwrap();
        if *failures > 0 {
            *failures -= 1;
            anyhow::bail!("audit-log unavailable");
        }
        self.received.lock().unwrap().extend(events);
        Ok(())
    }
}

#[tokio::test]
async fn delivers_each_event_once_in_order_after_failures() {
    let dir = tempfile::tempdir().unwrap();
    let db = sqlite_db(&dir, "breach").await;
    db.migrate(&custodia_breach::MIGRATIONS).await.unwrap();
    let outbox = SqlOutbox::new(db);
    let events: Vec<_> = (0..7)
        .map(|i| {
            AccessEvent::new(
                chrono::Utc::now(),
                "dpo",
                "breach",
                format!("Action{i}"),
                Outcome::Ok,
            )
        })
        .collect();
    for e in &events {
        outbox.enqueue(e).await.unwrap();
    }
    let sink = FlakySink::default();
    *sink.failures.lock().unwrap() = 2;
    let forwarder = Forwarder::new(outbox.clone(), sink.clone(), 3);

    // Down: nothing is lost, nothing is delivered.
    assert!(forwarder.drain().await.is_err());
    assert!(forwarder.drain().await.is_err());
    assert_eq!(outbox.pending().await.unwrap(), 7);
    assert!(sink.received.lock().unwrap().is_empty());

    // Back: everything arrives, once, in order.
    assert_eq!(forwarder.drain().await.unwrap(), 7);
    assert_eq!(outbox.pending().await.unwrap(), 0);
    assert_eq!(*sink.received.lock().unwrap(), events);
    assert_eq!(forwarder.drain().await.unwrap(), 0);
}

#[tokio::test]
async fn a_batch_of_events_stored_together_is_delivered_together() {
    let dir = tempfile::tempdir().unwrap();
    let db = sqlite_db(&dir, "consent").await;
    db.migrate(&custodia_consent::MIGRATIONS).await.unwrap();
    let outbox = SqlOutbox::new(db);
    let mut batch = EventBatch::new(AccessEvent::new(
        chrono::Utc::now(),
        "newsletter",
        "consent",
        "BatchCheckConsent",
        Outcome::Ok,
    ));
    for i in 0..12_345 {
        batch.push("email", &format!("{i:064x}"));
    }
    let events = batch.clone().into_events();
    outbox.enqueue_batch(batch).await.unwrap();
    assert_eq!(outbox.pending().await.unwrap(), 12_345);

    #[derive(Clone, Default)]
    struct Calls(Arc<Mutex<Vec<usize>>>, FlakySink);
    impl EventSink for Calls {
        async fn append(&self, events: Vec<AccessEvent>) -> anyhow::Result<()> {
            self.0.lock().unwrap().push(events.len());
            self.1.append(events).await
        }
    }
    let sink = Calls::default();
    *sink.1.failures.lock().unwrap() = 1;
    let forwarder = Forwarder::new(outbox.clone(), sink.clone(), 300);
    assert!(forwarder.drain().await.is_err());
    assert_eq!(
        outbox.pending().await.unwrap(),
        12_345,
        "nothing lost while down"
    );

    assert_eq!(forwarder.drain().await.unwrap(), 12_345);
    assert_eq!(outbox.pending().await.unwrap(), 0);
    assert_eq!(
        *sink.1.received.lock().unwrap(),
        events,
        "each once, in order"
    );
    // The outbox keeps the batch as rows of 1,000 events; each row goes out whole
    // (so the log stores it as one compact entry) although the batch size is 300,
    // which bounds calls of several rows only. The first call failed and was
    // repeated.
    let calls = sink.0.lock().unwrap().clone();
    let mut expected = vec![1_000; 13];
    expected.push(345);
    assert_eq!(calls, expected);
}

#[tokio::test]
async fn reads_refused_by_a_full_journal_go_to_the_table_and_nothing_is_lost() {
    let dir = tempfile::tempdir().unwrap();
    let db = sqlite_db(&dir, "consent").await;
    db.migrate(&custodia_consent::MIGRATIONS).await.unwrap();
    // No backlog allowed: the journal refuses every read, which goes to the table.
    let outbox = SqlOutbox::with_read_sync(db, ReadEventSync::Relaxed).with_journal_backlog(0);
    let events: Vec<AccessEvent> = (0..3)
        .map(|_| {
            AccessEvent::new(
                chrono::Utc::now(),
                "newsletter",
                "consent",
                "CheckConsent",
                Outcome::Ok,
            )
        })
        .collect();
    for event in &events {
        outbox.enqueue(event).await.unwrap();
    }
    assert_eq!(
        dir.path()
            .join("consent.db-read-events")
            .metadata()
            .unwrap()
            .len(),
        0,
        "nothing written to the journal"
    );
    assert_eq!(outbox.pending().await.unwrap(), 3, "all in the table");

    let sink = FlakySink::default();
    let forwarder = Forwarder::new(outbox.clone(), sink.clone(), 100);
    assert_eq!(forwarder.drain().await.unwrap(), 3);
    let mut ids: Vec<_> = sink
        .received
        .lock()
        .unwrap()
        .iter()
        .map(|e| e.event_id)
        .collect();
    let mut sent: Vec<_> = events.iter().map(|e| e.event_id).collect();
    ids.sort();
    sent.sort();
    assert_eq!(ids, sent, "each event once");
}

#[tokio::test]
async fn table_rows_are_delivered_while_the_journal_cannot_be_moved() {
    let dir = tempfile::tempdir().unwrap();
    let db = sqlite_db(&dir, "consent").await;
    db.migrate(&custodia_consent::MIGRATIONS).await.unwrap();
    let outbox = SqlOutbox::with_read_sync(db, ReadEventSync::Relaxed);
    // A directory where the journal's first sealed segment goes: a move, which
    // seals the journal by renaming it there, fails until the directory is gone
    // (as with a full or failing disk).
    let blocker = dir.path().join("consent.db-read-events.0");
    std::fs::create_dir(&blocker).unwrap();
    std::fs::write(blocker.join("x"), b"x").unwrap();
    let event = |method: &str| {
        AccessEvent::new(
            chrono::Utc::now(),
            "newsletter",
            "consent",
            method,
            Outcome::Ok,
        )
    };
    let read = event("CheckConsent");
    outbox.enqueue(&read).await.unwrap();
    let write = event("RecordConsent");
    outbox.enqueue_durable(&write).await.unwrap();

    let sink = FlakySink::default();
    let forwarder = Forwarder::new(outbox.clone(), sink.clone(), 100);
    assert_eq!(
        forwarder.drain().await.unwrap(),
        1,
        "the table's event, not held up by the journal"
    );
    let received = || {
        sink.received
            .lock()
            .unwrap()
            .iter()
            .map(|e| e.event_id)
            .collect::<Vec<_>>()
    };
    assert_eq!(received(), [write.event_id]);

    std::fs::remove_dir_all(&blocker).unwrap();
    assert_eq!(
        forwarder.drain().await.unwrap(),
        1,
        "the journal's, once it moves"
    );
    assert_eq!(received(), [write.event_id, read.event_id]);
}
