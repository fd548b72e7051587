//! A dsar process dies in the middle of a fan-out (its worker is torn down
//! with a call in flight, as kill -9 would leave the database): the next
//! process resumes the request, asks the interrupted source again with the
//! same idempotency key, and no erasure is counted twice or skipped.

use custodia_proto::dsar::v1::{ActionResult, RequestType, SourceTaskState};
use custodia_tests::Backend;

use super::{
    connector::{FakeSource, Mode},
    fanout::{register, task, wait_for},
    *,
};

custodia_tests::both_backends!(restart_resumes_fan_out);

async fn restart_resumes_fan_out(backend: Backend) {
    let first = TestApp::spawn_with(backend, SERVICES, |config| {
        config.dsar.poll_interval_ms = 50;
        config.server.shutdown_grace_secs = 1;
    })
    .await;
    let crm = FakeSource::start("ada@example.edu", &[("contacts", 2)], vec![]).await;
    crm.set(Mode::EraseThenHang);

    let mut c = first.dsar().await;
    register(&mut c, "crm", &crm.endpoint, Some(120_000)).await;
    let r = started(&mut c, RequestType::Erasure, "ada@example.edu").await;
    // The CRM erased, but the answer never came back before the process died.
    wait_for(&c, &r.name, |r| {
        task(r, "crm").state() == SourceTaskState::Running
            && r.source_tasks
                .iter()
                .filter(|t| !t.data_source.ends_with("/crm"))
                .all(|t| t.state() == SourceTaskState::Succeeded)
    })
    .await;
    custodia_tests::eventually(|| async { (crm.calls("EraseSubject").len() == 1).then_some(()) })
        .await;
    drop(c);

    // The next process picks the request up where it stopped.
    crm.set(Mode::Normal);
    let second = first.restart(SERVICES).await;
    let c = second.dsar().await;
    let done = wait_for(&c, &r.name, |r| {
        task(r, "crm").state() == SourceTaskState::Succeeded
    })
    .await;
    let calls = crm.calls("EraseSubject");
    assert_eq!(calls.len(), 2, "asked again after the restart: {calls:?}");
    assert_eq!(calls[0], calls[1], "with the same idempotency key");
    assert_eq!(crm.state.erasures.lock().unwrap().len(), 1, "erased once");
    let t = task(&done, "crm");
    assert_eq!(t.affected[0].count, 2, "counted once");
    assert_eq!(t.attempt_count, 2);
    assert!(done.actions.iter().any(|a| a.action == "source_resumed"
        && a.data_source == "dataSources/crm"
        && a.result() == ActionResult::Succeeded));
    // The other sources were not asked again.
    for other in ["custodia-consent", "custodia-audit-log"] {
        assert_eq!(task(&done, other).attempt_count, 1, "{other}");
    }
    drop(c);
    second.stop().await;
}
