//! kill -9 of the server in a loop during appends: every acknowledged event is
//! present after restart, sequence numbers have no gaps, and the recomputed root
//! equals the last signed head.

use std::{
    collections::HashMap,
    path::Path,
    process::{Child, Command, Stdio},
    sync::{Arc, Mutex},
    time::Duration,
};

use custodia_core::{Config, ServiceName, storage};
use custodia_proto::{
    audit::v1::{
        AccessEvent, AccessOutcome, AppendEventsRequest, GetSignedTreeHeadRequest,
        audit_log_service_client::AuditLogServiceClient,
    },
    common::v1::{Actor, SubjectRef},
};
use custodia_tests::authed;
use tonic::transport::{Channel, Endpoint};
use tonic_health::pb::{HealthCheckRequest, health_client::HealthClient};

pub const TOKEN: &str = "crash-test-admin-token-0123456789";

fn start(data_dir: &Path, port: u16) -> Child {
    start_service(data_dir, port, "audit-log")
}

/// Starts the real binary serving `service` on `port` over `data_dir`.
pub fn start_service(data_dir: &Path, port: u16, service: &str) -> Child {
    start_service_with(data_dir, port, service, &[])
}

/// [`start_service`] with more environment (`CUSTODIA__DATABASE__URL`, ...).
pub fn start_service_with(
    data_dir: &Path,
    port: u16,
    service: &str,
    env: &[(String, String)],
) -> Child {
    Command::new(env!("CARGO_BIN_EXE_custodia"))
        .args(["serve", service, "--listen"])
        .arg(format!("127.0.0.1:{port}"))
        .arg("--data-dir")
        .arg(data_dir)
        .env("CUSTODIA_ADMIN_TOKEN", TOKEN)
        .env("RUST_LOG", "error")
        .envs(env.iter().map(|(k, v)| (k, v)))
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("custodia starts")
}

/// A port free on 127.0.0.1 for the binary to listen on.
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// Connects once audit-log reports SERVING (bounded: 30 s).
async fn connect(port: u16) -> Channel {
    connect_service(port, ServiceName::AuditLog).await
}

/// Connects once `service` reports SERVING (bounded: 30 s).
pub async fn connect_service(port: u16, service: ServiceName) -> Channel {
    let endpoint = Endpoint::from_shared(format!("http://127.0.0.1:{port}")).unwrap();
    for _ in 0..600 {
        if let Ok(channel) = endpoint.connect().await {
            let status = HealthClient::new(channel.clone())
                .check(HealthCheckRequest {
                    service: service.grpc_name().into(),
                })
                .await;
            if status.is_ok_and(|s| s.into_inner().status == 1) {
                return channel;
            }
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("custodia did not become SERVING within 30 s");
}

fn event(id: String) -> AccessEvent {
    AccessEvent {
        event_id: id,
        event_time: Some(prost_types::Timestamp {
            seconds: 1_790_000_000,
            nanos: 0,
        }),
        actor: Some(Actor {
            principal: "crm".into(),
            user: String::new(),
        }),
        service: "crm".into(),
        method: "ReadContact".into(),
        subject: Some(SubjectRef {
            r#type: "crm_contact".into(),
            value: "c-42".into(),
        }),
        outcome: AccessOutcome::Ok as i32,
        ..Default::default()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_during_appends_loses_no_acknowledged_event() {
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    // event id -> acknowledged sequence number
    let acked: Arc<Mutex<HashMap<String, i64>>> = Arc::default();

    for round in 0..4 {
        let mut child = start(dir.path(), port);
        let channel = connect(port).await;
        // Four writers append until the server dies under them.
        let writers: Vec<_> = (0..4)
            .map(|w| {
                let mut client = AuditLogServiceClient::new(channel.clone());
                let acked = acked.clone();
                tokio::spawn(async move {
                    for batch in 0.. {
                        let events: Vec<_> = (0..25)
                            .map(|i| event(format!("r{round}-w{w}-b{batch}-e{i}")))
                            .collect();
                        let request = AppendEventsRequest {
                            events,
                            request_id: String::new(),
                        };
                        match client.append_events(authed(request, TOKEN)).await {
                            Ok(r) => {
                                let mut acked = acked.lock().unwrap();
                                for result in r.into_inner().results {
                                    acked.insert(result.event_id, result.sequence);
                                }
                            }
                            Err(_) => return,
                        }
                    }
                })
            })
            .collect();
        // Kill once this round has acknowledged a few hundred more events.
        let target = (round + 1) * 400;
        while acked.lock().unwrap().len() < target {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        child.kill().expect("SIGKILL");
        child.wait().unwrap();
        for w in writers {
            w.await.unwrap();
        }
    }

    // Restart: everything acknowledged is there, at its number, without gaps.
    let mut child = start(dir.path(), port);
    let channel = connect(port).await;
    let acked = acked.lock().unwrap().clone();
    assert!(acked.len() >= 1600);
    let config = Config {
        data_dir: dir.path().to_path_buf(),
        ..Default::default()
    };
    let db = storage::open_service(&config, ServiceName::AuditLog)
        .await
        .unwrap();
    let store = custodia_audit_log::store::LogStore::new(db.clone());
    let size = store.size().await.unwrap();
    let rows = store.raw_entries(0, size as usize + 10).await.unwrap();
    assert_eq!(
        rows.len() as u64,
        size,
        "no gaps, nothing beyond the counter"
    );
    let stored: HashMap<String, i64> = rows
        .iter()
        .enumerate()
        .map(|(i, raw)| {
            assert_eq!(raw.seq, i as u64, "sequence numbers are gap-free");
            let entry = custodia_audit_log::entry::Entry::from_bytes(&raw.entry).unwrap();
            (entry.event_id, raw.seq as i64)
        })
        .collect();
    for (id, seq) in &acked {
        assert_eq!(
            stored.get(id),
            Some(seq),
            "acknowledged event {id} kept at {seq}"
        );
    }

    // The integrator signs a head over everything; the recomputed root matches it.
    let mut client = AuditLogServiceClient::new(channel);
    let mut head_size = 0;
    for _ in 0..600 {
        let head = client
            .get_signed_tree_head(authed(GetSignedTreeHeadRequest { tree_size: 0 }, TOKEN))
            .await
            .unwrap()
            .into_inner()
            .head
            .unwrap();
        head_size = head.tree_size as u64;
        if head_size == size {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(head_size, size, "a head covers every entry");
    child.kill().unwrap();
    child.wait().unwrap();
    let report = custodia_audit_log::verify::verify_database(&config, &[])
        .await
        .unwrap();
    assert!(report.is_ok(), "{report}");
    assert_eq!(report.entries, size);
    db.close().await;
}
