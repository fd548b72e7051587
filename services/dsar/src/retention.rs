//! Retention runs: the register's retention rules (each purpose's
//! retention policy in the consent service) applied through `ApplyRetention`
//! on every enabled source that holds the purpose's data and can apply
//! retention, or only counted in a dry run. Each run is recorded with its
//! counts per source and rule.

use chrono::{DateTime, Datelike, Months, Utc};
use custodia_core::{
    ApiError,
    auth::CallContext,
    fields::{absorb, page_size, resource_id},
    idempotency::{MAX_REQUEST_ID, RequestKey},
    legal_time::CalendarPeriod,
    outbox::{AccessEvent, Outcome as EventOutcome},
    pagination,
    proto_time::{micros_of, timestamp},
    storage::to_micros,
    validate::Validator,
};
use custodia_proto::{
    common::v1::RetentionPolicy,
    connector::v1::{Capability, CategoryCount, RetentionRule},
    consent::v1::{ListPurposesRequest, consent_service_client::ConsentServiceClient},
    dsar::v1::{self as pb, DataSourceState, RetentionRunState},
    google::rpc::Status as RpcStatus,
};
use secrecy::ExposeSecret;

use crate::{
    api::{Api, SERVICE_NAME},
    connector,
    model::{self, SYSTEM_PRINCIPAL, check_purpose},
    store::Done,
};

/// Most data sources or purposes an ApplyRetention call names.
const MAX_FILTER: usize = 1000;

/// `t` minus `period`: months and years as calendar units (the end of the
/// month when the day does not exist), then days and time.
pub fn before(t: DateTime<Utc>, p: &CalendarPeriod) -> DateTime<Utc> {
    let months = p.years.saturating_mul(12).saturating_add(p.months);
    let moved = t.checked_sub_months(Months::new(months)).unwrap_or(t);
    let rest = chrono::Duration::days(i64::from(p.weeks) * 7 + i64::from(p.days))
        + chrono::Duration::hours(i64::from(p.hours))
        + chrono::Duration::minutes(i64::from(p.minutes))
        + chrono::Duration::seconds(i64::from(p.seconds));
    let out = moved - rest;
    // Keep the year sane for the connectors.
    if out.year() < 1 { t } else { out }
}

fn run_name(id: &str) -> String {
    format!("retentionRuns/{id}")
}

fn parse_run_name(field: &str, name: &str) -> Result<String, ApiError> {
    resource_id(
        field,
        name,
        "retentionRuns/",
        "retention run",
        "retentionRuns/{retention_run}",
        |id| {
            !id.is_empty()
                && id.len() <= 64
                && id.chars().all(|c| c.is_ascii_alphanumeric() || c == '-')
        },
    )
}

impl Api {
    pub(crate) async fn apply_retention_rpc(
        &self,
        call: &CallContext,
        r: pb::ApplyRetentionRequest,
    ) -> Result<pb::RetentionRun, ApiError> {
        let key = RequestKey::of(call, "ApplyRetention", &r.request_id, &r);
        let mut v = Validator::new();
        v.max_len("request_id", &r.request_id, MAX_REQUEST_ID);
        let mut sources = Vec::new();
        v.max_items("data_sources", r.data_sources.len(), MAX_FILTER);
        v.max_items("purposes", r.purposes.len(), MAX_FILTER);
        for (i, s) in r.data_sources.iter().enumerate().take(MAX_FILTER) {
            if let Some(id) = absorb(
                &mut v,
                model::parse_source_name(&format!("data_sources[{i}]"), s),
            ) {
                sources.push(id);
            }
        }
        for (i, p) in r.purposes.iter().enumerate().take(MAX_FILTER) {
            check_purpose(&mut v, &format!("purposes[{i}]"), p);
        }
        v.finish()?;
        for s in &sources {
            self.source(s).await?;
        }
        self.start_run(
            call.principal.name(),
            &call.trace_id,
            sources,
            r.purposes,
            r.dry_run,
            false,
            key.as_ref(),
        )
        .await
    }

    /// Records a run and carries it out in the background; returns it RUNNING.
    #[allow(clippy::too_many_arguments)]
    pub(crate) async fn start_run(
        &self,
        principal: &str,
        trace_id: &str,
        sources: Vec<String>,
        purposes: Vec<String>,
        dry_run: bool,
        scheduled: bool,
        key: Option<&RequestKey>,
    ) -> Result<pb::RetentionRun, ApiError> {
        let now = self.clock.now();
        let id = uuid::Uuid::now_v7().simple().to_string();
        let run = pb::RetentionRun {
            name: run_name(&id),
            dry_run,
            state: RetentionRunState::Running as i32,
            scheduled,
            actor: Some(model::actor(principal)),
            start_time: Some(timestamp(now)),
            end_time: None,
            results: Vec::new(),
        };
        let mut event = AccessEvent::new(
            now,
            principal,
            SERVICE_NAME,
            "ApplyRetention",
            EventOutcome::Ok,
        );
        event.action = if dry_run { "read" } else { "delete" }.into();
        event.resource = run.name.clone();
        event.trace_id = trace_id.to_string();
        match self
            .store
            .create_run(&id, &run, key, &event, to_micros(now))
            .await?
        {
            Done::Replayed(earlier) => {
                let id = parse_run_name("request_id", &earlier)?;
                return self
                    .store
                    .get_run(&id)
                    .await?
                    .ok_or_else(|| ApiError::not_found("retention run", earlier));
            }
            Done::Applied => {}
        }
        let api = self.clone();
        let started = run.clone();
        tokio::spawn(async move {
            if let Err(e) = api.execute_run(&id, started, sources, purposes).await {
                tracing::error!(error = ?e, run = %id, "retention run failed");
            }
        });
        Ok(run)
    }

    async fn purposes(&self) -> Result<Vec<(String, RetentionPolicy)>, connector::Failure> {
        let failure = |m: &str| connector::Failure {
            code: tonic::Code::Unavailable,
            message: m.to_string(),
        };
        let channel = self
            .outbound
            .endpoint(&self.consent_endpoint)
            .map_err(|_| failure("the consent register's endpoint is not a valid URI"))?
            .connect()
            .await
            .map_err(|_| failure("the consent register cannot be reached"))?;
        let mut client = ConsentServiceClient::new(channel);
        let mut out = Vec::new();
        let mut token = String::new();
        loop {
            let mut req = tonic::Request::new(ListPurposesRequest {
                page_size: 1000,
                page_token: token.clone(),
                ..Default::default()
            });
            if let Some(t) = &self.custodia_token
                && let Ok(v) = format!("Bearer {}", t.expose_secret()).parse()
            {
                req.metadata_mut().insert("authorization", v);
            }
            let page = client
                .list_purposes(req)
                .await
                .map_err(|s| failure(&format!("the consent register answered {:?}", s.code())))?
                .into_inner();
            for p in page.purposes {
                if let Some(r) = p.retention
                    && !r.period.is_empty()
                {
                    out.push((p.name, r));
                }
            }
            if page.next_page_token.is_empty() {
                break;
            }
            token = page.next_page_token;
        }
        Ok(out)
    }

    async fn execute_run(
        &self,
        id: &str,
        mut run: pb::RetentionRun,
        only_sources: Vec<String>,
        only_purposes: Vec<String>,
    ) -> anyhow::Result<()> {
        let now = self.clock.now();
        let mut events = Vec::new();
        let mut failed = false;
        match self.purposes().await {
            Err(f) => {
                failed = true;
                run.results.push(pb::RetentionResult {
                    data_source: model::source_name(model::BUILTIN_CONSENT),
                    error: Some(RpcStatus {
                        code: f.code as i32,
                        message: f.message,
                        details: Vec::new(),
                    }),
                    ..Default::default()
                });
            }
            Ok(purposes) => {
                let sources = self
                    .all_sources()
                    .await
                    .map_err(|e| anyhow::anyhow!("{e}"))?;
                for (purpose, policy) in purposes {
                    if !only_purposes.is_empty() && !only_purposes.contains(&purpose) {
                        continue;
                    }
                    let Ok(period) = policy.period.parse::<CalendarPeriod>() else {
                        continue;
                    };
                    let cutoff = before(now, &period);
                    for s in &sources {
                        let sid = model::source_id_of(&s.name).to_string();
                        if s.builtin
                            || s.state() == DataSourceState::Disabled
                            || !s.capabilities.contains(&(Capability::Retention as i32))
                            || !s.purposes.contains(&purpose)
                            || (!only_sources.is_empty() && !only_sources.contains(&sid))
                        {
                            continue;
                        }
                        let mut result = pb::RetentionResult {
                            data_source: s.name.clone(),
                            purpose: purpose.clone(),
                            cutoff_time: Some(timestamp(cutoff)),
                            ..Default::default()
                        };
                        let rule = RetentionRule {
                            rule_id: purpose.clone(),
                            categories: Vec::new(),
                            policy: Some(policy.clone()),
                            cutoff_time: Some(timestamp(cutoff)),
                        };
                        let request_id = format!(
                            "retention-{id}-{sid}-{}",
                            purpose.trim_start_matches("purposes/")
                        );
                        let answer = match self.target(&sid).await {
                            Ok((t, _)) => {
                                connector::apply_retention(&t, rule, run.dry_run, request_id).await
                            }
                            Err(f) => Err(f),
                        };
                        let mut event = AccessEvent::new(
                            self.clock.now(),
                            SYSTEM_PRINCIPAL,
                            SERVICE_NAME,
                            "ApplyRetention",
                            if answer.is_ok() {
                                EventOutcome::Ok
                            } else {
                                EventOutcome::Error
                            },
                        );
                        event.action = if run.dry_run { "read" } else { "delete" }.into();
                        event.resource = run.name.clone();
                        event.purpose = Some(purpose.clone());
                        event.detail = serde_json::json!({ "data_source": s.name }).to_string();
                        events.push(event);
                        match answer {
                            Ok(a) => {
                                result.matched = a.matched;
                                result.deleted = a.deleted;
                                result.anonymised = a.anonymised;
                                result.retained = a.retained;
                            }
                            Err(f) => {
                                failed = true;
                                result.error = Some(RpcStatus {
                                    code: f.code as i32,
                                    message: f.message,
                                    details: Vec::new(),
                                });
                            }
                        }
                        run.results.push(result);
                    }
                }
            }
        }
        if only_purposes.is_empty() {
            let own = self
                .own_retention(id, &run, &only_sources, &mut events)
                .await;
            failed |= own.iter().any(|r| r.error.is_some());
            run.results.extend(own);
        }
        run.state = if failed {
            RetentionRunState::Failed
        } else {
            RetentionRunState::Succeeded
        } as i32;
        run.end_time = Some(timestamp(self.clock.now()));
        Ok(self.store.finish_run(id, &run, &events).await?)
    }

    /// The retention of custodia's own records (`[retention]`, R-3) in run
    /// `id`: consent trails of ended relations, closed requests and the
    /// access log's search index, each a result of the run (a period left
    /// empty keeps the records, and has none). `only_sources` limits them like
    /// the sources (the built-in ones; closed requests go with
    /// `custodia-consent`, the register's home).
    async fn own_retention(
        &self,
        id: &str,
        run: &pb::RetentionRun,
        only_sources: &[String],
        events: &mut Vec<AccessEvent>,
    ) -> Vec<pb::RetentionResult> {
        let now = self.clock.now();
        let config = &self.config.retention;
        let wanted =
            |source: &str| only_sources.is_empty() || only_sources.iter().any(|s| s == source);
        let cutoff = |period: &str| {
            (!period.is_empty())
                .then(|| period.parse::<CalendarPeriod>().ok())
                .flatten()
                .map(|p| timestamp(before(now, &p)))
        };
        let count = |category: &str, n: i64| CategoryCount {
            category: category.into(),
            count: n,
        };
        let error = |f: connector::Failure| RpcStatus {
            code: f.code as i32,
            message: f.message,
            details: Vec::new(),
        };
        let mut out = Vec::new();
        let mut record = |result: &pb::RetentionResult| {
            let mut event = AccessEvent::new(
                self.clock.now(),
                SYSTEM_PRINCIPAL,
                SERVICE_NAME,
                "ApplyRetention",
                if result.error.is_none() {
                    EventOutcome::Ok
                } else {
                    EventOutcome::Error
                },
            );
            event.action = if run.dry_run { "read" } else { "delete" }.into();
            event.resource = run.name.clone();
            event.purpose = Some(result.purpose.clone());
            event.detail = serde_json::json!({ "data_source": result.data_source }).to_string();
            events.push(event);
        };
        if wanted(model::BUILTIN_CONSENT)
            && let Some(cutoff) = cutoff(&config.consent_trails)
        {
            let mut result = pb::RetentionResult {
                data_source: model::source_name(model::BUILTIN_CONSENT),
                purpose: "custodia/consent-trails".into(),
                cutoff_time: Some(cutoff),
                ..Default::default()
            };
            let answer = match self.target(model::BUILTIN_CONSENT).await {
                Ok((t, _)) => {
                    connector::consent_retention(
                        &t,
                        cutoff,
                        run.dry_run,
                        format!("retention-{id}-consent-trails"),
                    )
                    .await
                }
                Err(f) => Err(f),
            };
            match answer {
                Ok(a) => {
                    let counts = vec![
                        count("consent_states", a.state_count),
                        count("consent_events", a.event_count),
                        count("receipts", a.receipt_count),
                        count("erasure_suppressions", a.suppression_count),
                    ];
                    if !run.dry_run {
                        result.deleted = counts.clone();
                    }
                    result.matched = counts;
                }
                Err(f) => result.error = Some(error(f)),
            }
            record(&result);
            out.push(result);
        }
        if wanted(model::BUILTIN_CONSENT)
            && let Some(cutoff) = cutoff(&config.closed_requests)
        {
            let mut result = pb::RetentionResult {
                purpose: "custodia/closed-requests".into(),
                cutoff_time: Some(cutoff),
                ..Default::default()
            };
            match self
                .store
                .purge_closed(micros_of(&cutoff), run.dry_run)
                .await
            {
                Ok(n) => {
                    result.matched = vec![count("requests", n)];
                    if !run.dry_run {
                        result.deleted = result.matched.clone();
                    }
                }
                Err(e) => {
                    tracing::error!(error = %e, "closed requests retention");
                    result.error = Some(RpcStatus {
                        code: tonic::Code::Internal as i32,
                        message: "the closed requests could not be deleted".into(),
                        details: Vec::new(),
                    });
                }
            }
            record(&result);
            out.push(result);
        }
        if wanted(model::BUILTIN_AUDIT)
            && let Some(cutoff) = cutoff(&config.audit_index)
        {
            let mut result = pb::RetentionResult {
                data_source: model::source_name(model::BUILTIN_AUDIT),
                purpose: "custodia/audit-index".into(),
                cutoff_time: Some(cutoff),
                ..Default::default()
            };
            let answer = match self.target(model::BUILTIN_AUDIT).await {
                Ok((t, _)) => connector::audit_index_retention(&t, cutoff, run.dry_run).await,
                Err(f) => Err(f),
            };
            match answer {
                Ok(a) => {
                    result.matched = vec![count("access_index_entries", a.matched_entry_count)];
                    if !run.dry_run {
                        result.deleted = vec![count("access_index_entries", a.removed_entry_count)];
                    }
                }
                Err(f) => result.error = Some(error(f)),
            }
            record(&result);
            out.push(result);
        }
        out
    }

    pub(crate) async fn get_run(
        &self,
        call: &CallContext,
        r: pb::GetRetentionRunRequest,
    ) -> Result<pb::RetentionRun, ApiError> {
        let id = parse_run_name("name", &r.name)?;
        let run = self
            .store
            .get_run(&id)
            .await?
            .ok_or_else(|| ApiError::not_found("retention run", run_name(&id)))?;
        self.record_read(self.event(call, "GetRetentionRun", run.name.clone(), None))
            .await?;
        Ok(run)
    }

    pub(crate) async fn list_runs(
        &self,
        call: &CallContext,
        r: pb::ListRetentionRunsRequest,
    ) -> Result<pb::ListRetentionRunsResponse, ApiError> {
        let mut v = Validator::new();
        let size = page_size(&mut v, r.page_size);
        v.finish()?;
        let after: Option<(i64, String)> = pagination::decode(&r.page_token, "retentionRuns")?;
        let mut runs = self.store.list_runs(after, size + 1).await?;
        let next = (runs.len() > size).then(|| {
            let (start, id, _) = &runs[size - 1];
            pagination::encode(&(*start, id.clone()), "retentionRuns")
        });
        runs.truncate(size);
        self.record_read(self.event(call, "ListRetentionRuns", String::new(), None))
            .await?;
        Ok(pb::ListRetentionRunsResponse {
            runs: runs.into_iter().map(|(_, _, r)| r).collect(),
            next_page_token: next.unwrap_or_default(),
        })
    }
}
