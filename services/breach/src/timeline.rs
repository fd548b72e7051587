//! AddTimelineEntry and ListTimelineEntries: what was done about a breach and
//! found, in order. Callers add containment, evidence, findings,
//! remediation and notes; SYSTEM entries are custodia's own.

use chrono::{DateTime, Utc};
use custodia_core::{
    ApiError, auth::CallContext, fields::optional_time, idempotency::RequestKey, pagination,
    proto_time::timestamp, storage::to_micros, validate::MAX_TEXT,
};
use custodia_proto::breach::v1::{self as pb, TimelineEntryKind};

use crate::{
    api::{Api, breach_id, named_change, required, resource},
    model::actor,
    state,
    store::{Done, Write},
};

/// Most pieces of evidence of one entry.
const MAX_EVIDENCE: usize = 50;

/// Checks an AddTimelineEntry at `now`: the breach's id, the entry and when
/// it happened (now when unset).
pub(crate) fn validate_add_entry(
    r: &pb::AddTimelineEntryRequest,
    now: DateTime<Utc>,
) -> Result<(String, pb::TimelineEntry, DateTime<Utc>), ApiError> {
    let (id, mut v) = named_change("parent", &r.parent, &r.request_id)?;
    let e = required(&r.entry, "entry")?;
    match TimelineEntryKind::try_from(e.kind) {
        Ok(TimelineEntryKind::Unspecified) | Err(_) => v.add(
            "entry.kind",
            "must be CONTAINMENT, EVIDENCE_PRESERVED, FINDING, REMEDIATION or NOTE",
        ),
        Ok(TimelineEntryKind::System) => {
            v.add("entry.kind", "SYSTEM entries are written by custodia only")
        }
        Ok(_) => {}
    }
    v.required("entry.description", &e.description, MAX_TEXT);
    let occur = optional_time(&mut v, "entry.occur_time", e.occur_time.as_ref(), Some(now));
    if e.evidence.len() > MAX_EVIDENCE {
        v.add("entry.evidence", "has more than 50 entries");
    }
    for (i, x) in e.evidence.iter().enumerate().take(MAX_EVIDENCE) {
        let f = |n: &str| format!("entry.evidence[{i}].{n}");
        if x.description.trim().is_empty() && x.location.trim().is_empty() {
            v.add(f("description"), "is required (or a location)");
        }
        v.max_len(&f("description"), &x.description, MAX_TEXT);
        v.max_len(&f("location"), &x.location, MAX_TEXT);
        let hex = |c: char| c.is_ascii_digit() || ('a'..='f').contains(&c);
        if !x.sha256.is_empty() && (x.sha256.len() != 64 || !x.sha256.chars().all(hex)) {
            v.add(f("sha256"), "must be 64 lowercase hex digits");
        }
    }
    v.finish()?;
    Ok((id, e.clone(), occur.unwrap_or(now)))
}

/// The sequence number at the end of an entry name.
fn entry_seq(name: &str) -> Result<i64, ApiError> {
    name.rsplit('/')
        .next()
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| ApiError::internal(anyhow::anyhow!("bad entry name {name:?}")))
}

impl Api {
    /// AddTimelineEntry: returns the entry as stored (named, timed).
    pub(crate) async fn add_entry(
        &self,
        call: &CallContext,
        r: pb::AddTimelineEntryRequest,
    ) -> Result<pb::TimelineEntry, ApiError> {
        let key = RequestKey::of(call, "AddTimelineEntry", &r.request_id, &r);
        let now = self.clock.now();
        let (id, e, occur) = validate_add_entry(&r, now)?;
        let entry = pb::TimelineEntry {
            name: String::new(),
            kind: e.kind,
            occur_time: Some(timestamp(occur)),
            description: e.description,
            evidence: e.evidence,
            author: Some(actor(call.principal.name())),
            create_time: None,
        };
        let event = self.event(call, "AddTimelineEntry", resource(&id));
        let done = self
            .store
            .change(&id, key.as_ref(), &event, to_micros(now), move |b| {
                state::require_open(b, "have its timeline extended")?;
                Ok(vec![Write::Timeline(Box::new(entry))])
            })
            .await?;
        let name = match done {
            Done::Applied(mut names) => names.pop().unwrap_or_default(),
            Done::Replayed(name) => name,
        };
        let seq = entry_seq(&name)?;
        self.store
            .timeline_entry(&id, seq)
            .await?
            .ok_or_else(|| ApiError::not_found("timeline entry", name))
    }

    /// ListTimelineEntries: oldest first.
    pub(crate) async fn list_timeline(
        &self,
        call: &CallContext,
        r: pb::ListTimelineEntriesRequest,
    ) -> Result<pb::ListTimelineEntriesResponse, ApiError> {
        let id = breach_id("parent", &r.parent)?;
        let size = pagination::page_size_or(r.page_size, 100)?;
        let after: i64 = pagination::decode(&r.page_token, &r.parent)?.unwrap_or(0);
        self.load(&id).await?;
        let mut entries = self.store.timeline(&id, after, size + 1).await?;
        let next =
            (entries.len() > size).then(|| pagination::encode(&entries[size - 1].0, &r.parent));
        entries.truncate(size);
        self.record_read(call, "ListTimelineEntries", resource(&id))
            .await?;
        Ok(pb::ListTimelineEntriesResponse {
            entries: entries.into_iter().map(|(_, e)| e).collect(),
            next_page_token: next.unwrap_or_default(),
        })
    }
}

#[cfg(test)]
mod tests {
    use custodia_core::fields::violated_fields;

    use super::*;

    use crate::api::test_now as now;

    #[test]
    fn callers_write_no_system_entries_and_hash_evidence_in_hex() {
        let mut r = pb::AddTimelineEntryRequest {
            parent: "breaches/abc".into(),
            entry: Some(pb::TimelineEntry {
                kind: TimelineEntryKind::System as i32,
                description: "found it".into(),
                evidence: vec![pb::EvidenceReference {
                    location: "s3://bucket/log".into(),
                    sha256: "ABC".into(),
                    ..Default::default()
                }],
                ..Default::default()
            }),
            ..Default::default()
        };
        assert_eq!(
            violated_fields(&validate_add_entry(&r, now())),
            ["entry.kind", "entry.evidence[0].sha256"]
        );
        let e = r.entry.as_mut().unwrap();
        e.kind = TimelineEntryKind::Finding as i32;
        e.evidence[0].sha256 = "a".repeat(64);
        let (id, _, occur) = validate_add_entry(&r, now()).unwrap();
        assert_eq!((id.as_str(), occur), ("abc", now()));
    }

    #[test]
    fn entry_names_end_in_their_sequence_number() {
        assert_eq!(entry_seq("breaches/abc/timelineEntries/12").unwrap(), 12);
        assert!(matches!(
            entry_seq("breaches/abc"),
            Err(ApiError::Internal(_))
        ));
    }
}
