//! The fan-out worker: runs due source tasks (pending, or failed with their
//! retry due by the injected clock), builds export packages once every
//! source of an access request is settled, and deletes expired packages.
//!
//! Task state is persisted before and after each call, so a process killed
//! mid-fan-out resumes on restart: tasks left RUNNING are asked again with
//! the same deterministic idempotency key (`dsar-{request}-{source}`), so a
//! source never double-counts an erasure and none is skipped. One worker per
//! database is assumed (the embedded default, or one dsar replica).

use std::{path::PathBuf, sync::Arc, time::Duration};

use chrono::{DateTime, Utc};
use custodia_core::{
    ApiError,
    access::name_subject,
    idempotency::RequestKey,
    outbox::{AccessEvent, Outcome as EventOutcome},
    proto_time::{micros_of, timestamp},
    storage::to_micros,
};
use custodia_proto::{
    connector::v1::Capability,
    dsar::v1::{self as pb, ActionResult, ExportState, RequestState, SourceTaskState},
    google::rpc::Status as RpcStatus,
};
use tokio::task::JoinSet;

use crate::{
    api::{Api, SERVICE_NAME},
    connector::{self, Ask, Failure},
    export,
    model::{self, SYSTEM_PRINCIPAL, action},
    special,
    state::is_terminal,
    store::{Changes, ExportRow},
};

/// Background fan-out.
#[derive(Debug)]
pub struct Worker {
    api: Api,
    export_dir: PathBuf,
    shutdown: tokio::sync::watch::Receiver<bool>,
}

/// The idempotency key of the call for `request_id` on `source_id`.
pub fn connector_request_id(request_id: &str, source_id: &str) -> String {
    format!("dsar-{request_id}-{source_id}")
}

impl Worker {
    /// A worker over `api`'s store.
    pub fn new(
        api: Api,
        export_dir: PathBuf,
        shutdown: tokio::sync::watch::Receiver<bool>,
    ) -> Self {
        Self {
            api,
            export_dir,
            shutdown,
        }
    }

    fn now(&self) -> DateTime<Utc> {
        self.api.clock.now()
    }

    /// Runs until shutdown.
    pub async fn run(mut self) {
        if let Err(e) = self.requeue().await {
            tracing::error!(error = ?e, "dsar worker could not requeue interrupted tasks");
        }
        let poll = Duration::from_millis(self.api.config.dsar.poll_interval_ms);
        let mut running: JoinSet<()> = JoinSet::new();
        let this = Arc::new(WorkerRef {
            api: self.api.clone(),
            export_dir: self.export_dir.clone(),
            last_retention: std::sync::Mutex::new(None),
        });
        loop {
            while running.try_join_next().is_some() {}
            if let Err(e) = this.tick(&mut running).await {
                tracing::error!(error = ?e, "dsar worker tick failed");
            }
            tokio::select! {
                _ = self.shutdown.changed() => break,
                _ = self.api.wake.notified() => {}
                _ = tokio::time::sleep(poll) => {}
            }
            if *self.shutdown.borrow() {
                break;
            }
        }
        running.abort_all();
    }

    async fn requeue(&self) -> anyhow::Result<()> {
        let now = self.now();
        for id in self.api.store.requeue_running().await? {
            let result = self
                .api
                .store
                .change(&id, None, None, to_micros(now), |l| {
                    let mut changes = Changes::default();
                    for t in &l.tasks {
                        if t.state() == SourceTaskState::Running {
                            let mut t = t.clone();
                            t.state = SourceTaskState::Pending as i32;
                            t.next_attempt_time = Some(timestamp(now));
                            changes.actions.push(action(
                                now,
                                SYSTEM_PRINCIPAL,
                                "source_resumed",
                                ActionResult::Succeeded,
                                "Interrupted by a restart; asked again with the same request id",
                                &t.data_source,
                            ));
                            changes.tasks.push(t);
                        }
                    }
                    Ok(changes)
                })
                .await;
            if let Err(e) = result {
                tracing::error!(error = %e, request = %id, "requeue failed");
            }
        }
        Ok(())
    }
}

/// The shared part of the worker that spawned tasks use.
#[derive(Debug)]
struct WorkerRef {
    api: Api,
    export_dir: PathBuf,
    /// The last schedule slot a retention run was started for.
    last_retention: std::sync::Mutex<Option<i64>>,
}

fn backoff(config: &custodia_core::config::DsarConfig, attempt: i32) -> chrono::Duration {
    let exp = attempt.clamp(1, 20) as u32 - 1;
    let secs = config
        .retry_initial_secs
        .saturating_mul(1u64 << exp)
        .min(config.retry_max_secs)
        .max(1);
    chrono::Duration::seconds(secs as i64)
}

fn verb(op: Capability) -> (&'static str, &'static str, &'static str) {
    match op {
        Capability::Export => ("source_exported", "ExportSubject", "export"),
        Capability::Erase => ("source_erased", "EraseSubject", "erase"),
        Capability::Restrict => ("source_restricted", "RestrictSubject", "restrict"),
        Capability::Rectify => ("source_rectified", "RectifySubject", "rectify"),
        _ => ("source_called", "Call", "other"),
    }
}

impl WorkerRef {
    fn now(&self) -> DateTime<Utc> {
        self.api.clock.now()
    }

    fn staging(&self, request_id: &str) -> PathBuf {
        self.export_dir.join(request_id).join("staging")
    }

    async fn tick(self: &Arc<Self>, running: &mut JoinSet<()>) -> anyhow::Result<()> {
        let now = self.now();
        for due in self.api.store.due_tasks(to_micros(now), 64).await? {
            if let Some(claimed) = self.claim(&due.request_id, &due.source_id).await? {
                let me = self.clone();
                running.spawn(async move {
                    me.run_task(claimed).await;
                    me.api.wake.notify_one();
                });
            }
        }
        for id in self.api.store.building_exports().await? {
            if let Err(e) = self.try_build(&id).await {
                tracing::error!(error = %e, request = %id, "export build failed");
            }
        }
        for id in self.api.store.expired_exports(to_micros(now)).await? {
            if let Err(e) = self.expire(&id).await {
                tracing::error!(error = %e, request = %id, "export expiry failed");
            }
        }
        self.schedule_retention(now).await;
        Ok(())
    }

    /// Starts the retention run of the current schedule slot, once: the slot
    /// is the idempotency key, so a restart or a second replica in the same
    /// slot finds the run already recorded.
    async fn schedule_retention(&self, now: DateTime<Utc>) {
        let interval = self.api.config.dsar.retention_interval_secs;
        if interval == 0 {
            return;
        }
        let slot = now.timestamp().div_euclid(interval as i64);
        if *self.last_retention.lock().expect("lock") == Some(slot) {
            return;
        }
        // One run per slot across replicas: they all claim the same key.
        let request_id = format!("scheduled-{interval}-{slot}");
        let key = RequestKey::new(
            SYSTEM_PRINCIPAL,
            "ApplyRetention",
            &request_id,
            &custodia_proto::dsar::v1::ApplyRetentionRequest {
                request_id: request_id.clone(),
                ..Default::default()
            },
        );
        let started = self
            .api
            .start_run(
                SYSTEM_PRINCIPAL,
                "",
                Vec::new(),
                Vec::new(),
                false,
                true,
                key.as_ref(),
            )
            .await;
        match started {
            Ok(_) => *self.last_retention.lock().expect("lock") = Some(slot),
            Err(e) => tracing::error!(error = %e, "starting a scheduled retention run"),
        }
    }

    /// Marks the task RUNNING (one attempt more); `None` when it is no longer due.
    async fn claim(&self, request_id: &str, source_id: &str) -> anyhow::Result<Option<Claimed>> {
        let now = self.now();
        let mut out = None;
        let result = self
            .api
            .store
            .change(request_id, None, None, to_micros(now), |l| {
                let Some(task) = l.task(source_id).cloned() else {
                    return Ok(Changes::default());
                };
                let due = match task.state() {
                    SourceTaskState::Pending => true,
                    SourceTaskState::Failed => task
                        .next_attempt_time
                        .as_ref()
                        .is_none_or(|t| micros_of(t) <= to_micros(now)),
                    _ => false,
                };
                if !due || l.state() != RequestState::InProgress {
                    return Ok(Changes::default());
                }
                let mut task = task;
                task.state = SourceTaskState::Running as i32;
                task.attempt_count += 1;
                task.last_attempt_time = Some(timestamp(now));
                out = Some(Claimed {
                    request_id: request_id.to_string(),
                    source_id: source_id.to_string(),
                    attempt: task.attempt_count,
                    operation: task.operation(),
                    request: l.record.clone(),
                });
                Ok(Changes {
                    tasks: vec![task],
                    ..Default::default()
                })
            })
            .await;
        match result {
            Ok(_) => Ok(out),
            Err(ApiError::NotFound { .. }) => Ok(None),
            Err(e) => Err(anyhow::anyhow!("claiming a task: {e}")),
        }
    }

    async fn run_task(&self, c: Claimed) {
        let staging = self.staging(&c.request_id);
        let result = match self.api.target(&c.source_id).await {
            Err(f) => Err(f),
            Ok((target, _)) => {
                let objection = objection_reason(&c.request);
                let ask = Ask {
                    operation: c.operation,
                    subject: &c.request.subject_identifiers,
                    dsar_request: &c.request.name,
                    categories: &c.request.categories,
                    corrections: &c.request.corrections,
                    reason: objection.as_deref().unwrap_or(&c.request.details),
                    purposes: &c.request.purposes,
                    receive_time: c.request.receive_time,
                    request_id: connector_request_id(&c.request_id, &c.source_id),
                    staging: &staging,
                };
                connector::perform(&target, &ask).await
            }
        };
        if let Err(e) = self.record(&c, result).await {
            tracing::error!(error = %e, request = %c.request_id, source = %c.source_id, "recording a task result failed");
        }
    }

    async fn record(
        &self,
        c: &Claimed,
        result: Result<connector::Outcome, Failure>,
    ) -> Result<(), ApiError> {
        let now = self.now();
        let config = self.api.config.dsar.clone();
        let source_name = model::source_name(&c.source_id);
        let (what, method, verb_name) = verb(c.operation);
        let mut event = AccessEvent::new(
            now,
            SYSTEM_PRINCIPAL,
            SERVICE_NAME,
            method,
            if result.is_ok() {
                EventOutcome::Ok
            } else {
                EventOutcome::Error
            },
        );
        event.action = verb_name.to_string();
        event.resource = c.request.name.clone();
        event.detail = serde_json::json!({ "data_source": source_name }).to_string();
        name_subject(
            &mut event,
            &self.api.subjects,
            c.request.subject_identifiers.first(),
        );
        // Special-category data in the answer is checked against the register
        // before the change (a call to consent), its findings made inside it.
        let allowed = match &result {
            Ok(o) if !o.special.is_empty() => {
                Some(self.api.allowed_special_categories(&c.source_id).await)
            }
            _ => None,
        };
        self.api
            .store
            .change(&c.request_id, None, None, to_micros(now), |l| {
                let Some(mut task) = l.task(&c.source_id).cloned() else {
                    return Ok(Changes::default());
                };
                // Handled by hand (or retried) meanwhile: that decision stands.
                if task.state() != SourceTaskState::Running || task.attempt_count != c.attempt {
                    return Ok(Changes::default());
                }
                let entry;
                match &result {
                    Ok(o) => {
                        task.state = SourceTaskState::Succeeded as i32;
                        task.exported_record_count = o.exported;
                        task.affected = o.affected.clone();
                        task.retained = o.retained.clone();
                        task.correction_results = o.corrections.clone();
                        task.last_error = None;
                        task.next_attempt_time = None;
                        task.complete_time = Some(timestamp(now));
                        let text = match c.operation {
                            Capability::Export => format!("{} records exported", o.exported),
                            _ => {
                                let counts: Vec<String> = o
                                    .affected
                                    .iter()
                                    .map(|x| format!("{} {}", x.count, x.category))
                                    .collect();
                                let kept: Vec<String> = o
                                    .retained
                                    .iter()
                                    .map(|x| {
                                        format!("{} {} ({})", x.record_count, x.category, x.reason)
                                    })
                                    .collect();
                                format!(
                                    "Affected: {}{}",
                                    if counts.is_empty() {
                                        "none".into()
                                    } else {
                                        counts.join(", ")
                                    },
                                    if kept.is_empty() {
                                        String::new()
                                    } else {
                                        format!("; kept: {}", kept.join(", "))
                                    }
                                )
                            }
                        };
                        entry = action(
                            now,
                            SYSTEM_PRINCIPAL,
                            what,
                            ActionResult::Succeeded,
                            text,
                            &source_name,
                        );
                    }
                    Err(f) => {
                        let next = now + backoff(&config, task.attempt_count);
                        task.state = SourceTaskState::Failed as i32;
                        task.last_error = Some(RpcStatus {
                            code: f.code as i32,
                            message: f.message.clone(),
                            details: Vec::new(),
                        });
                        task.next_attempt_time = Some(timestamp(next));
                        entry = action(
                            now,
                            SYSTEM_PRINCIPAL,
                            "source_failed",
                            ActionResult::Failed,
                            format!(
                                "Attempt {} failed: {}; next attempt at {}",
                                task.attempt_count,
                                f.message,
                                next.to_rfc3339()
                            ),
                            &source_name,
                        );
                    }
                }
                let mut actions = vec![entry];
                if let (Ok(o), Some(allowed)) = (&result, &allowed) {
                    actions.extend(special::record_findings(
                        l,
                        &source_name,
                        &o.special,
                        allowed,
                        now,
                        SYSTEM_PRINCIPAL,
                    ));
                }
                Ok(Changes {
                    tasks: vec![task],
                    actions,
                    events: vec![event],
                    ..Default::default()
                })
            })
            .await?;
        Ok(())
    }

    /// Builds the export of `request_id` when every source is settled.
    async fn try_build(&self, request_id: &str) -> anyhow::Result<()> {
        let Some(l) = self.api.store.get(request_id).await? else {
            return Ok(());
        };
        let now = self.now();
        let staging = self.staging(request_id);
        if is_terminal(l.state()) {
            // Rejected or cancelled before the package was built: nothing is kept.
            let _ = tokio::fs::remove_dir_all(self.export_dir.join(request_id)).await;
            self.set_export(
                request_id,
                ExportState::Expired,
                None,
                "export_discarded",
                "The request ended before its package was built; gathered data deleted",
            )
            .await?;
            return Ok(());
        }
        if l.state() != RequestState::InProgress || !l.tasks.iter().all(model::task_settled) {
            return Ok(());
        }
        let mut parts = Vec::new();
        for t in &l.tasks {
            let id = model::source_id_of(&t.data_source).to_string();
            let display = self
                .api
                .source(&id)
                .await
                .map(|s| s.display_name)
                .unwrap_or_default();
            let manual = t.manual_handling.clone().unwrap_or_default();
            parts.push(export::SourcePart {
                source_id: id,
                display_name: display,
                status: if t.state() == SourceTaskState::HandledManually {
                    "handled_manually".into()
                } else {
                    "exported".into()
                },
                note: if t.state() == SourceTaskState::HandledManually {
                    format!("{} {}", manual.reason, manual.description)
                } else {
                    String::new()
                },
            });
        }
        let filename = format!("custodia-export-{request_id}.zip");
        let plan = export::Plan {
            request: l.record.name.clone(),
            request_type: l
                .record
                .r#type()
                .as_str_name()
                .trim_start_matches("REQUEST_TYPE_")
                .to_string(),
            generated_at: now,
            staging: staging.clone(),
            output: self.export_dir.join(request_id).join(&filename),
            sources: parts,
        };
        let output = plan.output.clone();
        let built = tokio::task::spawn_blocking(move || export::build(&plan)).await?;
        match built {
            Ok(b) => {
                let _ = tokio::fs::remove_dir_all(&staging).await;
                let ttl = chrono::Duration::seconds(
                    i64::try_from(self.api.config.dsar.export_ttl_secs)
                        .unwrap_or(i64::MAX / 2_000_000),
                );
                let package = pb::ExportPackage {
                    name: format!("{}/export", l.record.name),
                    state: ExportState::Ready as i32,
                    filename,
                    size_bytes: b.size,
                    sha256: b.sha256.clone(),
                    record_count: b.record_count,
                    create_time: Some(timestamp(now)),
                    expire_time: Some(timestamp(now + ttl)),
                };
                self.set_export(
                    request_id,
                    ExportState::Ready,
                    Some(ExportRow {
                        package,
                        path: output.display().to_string(),
                    }),
                    "export_ready",
                    &format!(
                        "Export package ready: {} records, {} bytes, SHA-256 {}",
                        b.record_count, b.size, b.sha256
                    ),
                )
                .await?;
            }
            Err(e) => {
                tracing::error!(error = ?e, request = %request_id, "building an export package");
                self.set_export(
                    request_id,
                    ExportState::Failed,
                    None,
                    "export_failed",
                    "The export package could not be built",
                )
                .await?;
            }
        }
        Ok(())
    }

    async fn set_export(
        &self,
        request_id: &str,
        state: ExportState,
        row: Option<ExportRow>,
        what: &str,
        text: &str,
    ) -> anyhow::Result<()> {
        let now = self.now();
        self.api
            .store
            .change(request_id, None, None, to_micros(now), |l| {
                let Some(current) = l.export.clone() else {
                    return Ok(Changes::default());
                };
                let mut row = row.unwrap_or(current);
                row.package.state = state as i32;
                Ok(Changes {
                    export: Some(row),
                    actions: vec![action(
                        now,
                        SYSTEM_PRINCIPAL,
                        what,
                        if state == ExportState::Failed {
                            ActionResult::Failed
                        } else {
                            ActionResult::Succeeded
                        },
                        text,
                        "",
                    )],
                    ..Default::default()
                })
            })
            .await
            .map_err(|e| anyhow::anyhow!("{e}"))?;
        Ok(())
    }

    /// Deletes an expired package.
    async fn expire(&self, request_id: &str) -> anyhow::Result<()> {
        if let Some(l) = self.api.store.get(request_id).await?
            && let Some(e) = &l.export
            && !e.path.is_empty()
        {
            match tokio::fs::remove_file(&e.path).await {
                Ok(()) => {}
                Err(err) if err.kind() == std::io::ErrorKind::NotFound => {}
                Err(err) => return Err(err.into()),
            }
        }
        let _ = tokio::fs::remove_dir_all(self.export_dir.join(request_id)).await;
        self.set_export(
            request_id,
            ExportState::Expired,
            None,
            "export_expired",
            "The export package expired and was deleted",
        )
        .await
    }
}

/// A task claimed for one attempt.
/// For an objection request, what its tasks tell the sources: the objection
/// (Art. 21) and, for a source asked to restrict, why (Art. 18(1)(d)).
fn objection_reason(r: &pb::Request) -> Option<String> {
    if r.r#type() != pb::RequestType::Objection {
        return None;
    }
    let what = if r.purposes.is_empty() {
        "direct marketing".to_string()
    } else {
        r.purposes.join(", ")
    };
    let mut text = format!(
        "objection (Art. 21) to {what}, data-subject request {}: processing restricted \
         pending the verification of the objection (Art. 18(1)(d))",
        r.name
    );
    if !r.details.is_empty() {
        text.push_str(": ");
        text.push_str(&r.details);
    }
    // Within what a source (and consent's `grounds`) accepts.
    let mut end = text.len().min(custodia_core::validate::MAX_TEXT);
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    text.truncate(end);
    Some(text)
}

#[derive(Debug, Clone)]
struct Claimed {
    request_id: String,
    source_id: String,
    attempt: i32,
    operation: Capability,
    request: pb::Request,
}
