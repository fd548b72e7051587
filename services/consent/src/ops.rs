//! The consent records behind the API: notices, decisions with evidence,
//! withdrawal, objection, history and checks. Handlers in `grpc.rs` delegate here.

use std::{net::IpAddr, sync::Arc};

use chrono::{DateTime, Datelike, NaiveDate, Utc};
use custodia_core::{
    ApiError,
    auth::CallContext,
    idempotency::RequestKey,
    legal_time::CalendarPeriod,
    outbox::{AccessEvent, EventBatch, OutboxStore, Outcome},
    storage::{from_micros, to_micros},
    subject::SubjectId,
    validate::{MAX_ID, MAX_TEXT, Validator},
};
use custodia_proto::{
    common::v1::{Actor, SubjectRef},
    consent::v1::{
        self as pb, CheckResult, ConsentEvent, ConsentState, Decision, Evidence, LawfulBasis,
        Notice, Purpose, SubjectConsent, age_attestation::Age,
    },
};
use sha2::{Digest, Sha256};

use crate::{
    cache::{CachedPurpose, CachedState},
    decision::{self, StateRow},
    grpc::Api,
    receipt,
    records::{DIRECT_MARKETING, NewRecord, subject_consent},
    register::{from_timestamp, purpose_id, purpose_name, timestamp, valid_id},
};

/// Service name in access events.
const SERVICE: &str = "custodia.consent.v1.ConsentService";
/// Largest proof payload kept with a decision.
const MAX_PROOF: usize = 64 * 1024;
/// Largest notice text.
const MAX_NOTICE: usize = 1024 * 1024;
/// Most identifiers of one person in a call (ListConsentEvents,
/// ListSubjectConsents, EraseSubject): a person has a handful.
pub const MAX_SUBJECT_IDENTIFIERS: usize = 100;
/// Most purposes one withdrawal or objection names, as RecordConsent's decisions.
const MAX_PURPOSES: usize = 100;
/// Most purposes one notice covers or one change stream filters on: a whole
/// register of processing.
pub const MAX_PURPOSE_FILTER: usize = 1000;
/// Tolerated clock skew for evidence times.
const SKEW_US: i64 = 60_000_000;

/// Digital age of consent in `country` (Art. 8(1)): `configured`
/// (`consent.digital_consent_ages`, any case) first, else the member states' laws,
/// else the GDPR default of 16.
fn consent_age(country: &str, configured: &std::collections::BTreeMap<String, i32>) -> i32 {
    let country = country.to_ascii_uppercase();
    if let Some(age) = configured
        .iter()
        .find_map(|(c, age)| c.eq_ignore_ascii_case(&country).then_some(*age))
    {
        return age;
    }
    match country.as_str() {
        "FR" | "CZ" | "GR" | "SI" => 15,
        "AT" | "BG" | "CY" | "ES" | "IT" | "LT" => 14,
        "BE" | "DK" | "EE" | "FI" | "LV" | "MT" | "PT" | "SE" => 13,
        _ => 16,
    }
}

/// IPv4 to /24, IPv6 to /48: enough to show where a consent came from, not who.
pub fn truncate_ip(ip: IpAddr) -> String {
    match ip {
        IpAddr::V4(v4) => {
            let o = v4.octets();
            format!("{}.{}.{}.0/24", o[0], o[1], o[2])
        }
        IpAddr::V6(v6) => {
            let s = v6.segments();
            format!("{:x}:{:x}:{:x}::/48", s[0], s[1], s[2])
        }
    }
}

fn notice_ref(name: &str) -> Option<(&str, i64)> {
    let rest = name.strip_prefix("notices/")?;
    let (id, version) = rest.split_once("/versions/")?;
    (valid_id(id)).then_some(())?;
    Some((id, version.parse().ok().filter(|v: &i64| *v > 0)?))
}

/// C-6: a grant collected under notice version `notice` is refused when a later
/// material version of the same notice had taken effect by the time the consent
/// was collected: the subject was shown terms that no longer held. (Consents
/// collected before the change are kept, and checks answer NOTICE_CHANGED until
/// they are re-confirmed; a grant under another notice covering the purpose is
/// not refused here.)
fn superseded_notice(
    notice: &str,
    purpose: &CachedPurpose,
    collect_us: i64,
    pid: &str,
) -> Result<(), ApiError> {
    let Some((id, shown)) = notice_ref(notice) else {
        return Ok(());
    };
    match purpose.superseding(id, shown, collect_us) {
        Some((version, effective_us)) => Err(ApiError::precondition(
            "NOTICE_SUPERSEDED",
            format!(
                // The notice as parsed, not as sent: the version may carry any
                // number of leading zeros.
                "evidence.notice notices/{id}/versions/{shown} was superseded for \
                 purposes/{pid} by the material change notices/{id}/versions/{version}, in \
                 effect since {} (before the consent was collected): show the current \
                 notice and record the consent under it",
                from_micros(effective_us).to_rfc3339()
            ),
        )),
        None => Ok(()),
    }
}

fn subject_out(id: &SubjectId) -> SubjectRef {
    // Only the type leaves the service: the value is stored as a keyed hash.
    SubjectRef {
        r#type: id.kind().to_string(),
        value: String::new(),
    }
}

impl Api {
    fn subject(
        &self,
        r: Option<&SubjectRef>,
        field: &str,
    ) -> Result<(SubjectId, String), ApiError> {
        let r = r.ok_or_else(|| ApiError::invalid(field, "is required"))?;
        let id = SubjectId::parse(&r.r#type, &r.value, field)?;
        let hash = self.ctx().subjects.hash(&id);
        Ok((id, hash))
    }

    pub(crate) fn access(
        &self,
        call: &CallContext,
        method: &str,
        subject: Option<(&SubjectId, &str)>,
        purpose: &str,
    ) -> AccessEvent {
        let mut e = AccessEvent::new(
            self.ctx().clock.now(),
            call.principal.name(),
            SERVICE,
            method,
            Outcome::Ok,
        );
        e.trace_id = call.trace_id.clone();
        if let Some((id, hash)) = subject {
            e.subject_type = Some(id.kind().to_string());
            e.subject_hash = Some(hash.to_string());
        }
        if !purpose.is_empty() {
            e.purpose = Some(purpose.to_string());
            e.resource = purpose_name(purpose);
        }
        e
    }

    /// Validates evidence; returns it as stored (collector set, IP truncated) and
    /// when it was collected (µs).
    async fn evidence(
        &self,
        call: &CallContext,
        e: Option<Evidence>,
        v: &mut Validator,
    ) -> Result<(Evidence, i64), ApiError> {
        let Some(mut e) = e else {
            v.add(
                "evidence",
                "is required (Art. 7(1): the controller must be able to demonstrate consent)",
            );
            return Ok((Evidence::default(), 0));
        };
        let now_us = to_micros(self.ctx().clock.now());
        let collect_us = match &e.collect_time {
            Some(t) => {
                let us = to_micros(from_timestamp(t));
                if us > now_us + SKEW_US {
                    v.add("evidence.collect_time", "is in the future");
                }
                us
            }
            None => {
                v.add("evidence.collect_time", "is required");
                0
            }
        };
        if matches!(
            pb::ConsentChannel::try_from(e.channel),
            Ok(pb::ConsentChannel::Unspecified) | Err(_)
        ) {
            v.add(
                "evidence.channel",
                "is required (web banner, form, email link, CRM import, staff, ...)",
            );
        }
        if !e.notice.is_empty() {
            match notice_ref(&e.notice) {
                None => v.add(
                    "evidence.notice",
                    "must be `notices/{notice}/versions/{version}`",
                ),
                Some((id, version)) => {
                    // A published version never changes, so once seen it is known.
                    if !self.cache.knows_notice(&e.notice) {
                        if self.store().notice(id, Some(version)).await?.is_none() {
                            return Err(ApiError::not_found("notice", e.notice.clone())
                                .in_field("evidence.notice"));
                        }
                        self.cache.remember_notice(&e.notice);
                    }
                }
            }
        }
        if !e.source_ip.is_empty() {
            match e.source_ip.parse::<IpAddr>() {
                Ok(ip) => e.source_ip = truncate_ip(ip),
                Err(_) => v.add("evidence.source_ip", "is not an IP address"),
            }
        }
        v.max_len("evidence.user_agent", &e.user_agent, 1024);
        v.max_len("evidence.form_id", &e.form_id, MAX_ID);
        v.max_len("evidence.language", &e.language, 35);
        if let Some(proof) = &e.proof
            && proof.content.len() > MAX_PROOF
        {
            v.add(
                "evidence.proof.content",
                format!("is {} bytes; the limit is {MAX_PROOF}", proof.content.len()),
            );
        }
        // The collector is whoever authenticated; a client cannot claim another.
        let user = e
            .collector
            .as_ref()
            .map(|c| c.user.clone())
            .unwrap_or_default();
        v.max_len("evidence.collector.user", &user, MAX_ID);
        e.collector = Some(Actor {
            principal: call.principal.name().to_string(),
            user,
        });
        Ok((e, collect_us))
    }

    fn new_event(
        &self,
        subject: &SubjectId,
        purpose_id: &str,
        state: ConsentState,
        evidence: &Evidence,
        request_id: &str,
    ) -> ConsentEvent {
        ConsentEvent {
            name: format!("consentEvents/{}", uuid::Uuid::now_v7().simple()),
            subject: Some(subject_out(subject)),
            purpose: purpose_name(purpose_id),
            state: state as i32,
            evidence: Some(evidence.clone()),
            record_time: Some(timestamp(self.ctx().clock.now())),
            request_id: request_id.to_string(),
            ..Default::default()
        }
    }

    /// PublishNotice.
    pub async fn publish_notice_op(
        &self,
        call: &CallContext,
        r: pb::PublishNoticeRequest,
    ) -> Result<Notice, ApiError> {
        let key = RequestKey::of(call, "PublishNotice", &r.request_id, &r);
        let mut v = Validator::new();
        v.check(
            valid_id(&r.notice_id),
            "notice_id",
            "must be 1-63 lowercase letters, digits or hyphens, starting with a letter",
        );
        v.max_len("request_id", &r.request_id, 128);
        let mut notice = r
            .notice
            .ok_or_else(|| ApiError::invalid("notice", "is required"))?;
        v.max_len("notice.title", &notice.title, MAX_ID);
        v.max_len("notice.language", &notice.language, 35);
        v.max_len("notice.change_summary", &notice.change_summary, MAX_TEXT);
        match &notice.content {
            Some(pb::notice::Content::Text(text)) => {
                if text.len() > MAX_NOTICE {
                    v.add("notice.text", "is larger than 1 MiB");
                }
                notice.content_sha256 = hex::encode(Sha256::digest(text.as_bytes()));
            }
            Some(pb::notice::Content::Uri(uri)) => {
                v.check(
                    uri.starts_with("https://") || uri.starts_with("http://"),
                    "notice.uri",
                    "must be an http(s) URL",
                );
                let ok = notice.content_sha256.len() == 64
                    && notice
                        .content_sha256
                        .chars()
                        .all(|c| c.is_ascii_hexdigit() && !c.is_ascii_uppercase());
                v.check(
                    ok,
                    "notice.content_sha256",
                    "is required with `uri`: lowercase hex SHA-256 of the document",
                );
            }
            None => v.add("notice.content", "give `text` or `uri`"),
        }
        if notice.purposes.is_empty() {
            v.add(
                "notice.purposes",
                "name at least one purpose the notice covers",
            );
        }
        let mut purpose_ids = Vec::new();
        v.max_items("notice.purposes", notice.purposes.len(), MAX_PURPOSE_FILTER);
        for (i, p) in notice.purposes.iter().enumerate().take(MAX_PURPOSE_FILTER) {
            match purpose_id(p, &format!("notice.purposes[{i}]")) {
                Ok(id) => purpose_ids.push(id.to_string()),
                Err(ApiError::InvalidArgument(list)) => {
                    list.into_iter().for_each(|f| v.add(f.field, f.description))
                }
                Err(e) => return Err(e),
            }
        }
        v.finish()?;
        for (i, id) in purpose_ids.iter().enumerate() {
            if self.store().purpose(id).await?.is_none() {
                return Err(ApiError::invalid(
                    format!("notice.purposes[{i}]"),
                    format!("purposes/{id} is not in the register"),
                ));
            }
        }
        let now = self.ctx().clock.now();
        notice.publish_time = Some(timestamp(now));
        notice.publisher = Some(Actor {
            principal: call.principal.name().to_string(),
            user: String::new(),
        });
        if notice.effective_time.is_none() {
            notice.effective_time = Some(timestamp(now));
        }
        let published = self
            .store()
            .publish_notice(
                &r.notice_id,
                notice,
                &purpose_ids,
                key.as_ref(),
                to_micros(now),
            )
            .await;
        self.cache.forget_register();
        published
    }

    /// GetNotice: `notices/{id}/versions/{v}` or `notices/{id}/versions/latest`.
    pub async fn get_notice_op(&self, name: &str) -> Result<Notice, ApiError> {
        let bad = || {
            ApiError::invalid(
                "name",
                "must be `notices/{notice}/versions/{version}` or `.../versions/latest`",
            )
        };
        let rest = name.strip_prefix("notices/").ok_or_else(bad)?;
        let (id, version) = rest.split_once("/versions/").ok_or_else(bad)?;
        if !valid_id(id) {
            return Err(bad());
        }
        let version = match version {
            "latest" => None,
            v => Some(v.parse::<i64>().map_err(|_| bad())?),
        };
        self.store()
            .notice(id, version)
            .await?
            .ok_or_else(|| ApiError::not_found("notice", name.to_string()).in_field("name"))
    }

    /// Checks Art. 8: a grant for a child below the digital age of consent needs a guardian.
    fn check_age(
        &self,
        r: &pb::RecordConsentRequest,
        purpose: &Purpose,
        pid: &str,
        now: DateTime<Utc>,
    ) -> Result<(), ApiError> {
        let Some(age) = &r.age else { return Ok(()) };
        // No country given: the institution's jurisdiction (`legal.jurisdiction`).
        let country = match age.country_code.as_str() {
            "" => self.ctx().calendar.jurisdiction().code(),
            code => code,
        };
        let threshold = purpose.digital_consent_age.unwrap_or_else(|| {
            consent_age(country, &self.ctx().config.consent.digital_consent_ages)
        });
        let years = match &age.age {
            Some(Age::BirthDate(text)) => {
                let born = NaiveDate::parse_from_str(text, "%Y-%m-%d")
                    .map_err(|_| ApiError::invalid("age.birth_date", "must be YYYY-MM-DD"))?;
                let today = now.date_naive();
                if born > today {
                    return Err(ApiError::invalid("age.birth_date", "is in the future"));
                }
                let mut y = today.year() - born.year();
                if (today.month(), today.day()) < (born.month(), born.day()) {
                    y -= 1;
                }
                Some(y)
            }
            Some(Age::AgeYears(y)) if (0..=150).contains(y) => Some(*y),
            Some(Age::AgeYears(_)) => {
                return Err(ApiError::invalid(
                    "age.age_years",
                    "must be between 0 and 150",
                ));
            }
            Some(Age::AtOrAboveConsentAge(true)) | None => None,
            Some(Age::AtOrAboveConsentAge(false)) => Some(-1),
        };
        if let Some(y) = years
            && y < threshold
            && r.guardian.is_none()
        {
            let age_text = if y < 0 {
                "below the age".to_string()
            } else {
                format!("{y}")
            };
            return Err(ApiError::precondition(
                "GUARDIAN_CONSENT_REQUIRED",
                format!(
                    "the subject is {age_text}, under the digital age of consent ({threshold}) for purposes/{pid}: \
                     a parent's or guardian's consent is required (GDPR Art. 8); send it in `guardian`"
                ),
            ));
        }
        Ok(())
    }

    /// Whether decision `i` (granted or denied, of purpose `pid`) may be recorded:
    /// what the register forbids (K-1, retired purposes), C-6 and Art. 8.
    #[allow(clippy::too_many_arguments)]
    fn decision_allowed(
        &self,
        i: usize,
        granted: bool,
        pid: &str,
        cached: &CachedPurpose,
        evidence: &Evidence,
        collect_us: i64,
        r: &pb::RecordConsentRequest,
        now: DateTime<Utc>,
    ) -> Result<(), ApiError> {
        let purpose = &cached.purpose;
        if !granted && purpose.category == pb::PurposeCategory::StrictlyNecessary as i32 {
            return Err(ApiError::invalid(
                format!("decisions[{i}].decision"),
                format!("purposes/{pid} is strictly necessary (K-1): it cannot be refused"),
            ));
        }
        if !granted {
            return Ok(());
        }
        if purpose.state == pb::PurposeState::Retired as i32 {
            return Err(ApiError::precondition(
                "PURPOSE_RETIRED",
                format!("purposes/{pid} is retired: new grants are refused (its history is kept)"),
            ));
        }
        if purpose.lawful_basis == LawfulBasis::Consent as i32 {
            if evidence.notice.is_empty() {
                return Err(ApiError::invalid(
                    "evidence.notice",
                    "is required to grant a consent-based purpose (which notice was shown)",
                ));
            }
            superseded_notice(&evidence.notice, cached, collect_us, pid)?;
        }
        self.check_age(r, purpose, pid, now)
    }

    /// `refusal`, unless the call retries one that was recorded (an earlier call
    /// with its `request_id` stored events): then that call's answer, as the
    /// idempotency of RecordConsent promises, even if the register changed since
    /// (a purpose retired, a notice superseded).
    async fn refused_unless_replayed(
        &self,
        key: Option<&RequestKey>,
        refusal: ApiError,
    ) -> Result<pb::RecordConsentResponse, ApiError> {
        let Some(key) = key else {
            return Err(refusal);
        };
        match self.store().replay_of(key).await? {
            Some(events) if !events.is_empty() => {
                let receipt = self.stored_receipt(&events, None).await?;
                Ok(pb::RecordConsentResponse { events, receipt })
            }
            _ => Err(refusal),
        }
    }

    /// RecordConsent.
    pub async fn record_consent_op(
        &self,
        call: &CallContext,
        r: pb::RecordConsentRequest,
    ) -> Result<pb::RecordConsentResponse, ApiError> {
        let key = RequestKey::of(call, "RecordConsent", &r.request_id, &r);
        let mut v = Validator::new();
        let (subject, hash) = self.subject(r.subject.as_ref(), "subject")?;
        v.max_len("request_id", &r.request_id, 128);
        if r.decisions.is_empty() {
            v.add("decisions", "at least one decision is required");
        }
        if r.decisions.len() > 100 {
            v.add("decisions", "at most 100 decisions per call");
        }
        let guardian = match &r.guardian {
            Some(g) => {
                let gid = SubjectId::parse(
                    g.guardian
                        .as_ref()
                        .map(|s| s.r#type.as_str())
                        .unwrap_or_default(),
                    g.guardian
                        .as_ref()
                        .map(|s| s.value.as_str())
                        .unwrap_or_default(),
                    "guardian.guardian",
                )?;
                v.max_len("guardian.relationship", &g.relationship, MAX_ID);
                v.max_len("guardian.verification", &g.verification, MAX_TEXT);
                Some(pb::GuardianConsent {
                    guardian: Some(subject_out(&gid)),
                    relationship: g.relationship.clone(),
                    verification: g.verification.clone(),
                })
            }
            None => None,
        };
        let (evidence, collect_us) = self.evidence(call, r.evidence.clone(), &mut v).await?;
        let mut decisions = Vec::new();
        let mut seen = std::collections::HashSet::new();
        for (i, d) in r.decisions.iter().enumerate() {
            let decision = Decision::try_from(d.decision).unwrap_or_default();
            if decision == Decision::Unspecified {
                v.add(
                    format!("decisions[{i}].decision"),
                    "must be GRANTED or DENIED",
                );
            }
            match purpose_id(&d.purpose, &format!("decisions[{i}].purpose")) {
                Ok(id) => {
                    if !seen.insert(id) {
                        v.add(
                            format!("decisions[{i}].purpose"),
                            "is decided twice in this call",
                        );
                    }
                    decisions.push((i, d.purpose.clone(), decision));
                }
                Err(ApiError::InvalidArgument(list)) => {
                    list.into_iter().for_each(|f| v.add(f.field, f.description))
                }
                Err(e) => return Err(e),
            }
        }
        v.finish()?;
        let now = self.ctx().clock.now();
        let mut records = Vec::new();
        for (i, name, decision) in decisions {
            let (pid, cached) = self
                .check_purpose(&name, &format!("decisions[{i}].purpose"))
                .await?;
            let purpose = cached.purpose.clone();
            let granted = decision == Decision::Granted;
            let allowed =
                self.decision_allowed(i, granted, &pid, &cached, &evidence, collect_us, &r, now);
            if let Err(refusal) = allowed {
                return self.refused_unless_replayed(key.as_ref(), refusal).await;
            }
            let expire_us = if granted {
                expiry(&purpose, collect_us)
            } else {
                None
            };
            let state = if granted {
                ConsentState::Granted
            } else {
                ConsentState::Denied
            };
            let mut event = self.new_event(&subject, &pid, state, &evidence, &r.request_id);
            event.guardian = guardian.clone();
            event.age = r.age.clone();
            event.expire_time = expire_us.map(|us| timestamp(from_micros(us)));
            records.push(NewRecord {
                subject_hash: hash.clone(),
                purpose_id: pid,
                event,
                decision_us: collect_us,
                expire_us,
            });
        }
        let receipt = self
            .receipt_for(&subject, r.guardian.as_ref(), &evidence, &mut records)
            .await?;
        let purposes: Vec<_> = records.iter().map(|r| r.purpose_id.as_str()).collect();
        let mut access = self.access(
            call,
            "RecordConsent",
            Some((&subject, &hash)),
            purposes.first().copied().unwrap_or_default(),
        );
        access.detail = serde_json::json!({ "purposes": purposes }).to_string();
        let id = receipt::id_of(&receipt.name)
            .unwrap_or_default()
            .to_string();
        let body = prost::Message::encode_to_vec(&receipt);
        let events = self
            .store()
            .record(
                key.as_ref(),
                &records,
                Some((&id, &hash, body)),
                &access,
                to_micros(now),
            )
            .await?;
        self.cache.forget(&hash);
        self.ctx().outbox.wake();
        self.notify_changed();
        let receipt = self.stored_receipt(&events, Some(receipt)).await?;
        Ok(pb::RecordConsentResponse { events, receipt })
    }

    /// WithdrawConsent and RecordObjection share this: set `state` on purposes.
    #[allow(clippy::too_many_arguments)]
    pub async fn withdraw_or_object(
        &self,
        call: &CallContext,
        method: &str,
        subject: Option<&SubjectRef>,
        purposes: &[String],
        all_purposes: bool,
        direct_marketing: bool,
        evidence: Option<Evidence>,
        reason: &str,
        request_id: &str,
        key: Option<&RequestKey>,
        state: ConsentState,
    ) -> Result<(Vec<ConsentEvent>, Option<pb::ConsentReceipt>), ApiError> {
        let mut v = Validator::new();
        let (subject, hash) = self.subject(subject, "subject")?;
        v.max_len("request_id", request_id, 128);
        v.max_len("reason", reason, MAX_TEXT);
        if purposes.is_empty() && !all_purposes && !direct_marketing {
            v.add(
                "purposes",
                "name the purposes (or set all_purposes / direct_marketing)",
            );
        }
        let mut ids = Vec::new();
        v.max_items("purposes", purposes.len(), MAX_PURPOSES);
        for (i, p) in purposes.iter().enumerate().take(MAX_PURPOSES) {
            match purpose_id(p, &format!("purposes[{i}]")) {
                Ok(id) => ids.push(id.to_string()),
                Err(ApiError::InvalidArgument(list)) => {
                    list.into_iter().for_each(|f| v.add(f.field, f.description))
                }
                Err(e) => return Err(e),
            }
        }
        let (evidence, collect_us) = self.evidence(call, evidence, &mut v).await?;
        v.finish()?;
        let necessary = |p: &Purpose| p.category == pb::PurposeCategory::StrictlyNecessary as i32;
        for (i, p) in purposes.iter().enumerate() {
            let (pid, cached) = self.check_purpose(p, &format!("purposes[{i}]")).await?;
            if necessary(&cached.purpose) {
                return Err(ApiError::invalid(
                    format!("purposes[{i}]"),
                    format!(
                        "purposes/{pid} is strictly necessary (K-1): it cannot be withdrawn from or objected to"
                    ),
                ));
            }
        }
        if all_purposes {
            for s in self
                .store()
                .subject_states(std::slice::from_ref(&hash))
                .await?
            {
                if s.0 == DIRECT_MARKETING || ids.contains(&s.0) {
                    continue;
                }
                // Every purpose the subject decided on, but the necessary ones.
                let keep = match self
                    .check_purpose(&purpose_name(&s.0), "all_purposes")
                    .await
                {
                    Ok((_, cached)) => !necessary(&cached.purpose),
                    Err(ApiError::NotFound { .. }) => true,
                    Err(e) => return Err(e),
                };
                if keep {
                    ids.push(s.0);
                }
            }
        }
        if direct_marketing {
            ids.push(DIRECT_MARKETING.to_string());
        }
        let now = self.ctx().clock.now();
        let mut records: Vec<_> = ids
            .iter()
            .map(|pid| {
                let mut event = self.new_event(&subject, pid, state, &evidence, request_id);
                event.reason = reason.to_string();
                if pid == DIRECT_MARKETING {
                    event.purpose = "purposes/-".into();
                }
                NewRecord {
                    subject_hash: hash.clone(),
                    purpose_id: pid.clone(),
                    event,
                    decision_us: collect_us,
                    expire_us: None,
                }
            })
            .collect();
        let access = self.access(
            call,
            method,
            Some((&subject, &hash)),
            ids.first().map(String::as_str).unwrap_or_default(),
        );
        // Withdrawals get a receipt (the subject's proof of withdrawing); objections do not.
        let issued = if state == ConsentState::Withdrawn && !records.is_empty() {
            Some(
                self.receipt_for(&subject, None, &evidence, &mut records)
                    .await?,
            )
        } else {
            None
        };
        let receipt = issued.as_ref().map(|r| {
            let id = receipt::id_of(&r.name).unwrap_or_default().to_string();
            (id, prost::Message::encode_to_vec(r))
        });
        let events = self
            .store()
            .record(
                key,
                &records,
                receipt
                    .as_ref()
                    .map(|(id, body)| (id.as_str(), hash.as_str(), body.clone())),
                &access,
                to_micros(now),
            )
            .await?;
        self.cache.forget(&hash);
        self.ctx().outbox.wake();
        self.notify_changed();
        let receipt = self.stored_receipt(&events, issued).await?;
        Ok((events, receipt))
    }

    /// Issues the receipt for `records` and links each event to it.
    async fn receipt_for(
        &self,
        subject: &SubjectId,
        guardian: Option<&pb::GuardianConsent>,
        evidence: &Evidence,
        records: &mut [NewRecord],
    ) -> Result<pb::ConsentReceipt, ApiError> {
        self.store_receipt_key(to_micros(self.ctx().clock.now()))
            .await?;
        let id = uuid::Uuid::now_v7().simple().to_string();
        let mut purposes = Vec::new();
        for r in records.iter() {
            // The direct-marketing objection names no registered purpose.
            let p = match self.cache.purpose(&r.purpose_id) {
                Ok(cached) => cached.purpose,
                Err(_) => Arc::new(
                    self.store()
                        .purpose(&r.purpose_id)
                        .await?
                        .map(|s| s.purpose)
                        .unwrap_or_default(),
                ),
            };
            purposes.push(p);
        }
        let lines = records
            .iter()
            .zip(&purposes)
            .map(|(r, p)| receipt::Line {
                name: r.event.purpose.clone(),
                purpose: p,
                state: ConsentState::try_from(r.event.state).unwrap_or_default(),
                expires: r.expire_us.map(|us| from_micros(us).to_rfc3339()),
            })
            .collect();
        let facts = receipt::Facts {
            id: id.clone(),
            jurisdiction: self.ctx().calendar.jurisdiction().code(),
            consent_time: evidence.collect_time.unwrap_or_default(),
            channel: evidence.channel,
            subject: SubjectRef {
                r#type: subject.kind().to_string(),
                value: subject.value().to_string(),
            },
            language: evidence.language.clone(),
            notice: evidence.notice.clone(),
            events: records.iter().map(|r| r.event.name.clone()).collect(),
            guardian: guardian.and_then(|g| g.guardian.clone()),
            lines,
        };
        let issued = receipt::issue(&self.ctx().config, self.receipt_key(), facts);
        for r in records.iter_mut() {
            r.event.receipt = receipt::name(&id);
        }
        Ok(issued)
    }

    /// The receipt the first event links to: `issued` when this call's write went
    /// in, else (an idempotent replay) the first call's, as stored.
    async fn stored_receipt(
        &self,
        events: &[ConsentEvent],
        issued: Option<pb::ConsentReceipt>,
    ) -> Result<Option<pb::ConsentReceipt>, ApiError> {
        let Some(name) = events.first().map(|e| e.receipt.as_str()) else {
            return Ok(None);
        };
        if let Some(issued) = issued.filter(|r| r.name == name) {
            return Ok(Some(issued));
        }
        match receipt::id_of(name) {
            None => Ok(None),
            Some(id) => self.store().receipt(id).await,
        }
    }

    /// CheckConsent: may we, for this subject and purpose, now?
    pub async fn check(
        &self,
        call: &CallContext,
        subject: Option<&SubjectRef>,
        purpose: &str,
        method: &str,
    ) -> Result<CheckResult, ApiError> {
        let subject = self.subject(subject, "subject")?;
        let mut results = self
            .check_many(call, std::slice::from_ref(&subject), purpose, method)
            .await?;
        Ok(results.pop().expect("one result per subject"))
    }

    /// The subjects of a BatchCheckConsent, validated (`subjects[i]` named on error).
    pub fn batch_subjects(
        &self,
        refs: &[SubjectRef],
    ) -> Result<Vec<(SubjectId, String)>, ApiError> {
        crate::par::map(refs, |i, r| {
            self.subject(Some(r), &format!("subjects[{i}]"))
        })
        .into_iter()
        .collect()
    }

    /// Checks one purpose for several subjects: states from the cache or one query
    /// for the misses, and one access event per subject, all written in one
    /// transaction before the answer. Each subject counts against the caller's
    /// quota of access events.
    pub async fn check_many(
        &self,
        call: &CallContext,
        subjects: &[(SubjectId, String)],
        purpose: &str,
        method: &str,
    ) -> Result<Vec<CheckResult>, ApiError> {
        let (pid, cached) = self.check_purpose(purpose, "purpose").await?;
        self.ctx()
            .quota
            .take(call.principal.name(), subjects.len())?;
        let now = self.ctx().clock.now();
        let now_us = to_micros(now);
        let material = cached.material_at(now_us);

        let mut states: Vec<Option<CachedState>> = vec![None; subjects.len()];
        let mut misses = Vec::new();
        let key = self.cache.purpose_key(&pid);
        let cached_states = crate::par::map(subjects, |_, (_, hash)| self.cache.state(hash, &key));
        for (i, state) in cached_states.into_iter().enumerate() {
            match state {
                Ok(state) => states[i] = Some(state),
                Err(ticket) => misses.push((i, ticket)),
            }
        }
        if !misses.is_empty() {
            let hashes: Vec<&str> = misses
                .iter()
                .map(|(i, _)| subjects[*i].1.as_str())
                .collect();
            let found = self.store().states_together(&hashes, &pid).await?;
            for (i, ticket) in misses {
                let hash = &subjects[i].1;
                let state = found.get(hash).cloned().unwrap_or_default();
                self.cache.fill(ticket, hash, &pid, state.clone());
                states[i] = Some(state);
            }
        }

        // One event per subject, all of one call: stored together.
        let mut access = EventBatch::new(self.access(call, method, None, &pid));
        for (id, hash) in subjects {
            access.push(id.kind(), hash);
        }
        // The events are written while the answer is built, and the answer waits
        // for them: polled once, the enqueue has queued them and, when no other
        // group is being written, handed them to a writer task.
        let mut written = std::pin::pin!(self.ctx().outbox.enqueue_batch(access));
        let early = futures::poll!(written.as_mut());

        let p = &cached.purpose;
        let purpose = purpose_name(&pid);
        let check_time = timestamp(now);
        let results = crate::par::map(subjects, |i, (id, _)| {
            let (row, objected_dm) = states[i]
                .as_ref()
                .map_or((None, false), |(r, o)| (r.as_ref(), *o));
            let verdict = decision::decide(p, row, objected_dm, material, now_us);
            CheckResult {
                subject: Some(subject_out(id)),
                purpose: purpose.clone(),
                allowed: verdict.allowed,
                reason: verdict.reason as i32,
                lawful_basis: p.lawful_basis,
                expire_time: row
                    .filter(|_| verdict.allowed)
                    .and_then(|r: &StateRow| r.expire_us)
                    .map(|us| timestamp(from_micros(us))),
                consent_event: String::new(),
                check_time: Some(check_time),
            }
        });
        match early {
            std::task::Poll::Ready(r) => r,
            std::task::Poll::Pending => written.await,
        }
        .map_err(ApiError::internal)?;
        Ok(results)
    }

    /// The purpose a check is about, from the cache when fresh.
    async fn check_purpose(
        &self,
        name: &str,
        field: &str,
    ) -> Result<(String, CachedPurpose), ApiError> {
        let id = purpose_id(name, field)?.to_string();
        match self.cache.purpose(&id) {
            Ok(cached) => Ok((id, cached)),
            Err(ticket) => {
                let stored = self.store().purpose(&id).await?.ok_or_else(|| {
                    ApiError::not_found("purpose", purpose_name(&id)).in_field(field)
                })?;
                let material = self.store().material_notices(&id).await?;
                let cached = CachedPurpose::new(stored.purpose, material);
                self.cache.fill_purpose(ticket, &id, cached.clone());
                Ok((id, cached))
            }
        }
    }

    /// ListSubjectConsents: the current state per purpose of the subjects `ids`
    /// (from [`Self::subjects`]), each with its position (the identifier's index,
    /// the purpose id), in that order.
    pub async fn subject_consents(
        &self,
        call: &CallContext,
        ids: &[(SubjectId, String)],
    ) -> Result<Vec<((usize, String), SubjectConsent)>, ApiError> {
        let now_us = to_micros(self.ctx().clock.now());
        let mut out = Vec::new();
        for (index, (_, hash)) in ids.iter().enumerate() {
            self.states_of(hash, index, now_us, &mut out).await?;
        }
        for (id, hash) in ids {
            self.ctx()
                .outbox
                .enqueue(&self.access(call, "ListSubjectConsents", Some((id, hash)), ""))
                .await
                .map_err(ApiError::internal)?;
        }
        Ok(out)
    }

    /// The states of subject `hash` (identifier `index`), appended to `out`.
    async fn states_of(
        &self,
        hash: &str,
        index: usize,
        now_us: i64,
        out: &mut Vec<((usize, String), SubjectConsent)>,
    ) -> Result<(), ApiError> {
        for (pid, decision_us, expire_us, event) in
            self.store().subject_states(&[hash.to_string()]).await?
        {
            let material = if pid == DIRECT_MARKETING {
                None
            } else {
                self.store().material_notice_us(&pid, now_us).await?
            };
            let reconfirm = event.state == ConsentState::Granted as i32
                && material.is_some_and(|m| m > decision_us);
            out.push((
                (index, pid),
                subject_consent(&event, decision_us, expire_us, reconfirm),
            ));
        }
        Ok(())
    }

    /// Validated identifiers with their hashes.
    pub fn subjects(&self, refs: &[SubjectRef]) -> Result<Vec<(SubjectId, String)>, ApiError> {
        if refs.is_empty() {
            return Err(ApiError::invalid(
                "subject_identifiers",
                "at least one identifier is required",
            ));
        }
        let mut v = Validator::new();
        v.max_items("subject_identifiers", refs.len(), MAX_SUBJECT_IDENTIFIERS);
        v.finish()?;
        refs.iter()
            .enumerate()
            .map(|(i, r)| self.subject(Some(r), &format!("subject_identifiers[{i}]")))
            .collect()
    }
}

/// When a grant made at `collect_us` lapses: the re-consent interval or the cookie
/// lifetime, whichever comes first (C-5, K-3).
pub fn expiry(p: &Purpose, collect_us: i64) -> Option<i64> {
    let at = from_micros(collect_us);
    [&p.reconsent_interval, &p.cookie_lifetime]
        .into_iter()
        .filter_map(|text| text.parse::<CalendarPeriod>().ok())
        .map(|period| to_micros(period.after(at)))
        .min()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ips_are_truncated() {
        assert_eq!(truncate_ip("192.0.2.77".parse().unwrap()), "192.0.2.0/24");
        assert_eq!(
            truncate_ip("2001:db8:abcd:12::1".parse().unwrap()),
            "2001:db8:abcd::/48"
        );
    }

    #[test]
    fn ages_and_expiry() {
        let none = std::collections::BTreeMap::new();
        assert_eq!(consent_age("FR", &none), 15);
        assert_eq!(consent_age("fr", &none), 15);
        assert_eq!(consent_age("LU", &none), 16);
        assert_eq!(consent_age("BE", &none), 13);
        let configured =
            std::collections::BTreeMap::from([("fr".to_string(), 14), ("DE".to_string(), 13)]);
        assert_eq!(consent_age("FR", &configured), 14);
        assert_eq!(consent_age("de", &configured), 13);
        assert_eq!(consent_age("BE", &configured), 13);
        let p = Purpose {
            reconsent_interval: "P1Y".into(),
            cookie_lifetime: "P6M".into(),
            ..Default::default()
        };
        let t = to_micros("2026-01-31T00:00:00Z".parse().unwrap());
        assert_eq!(
            from_micros(expiry(&p, t).unwrap()).to_rfc3339(),
            "2026-07-31T00:00:00+00:00"
        );
        assert_eq!(expiry(&Purpose::default(), t), None);
    }
}
