//! Calls to the data sources: external connectors over
//! `custodia.connector.v1.DataSource`, and custodia's own consent and
//! audit-log services for the built-in sources. Every call has a deadline; a
//! stream must keep delivering within it. Answers are checked before they are
//! trusted: a malformed answer is a failure, not a result.

use std::{
    collections::BTreeMap,
    path::{Path, PathBuf},
    time::Duration,
};

use custodia_core::{json_struct::struct_to_json_text, private_files, proto_time::instant};
use custodia_proto::{
    audit::v1::{
        ListSubjectAccessesRequest, PruneSubjectIndexRequest, PruneSubjectIndexResponse,
        ShredSubjectRequest, audit_log_service_client::AuditLogServiceClient,
    },
    common::v1::{RetainedData, SpecialCategory, SubjectRef},
    connector::v1::{
        self as cpb, Capability, CategoryCount, CorrectionResult,
        data_source_client::DataSourceClient,
    },
    consent::v1::{
        ApplyRecordsRetentionRequest, ApplyRecordsRetentionResponse, ConsentChannel,
        EraseSubjectRequest as ConsentErase, Evidence, GetPurposeRequest, ListConsentEventsRequest,
        ListSubjectConsentsRequest, Purpose, RecordObjectionRequest as ConsentObjection,
        consent_service_client::ConsentServiceClient,
    },
};
use secrecy::{ExposeSecret, SecretString};
use serde_json::{Value, json};
use tokio::io::AsyncWriteExt;
use tonic::{Code, Request, transport::Channel};

use crate::model::{BUILTIN_AUDIT, BUILTIN_CONSENT, validate_counts, validate_retained};

/// Why a call failed: a code and a message safe to record (never a secret).
#[derive(Debug, Clone)]
pub struct Failure {
    /// gRPC-style code.
    pub code: Code,
    /// What went wrong, in words.
    pub message: String,
}

impl Failure {
    fn new(code: Code, message: impl Into<String>) -> Self {
        Self {
            code,
            message: message.into(),
        }
    }

    fn garbage(what: impl std::fmt::Display) -> Self {
        Self::new(
            Code::DataLoss,
            format!("the source answered with something that is not a valid answer: {what}"),
        )
    }

    fn from_status(s: &tonic::Status) -> Self {
        // The source's own message is kept short: it is recorded and shown.
        let mut message: String = s.message().chars().take(300).collect();
        if message.is_empty() {
            message = format!("{:?}", s.code());
        }
        Self::new(
            s.code(),
            format!("the source answered {:?}: {message}", s.code()),
        )
    }
}

/// What a successful call produced.
#[derive(Debug, Clone, Default)]
pub struct Outcome {
    /// Records exported (written to the staging file).
    pub exported: i64,
    /// Records affected per category.
    pub affected: Vec<CategoryCount>,
    /// Data kept, why and until when.
    pub retained: Vec<RetainedData>,
    /// Rectification results.
    pub corrections: Vec<CorrectionResult>,
    /// Exported records of a category the source says holds a special category
    /// (Art. 9): (category, special category, records).
    pub special: Vec<(String, SpecialCategory, i64)>,
}

/// How to reach one source.
#[derive(Debug, Clone)]
pub struct Target {
    /// Source id (`crm`, `custodia-consent`).
    pub source_id: String,
    /// gRPC endpoint.
    pub endpoint: String,
    /// Bearer token, if any.
    pub token: Option<SecretString>,
    /// Deadline of one call (or of each stream message).
    pub timeout: Duration,
    /// How the channel is made (TLS of `https://` endpoints).
    pub outbound: custodia_core::outbound::Outbound,
}

/// What to ask of a source.
#[derive(Debug, Clone)]
pub struct Ask<'a> {
    /// The operation.
    pub operation: Capability,
    /// The subject's identifiers.
    pub subject: &'a [SubjectRef],
    /// `requests/{id}`.
    pub dsar_request: &'a str,
    /// Only these categories.
    pub categories: &'a [String],
    /// Corrections, for rectification.
    pub corrections: &'a [cpb::Correction],
    /// Reason, for restriction.
    pub reason: &'a str,
    /// For an objection: the purposes objected to (`purposes/{purpose}`); none
    /// is an objection to direct marketing as a whole.
    pub purposes: &'a [String],
    /// When the request was received: the time of an objection it records.
    pub receive_time: Option<prost_types::Timestamp>,
    /// Idempotency key, the same for every attempt.
    pub request_id: String,
    /// Where an export writes its records (JSON lines) and source description.
    pub staging: &'a Path,
}

fn authed<T>(msg: T, token: &Option<SecretString>, timeout: Duration) -> Request<T> {
    let mut r = Request::new(msg);
    r.set_timeout(timeout);
    if let Some(t) = token
        && let Ok(v) = format!("Bearer {}", t.expose_secret()).parse()
    {
        r.metadata_mut().insert("authorization", v);
    }
    r
}

async fn channel(t: &Target) -> Result<Channel, Failure> {
    let endpoint = t
        .outbound
        .endpoint(&t.endpoint)
        .map_err(|_| {
            Failure::new(
                Code::InvalidArgument,
                "the source's endpoint is not a valid URI",
            )
        })?
        .connect_timeout(t.timeout)
        .timeout(t.timeout);
    match tokio::time::timeout(t.timeout, endpoint.connect()).await {
        Ok(Ok(c)) => Ok(c),
        Ok(Err(_)) => Err(Failure::new(
            Code::Unavailable,
            "the source cannot be reached",
        )),
        Err(_) => Err(Failure::new(
            Code::DeadlineExceeded,
            "the source did not accept a connection in time",
        )),
    }
}

/// Runs `fut` under the target's deadline.
async fn within<T>(
    t: &Target,
    fut: impl Future<Output = Result<T, tonic::Status>>,
) -> Result<T, Failure> {
    match tokio::time::timeout(t.timeout, fut).await {
        Ok(Ok(v)) => Ok(v),
        Ok(Err(s)) if s.code() == Code::Cancelled || s.code() == Code::DeadlineExceeded => Err(
            Failure::new(Code::DeadlineExceeded, "the source did not answer in time"),
        ),
        Ok(Err(s)) => Err(Failure::from_status(&s)),
        Err(_) => Err(Failure::new(
            Code::DeadlineExceeded,
            format!("the source did not answer within {:?}", t.timeout),
        )),
    }
}

/// Carries out `ask` on `target`.
pub async fn perform(t: &Target, ask: &Ask<'_>) -> Result<Outcome, Failure> {
    match t.source_id.as_str() {
        BUILTIN_CONSENT => consent(t, ask).await,
        BUILTIN_AUDIT => audit(t, ask).await,
        _ => external(t, ask).await,
    }
}

/// Appends records to a staging file, one JSON object per line.
struct Staging {
    file: tokio::io::BufWriter<tokio::fs::File>,
    count: i64,
}

impl Staging {
    async fn create(dir: &Path, source_id: &str, meta: &Value) -> Result<Self, Failure> {
        let io = |e: std::io::Error| {
            tracing::error!(error = %e, "writing export staging file");
            Failure::new(Code::Internal, "the export could not be written to disk")
        };
        // A subject's whole data: owner-only, like everything in the data directory.
        private_files::create_dir_all_async(dir).await.map_err(io)?;
        let create = |path: PathBuf| async move {
            private_files::file_options_async()
                .write(true)
                .create(true)
                .truncate(true)
                .open(path)
                .await
        };
        let mut meta_file = create(dir.join(format!("{source_id}.meta.json")))
            .await
            .map_err(io)?;
        meta_file
            .write_all(&serde_json::to_vec(meta).unwrap_or_default())
            .await
            .map_err(io)?;
        // tokio finishes a write in the background: done before the file is read.
        meta_file.flush().await.map_err(io)?;
        let file = create(dir.join(format!("{source_id}.jsonl")))
            .await
            .map_err(io)?;
        Ok(Self {
            file: tokio::io::BufWriter::new(file),
            count: 0,
        })
    }

    async fn push(&mut self, record: Value) -> Result<(), Failure> {
        let mut line = serde_json::to_vec(&record).unwrap_or_default();
        line.push(b'\n');
        self.file.write_all(&line).await.map_err(|e| {
            tracing::error!(error = %e, "writing export staging file");
            Failure::new(Code::Internal, "the export could not be written to disk")
        })?;
        self.count += 1;
        Ok(())
    }

    async fn finish(mut self) -> Result<i64, Failure> {
        self.file.flush().await.map_err(|e| {
            tracing::error!(error = %e, "writing export staging file");
            Failure::new(Code::Internal, "the export could not be written to disk")
        })?;
        self.file.get_mut().sync_all().await.ok();
        Ok(self.count)
    }
}

fn time_text(t: &Option<prost_types::Timestamp>) -> Value {
    t.as_ref()
        .and_then(instant)
        .map(|t| json!(t.to_rfc3339_opts(chrono::SecondsFormat::Micros, true)))
        .unwrap_or(Value::Null)
}

fn record(category: &str, id: &str, fields: Value, create: Value, update: Value) -> Value {
    json!({
        "category": category,
        "record_id": id,
        "fields": fields,
        "create_time": create,
        "update_time": update,
    })
}

fn category_meta(c: &cpb::DataCategory) -> Value {
    let r = c.retention.clone().unwrap_or_default();
    json!({
        "category": c.category,
        "description": c.description,
        "purposes": c.purposes,
        "recipients": c.recipients,
        "retention": { "period": r.period, "anchor": r.anchor, "criteria": r.criteria },
        "origin": c.origin,
    })
}

fn valid_name(s: &str, max: usize) -> bool {
    !s.trim().is_empty() && s.len() <= max && !s.chars().any(char::is_control)
}

async fn external(t: &Target, ask: &Ask<'_>) -> Result<Outcome, Failure> {
    let mut client = DataSourceClient::new(channel(t).await?);
    let subject = ask.subject.to_vec();
    match ask.operation {
        Capability::Export => {
            // The description feeds the summary's Art. 15(1) items; a source
            // that does not describe itself still exports.
            let caps = match within(
                t,
                client.get_capabilities(authed(
                    cpb::GetCapabilitiesRequest {},
                    &t.token,
                    t.timeout,
                )),
            )
            .await
            {
                Ok(r) => r.into_inner(),
                Err(f) if f.code == Code::Unimplemented => Default::default(),
                Err(f) => return Err(f),
            };
            let meta = json!({
                "display_name": caps.display_name,
                "version": caps.version,
                "categories": caps.categories.iter().map(category_meta).collect::<Vec<_>>(),
            });
            let mut staging = Staging::create(ask.staging, &t.source_id, &meta).await?;
            // Records per category the source says holds a special category.
            let mut special_counts: std::collections::BTreeMap<&str, (SpecialCategory, i64)> = caps
                .categories
                .iter()
                .filter(|c| c.special_category() != SpecialCategory::Unspecified)
                .map(|c| (c.category.as_str(), (c.special_category(), 0)))
                .collect();
            let mut stream = within(
                t,
                client.export_subject(authed(
                    cpb::ExportSubjectRequest {
                        subject_identifiers: subject,
                        dsar_request: ask.dsar_request.to_string(),
                        categories: ask.categories.to_vec(),
                    },
                    &t.token,
                    t.timeout,
                )),
            )
            .await?
            .into_inner();
            loop {
                let Some(batch) = within(t, stream.message()).await? else {
                    break;
                };
                if batch.records.len() > 10_000 {
                    return Err(Failure::garbage("a batch of more than 10,000 records"));
                }
                for r in batch.records {
                    if !valid_name(&r.category, 128) {
                        return Err(Failure::garbage("a record without a valid category"));
                    }
                    if let Some(n) = special_counts.get_mut(r.category.as_str()) {
                        n.1 += 1;
                    }
                    if !valid_name(&r.record_id, 256) {
                        return Err(Failure::garbage("a record without a valid record_id"));
                    }
                    let fields: Value = r
                        .fields
                        .as_ref()
                        .map(|s| {
                            serde_json::from_str(&struct_to_json_text(s)).unwrap_or(Value::Null)
                        })
                        .unwrap_or(json!({}));
                    staging
                        .push(record(
                            &r.category,
                            &r.record_id,
                            fields,
                            time_text(&r.create_time),
                            time_text(&r.update_time),
                        ))
                        .await?;
                }
            }
            Ok(Outcome {
                exported: staging.finish().await?,
                special: special_counts
                    .into_iter()
                    .filter(|(_, (_, n))| *n > 0)
                    .map(|(category, (special, n))| (category.to_string(), special, n))
                    .collect(),
                ..Default::default()
            })
        }
        Capability::Erase => {
            let r = within(
                t,
                client.erase_subject(authed(
                    cpb::EraseSubjectRequest {
                        subject_identifiers: subject,
                        dsar_request: ask.dsar_request.to_string(),
                        categories: ask.categories.to_vec(),
                        request_id: ask.request_id.clone(),
                    },
                    &t.token,
                    t.timeout,
                )),
            )
            .await?
            .into_inner();
            check_counts_and_retained(&r.erased, &r.retained)?;
            Ok(Outcome {
                affected: r.erased,
                retained: r.retained,
                ..Default::default()
            })
        }
        Capability::Restrict => {
            let r = within(
                t,
                client.restrict_subject(authed(
                    cpb::RestrictSubjectRequest {
                        subject_identifiers: subject,
                        dsar_request: ask.dsar_request.to_string(),
                        action: cpb::RestrictionAction::Restrict as i32,
                        categories: ask.categories.to_vec(),
                        reason: ask.reason.to_string(),
                        request_id: ask.request_id.clone(),
                    },
                    &t.token,
                    t.timeout,
                )),
            )
            .await?
            .into_inner();
            check_counts_and_retained(&r.affected, &[])?;
            Ok(Outcome {
                affected: r.affected,
                ..Default::default()
            })
        }
        Capability::Rectify => {
            let r = within(
                t,
                client.rectify_subject(authed(
                    cpb::RectifySubjectRequest {
                        subject_identifiers: subject,
                        dsar_request: ask.dsar_request.to_string(),
                        corrections: ask.corrections.to_vec(),
                        request_id: ask.request_id.clone(),
                    },
                    &t.token,
                    t.timeout,
                )),
            )
            .await?
            .into_inner();
            if r.results.len() != ask.corrections.len()
                || r.results.iter().any(|c| {
                    c.index < 0 || c.index as usize >= ask.corrections.len() || c.record_count < 0
                })
            {
                return Err(Failure::garbage(
                    "the correction results do not match the corrections asked",
                ));
            }
            let mut affected: BTreeMap<String, i64> = BTreeMap::new();
            for c in &r.results {
                let category = &ask.corrections[c.index as usize].category;
                *affected.entry(category.clone()).or_default() += c.record_count;
            }
            Ok(Outcome {
                affected: affected
                    .into_iter()
                    .map(|(category, count)| CategoryCount { category, count })
                    .collect(),
                corrections: r.results,
                ..Default::default()
            })
        }
        _ => Err(Failure::new(
            Code::Unimplemented,
            "custodia does not ask sources for this operation",
        )),
    }
}

fn check_counts_and_retained(
    counts: &[CategoryCount],
    retained: &[RetainedData],
) -> Result<(), Failure> {
    let mut v = custodia_core::validate::Validator::new();
    validate_counts(&mut v, "counts", counts);
    validate_retained(&mut v, "retained", retained);
    match v.finish() {
        Ok(()) => Ok(()),
        Err(e) => Err(Failure::garbage(e)),
    }
}

async fn consent(t: &Target, ask: &Ask<'_>) -> Result<Outcome, Failure> {
    let mut client = ConsentServiceClient::new(channel(t).await?);
    match ask.operation {
        Capability::Export => {
            let meta = json!({
                "display_name": "custodia consent records",
                "categories": [
                    { "category": "consents", "description": "Your current consent decisions, per purpose", "purposes": [], "recipients": [], "retention": {}, "origin": "you, through the forms and banners that asked" },
                    { "category": "consent_events", "description": "Every consent given, refused or withdrawn, with its evidence", "purposes": [], "recipients": [], "retention": {}, "origin": "you, through the forms and banners that asked" },
                ],
            });
            let mut staging = Staging::create(ask.staging, &t.source_id, &meta).await?;
            let mut token = String::new();
            loop {
                let page = within(
                    t,
                    client.list_subject_consents(authed(
                        ListSubjectConsentsRequest {
                            subject_identifiers: ask.subject.to_vec(),
                            page_size: 500,
                            page_token: token.clone(),
                        },
                        &t.token,
                        t.timeout,
                    )),
                )
                .await?
                .into_inner();
                for c in page.consents {
                    let id = if c.consent_event.is_empty() {
                        c.purpose.clone()
                    } else {
                        c.consent_event.clone()
                    };
                    let fields = json!({
                        "purpose": c.purpose,
                        "state": c.state().as_str_name(),
                        "decision_time": time_text(&c.decision_time),
                        "expire_time": time_text(&c.expire_time),
                        "notice": c.notice,
                        "reconfirmation_required": c.reconfirmation_required,
                        "subject_type": c.subject.as_ref().map(|s| s.r#type.clone()),
                        "subject": c.subject.as_ref().map(|s| s.value.clone()),
                    });
                    staging
                        .push(record(
                            "consents",
                            &id,
                            fields,
                            time_text(&c.decision_time),
                            Value::Null,
                        ))
                        .await?;
                }
                if page.next_page_token.is_empty() {
                    break;
                }
                token = page.next_page_token;
            }
            let mut token = String::new();
            loop {
                let page = within(
                    t,
                    client.list_consent_events(authed(
                        ListConsentEventsRequest {
                            subject_identifiers: ask.subject.to_vec(),
                            purpose: String::new(),
                            page_size: 500,
                            page_token: token.clone(),
                        },
                        &t.token,
                        t.timeout,
                    )),
                )
                .await?
                .into_inner();
                for e in page.events {
                    let ev = e.evidence.clone().unwrap_or_default();
                    let fields = json!({
                        "purpose": e.purpose,
                        "state": e.state().as_str_name(),
                        "reason": e.reason,
                        "receipt": e.receipt,
                        "expire_time": time_text(&e.expire_time),
                        "record_time": time_text(&e.record_time),
                        "subject_type": e.subject.as_ref().map(|s| s.r#type.clone()),
                        "subject": e.subject.as_ref().map(|s| s.value.clone()),
                        "evidence": {
                            "collect_time": time_text(&ev.collect_time),
                            "channel": ev.channel().as_str_name(),
                            "notice": ev.notice,
                            "collector": ev.collector.as_ref().map(|a| a.principal.clone()),
                            "form_id": ev.form_id,
                            "language": ev.language,
                        },
                    });
                    staging
                        .push(record(
                            "consent_events",
                            &e.name,
                            fields,
                            time_text(&e.record_time),
                            Value::Null,
                        ))
                        .await?;
                }
                if page.next_page_token.is_empty() {
                    break;
                }
                token = page.next_page_token;
            }
            Ok(Outcome {
                exported: staging.finish().await?,
                ..Default::default()
            })
        }
        Capability::Erase => {
            let r = within(
                t,
                client.erase_subject(authed(
                    ConsentErase {
                        subject_identifiers: ask.subject.to_vec(),
                        dsar_request: ask.dsar_request.to_string(),
                        request_id: ask.request_id.clone(),
                    },
                    &t.token,
                    t.timeout,
                )),
            )
            .await?
            .into_inner();
            Ok(Outcome {
                affected: vec![
                    CategoryCount {
                        category: "consent_events".into(),
                        count: r.erased_event_count,
                    },
                    CategoryCount {
                        category: "receipts".into(),
                        count: r.erased_receipt_count,
                    },
                ],
                retained: r.retained,
                ..Default::default()
            })
        }
        Capability::Object => {
            // Consent states are kept per identifier (keyed hash): the objection
            // is recorded under each, so a check by any of them answers OBJECTED.
            let mut recorded = 0;
            for (i, subject) in ask.subject.iter().enumerate() {
                let r = within(
                    t,
                    client.record_objection(authed(
                        ConsentObjection {
                            subject: Some(subject.clone()),
                            purposes: ask.purposes.to_vec(),
                            direct_marketing: ask.purposes.is_empty(),
                            grounds: ask.reason.to_string(),
                            evidence: Some(Evidence {
                                collect_time: ask.receive_time,
                                channel: ConsentChannel::Staff as i32,
                                form_id: ask.dsar_request.to_string(),
                                ..Default::default()
                            }),
                            request_id: format!("{}-{i}", ask.request_id),
                        },
                        &t.token,
                        t.timeout,
                    )),
                )
                .await?
                .into_inner();
                recorded += r.events.len() as i64;
            }
            Ok(Outcome {
                affected: vec![CategoryCount {
                    category: "consent_objections".into(),
                    count: recorded,
                }],
                ..Default::default()
            })
        }
        _ => Err(Failure::new(
            Code::Unimplemented,
            "the consent records only take part in access, erasure and objection",
        )),
    }
}

/// Each of `purposes` (`purposes/{purpose}`) as the register of processing
/// that `t` (custodia's consent service) keeps it, by name; `None` for one the
/// register does not know.
pub async fn register_purposes(
    t: &Target,
    purposes: &[String],
) -> Result<std::collections::HashMap<String, Option<Purpose>>, Failure> {
    let mut client = ConsentServiceClient::new(channel(t).await?);
    let mut out = std::collections::HashMap::new();
    for name in purposes {
        let found = within(
            t,
            client.get_purpose(authed(
                GetPurposeRequest { name: name.clone() },
                &t.token,
                t.timeout,
            )),
        )
        .await;
        let purpose = match found {
            Ok(r) => r.into_inner().purpose,
            Err(f) if f.code == Code::NotFound => None,
            Err(f) => return Err(f),
        };
        out.insert(name.clone(), purpose);
    }
    Ok(out)
}

/// ApplyRecordsRetention on custodia's consent service (`t`).
pub async fn consent_retention(
    t: &Target,
    cutoff: prost_types::Timestamp,
    dry_run: bool,
    request_id: String,
) -> Result<ApplyRecordsRetentionResponse, Failure> {
    let mut client = ConsentServiceClient::new(channel(t).await?);
    Ok(within(
        t,
        client.apply_records_retention(authed(
            ApplyRecordsRetentionRequest {
                cutoff_time: Some(cutoff),
                dry_run,
                request_id,
            },
            &t.token,
            t.timeout,
        )),
    )
    .await?
    .into_inner())
}

/// PruneSubjectIndex on custodia's audit-log service (`t`).
pub async fn audit_index_retention(
    t: &Target,
    cutoff: prost_types::Timestamp,
    dry_run: bool,
) -> Result<PruneSubjectIndexResponse, Failure> {
    let mut client = AuditLogServiceClient::new(channel(t).await?);
    Ok(within(
        t,
        client.prune_subject_index(authed(
            PruneSubjectIndexRequest {
                cutoff_time: Some(cutoff),
                dry_run,
            },
            &t.token,
            t.timeout,
        )),
    )
    .await?
    .into_inner())
}

async fn audit(t: &Target, ask: &Ask<'_>) -> Result<Outcome, Failure> {
    let mut client = AuditLogServiceClient::new(channel(t).await?);
    match ask.operation {
        Capability::Export => {
            let meta = json!({
                "display_name": "custodia access log",
                "categories": [
                    { "category": "accesses", "description": "Who accessed your data, through which service, for what purpose and when (Art. 15(1)(c))", "purposes": [], "recipients": [], "retention": {}, "origin": "recorded by custodia on every access" },
                ],
            });
            let mut staging = Staging::create(ask.staging, &t.source_id, &meta).await?;
            let mut token = String::new();
            let mut n = 0u64;
            loop {
                let page = within(
                    t,
                    client.list_subject_accesses(authed(
                        ListSubjectAccessesRequest {
                            subject_identifiers: ask.subject.to_vec(),
                            page_size: 1000,
                            page_token: token.clone(),
                            ..Default::default()
                        },
                        &t.token,
                        t.timeout,
                    )),
                )
                .await?
                .into_inner();
                for a in page.accesses {
                    n += 1;
                    let fields = json!({
                        "actor": a.actor.as_ref().map(|x| x.principal.clone()),
                        "service": a.service,
                        "action": a.action,
                        "purpose": a.purpose,
                        "first_access_time": time_text(&a.first_access_time),
                        "last_access_time": time_text(&a.last_access_time),
                        "access_count": a.access_count,
                    });
                    staging
                        .push(record(
                            "accesses",
                            &n.to_string(),
                            fields,
                            time_text(&a.first_access_time),
                            time_text(&a.last_access_time),
                        ))
                        .await?;
                }
                if page.next_page_token.is_empty() {
                    break;
                }
                token = page.next_page_token;
            }
            Ok(Outcome {
                exported: staging.finish().await?,
                ..Default::default()
            })
        }
        Capability::Erase => {
            let r = within(
                t,
                client.shred_subject(authed(
                    ShredSubjectRequest {
                        subject_identifiers: ask.subject.to_vec(),
                        dsar_request: ask.dsar_request.to_string(),
                        request_id: ask.request_id.clone(),
                    },
                    &t.token,
                    t.timeout,
                )),
            )
            .await?
            .into_inner();
            Ok(Outcome {
                affected: vec![CategoryCount {
                    category: "accesses".into(),
                    count: r.affected_event_count,
                }],
                // The log itself stays: only the personal fields become
                // unreadable, which the record says.
                retained: Vec::new(),
                ..Default::default()
            })
        }
        _ => Err(Failure::new(
            Code::Unimplemented,
            "the access log only takes part in access and erasure",
        )),
    }
}

/// Applies one retention rule on an external source.
pub async fn apply_retention(
    t: &Target,
    rule: cpb::RetentionRule,
    dry_run: bool,
    request_id: String,
) -> Result<cpb::ApplyRetentionResponse, Failure> {
    let mut client = DataSourceClient::new(channel(t).await?);
    let r = within(
        t,
        client.apply_retention(authed(
            cpb::ApplyRetentionRequest {
                rule: Some(rule),
                dry_run,
                request_id,
            },
            &t.token,
            t.timeout,
        )),
    )
    .await?
    .into_inner();
    for list in [&r.matched, &r.deleted, &r.anonymised] {
        check_counts_and_retained(list, &[])?;
    }
    check_counts_and_retained(&[], &r.retained)?;
    Ok(r)
}
