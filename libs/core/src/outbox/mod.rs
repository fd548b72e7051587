//! Access events and the transactional outbox that carries them to audit-log.
//!
//! A service writes each access event into the `access_event_outbox` table of its
//! own database, in the same transaction as the data change (for reads: before the
//! response is sent; on SQLite with relaxed read sync, into the read-event journal
//! beside the database, which is moved into the table in the background: see
//! `journal.rs`). The [`forwarder::Forwarder`] ships batches to audit-log's
//! `AppendEvents`, which is idempotent by event id; audit-log being down only
//! delays delivery and never fails the caller.

mod event;
pub mod forwarder;
mod journal;
mod store;

#[cfg(any(test, feature = "conformance"))]
pub mod conformance;

pub mod grpc_sink;

pub use event::{AccessEvent, EventBatch, Outcome, action_of};
pub use store::{
    OutboxStore, SqlOutbox, enqueue_all_in, enqueue_all_script, enqueue_in, outbox_rows,
};
