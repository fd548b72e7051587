//! The evidence of a decision (Art. 7(1): the controller must be able to
//! demonstrate consent), validated as it is stored.

use std::net::IpAddr;

use custodia_core::{
    storage::to_micros,
    validate::{MAX_ID, Validator},
};
use custodia_proto::{
    common::v1::Actor,
    consent::v1::{self as pb, Evidence},
};

use crate::{notices::notice_ref, register::from_timestamp};

/// Largest proof payload kept with a decision.
const MAX_PROOF: usize = 64 * 1024;
/// Tolerated clock skew for evidence times.
const SKEW_US: i64 = 60_000_000;

/// A notice version that evidence names: (its name, notice id, version).
pub(crate) type NoticeShown<'e> = (&'e str, &'e str, i64);

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

/// Validates `e` into `v` and makes it what is stored: the collector is
/// `principal` (whoever authenticated; a client cannot claim another), the
/// source IP truncated. Returns when it was collected (µs) and the notice
/// version it names, whose existence the caller checks.
pub(crate) fn check_evidence<'e>(
    e: &'e mut Evidence,
    principal: &str,
    now_us: i64,
    v: &mut Validator,
) -> (i64, Option<NoticeShown<'e>>) {
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
    let mut shown = None;
    if !e.notice.is_empty() {
        match notice_ref(&e.notice) {
            None => v.add(
                "evidence.notice",
                "must be `notices/{notice}/versions/{version}`",
            ),
            Some((id, version)) => shown = Some((e.notice.as_str(), id, version)),
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
    let user = e
        .collector
        .as_ref()
        .map(|c| c.user.clone())
        .unwrap_or_default();
    v.max_len("evidence.collector.user", &user, MAX_ID);
    e.collector = Some(Actor {
        principal: principal.to_string(),
        user,
    });
    (collect_us, shown)
}

#[cfg(test)]
mod tests {
    use crate::test_support::violations;
    use custodia_proto::common::v1::Document;

    use super::*;

    #[test]
    fn ips_are_truncated() {
        assert_eq!(truncate_ip("192.0.2.77".parse().unwrap()), "192.0.2.0/24");
        assert_eq!(
            truncate_ip("2001:db8:abcd:12::1".parse().unwrap()),
            "2001:db8:abcd::/48"
        );
    }

    fn at(seconds: i64) -> prost_types::Timestamp {
        prost_types::Timestamp { seconds, nanos: 0 }
    }

    #[test]
    fn evidence_as_stored() {
        let mut e = Evidence {
            collect_time: Some(at(100)),
            channel: pb::ConsentChannel::WebForm as i32,
            notice: "notices/privacy/versions/2".into(),
            source_ip: "192.0.2.77".into(),
            collector: Some(Actor {
                principal: "someone-else".into(),
                user: "clerk".into(),
            }),
            ..Default::default()
        };
        let mut v = Validator::new();
        let (collect_us, shown) = check_evidence(&mut e, "crm", 100_000_000, &mut v);
        assert_eq!(collect_us, 100_000_000);
        assert_eq!(shown, Some(("notices/privacy/versions/2", "privacy", 2)));
        assert!(violations(&mut v).is_empty());
        assert_eq!(e.source_ip, "192.0.2.0/24");
        let collector = e.collector.unwrap();
        assert_eq!(
            (collector.principal.as_str(), collector.user.as_str()),
            ("crm", "clerk")
        );
    }

    #[test]
    fn evidence_violations_in_field_order() {
        let mut e = Evidence {
            collect_time: Some(at(1_000)),
            notice: "privacy".into(),
            source_ip: "not an ip".into(),
            proof: Some(Document {
                content: vec![0; MAX_PROOF + 1],
                ..Default::default()
            }),
            ..Default::default()
        };
        let mut v = Validator::new();
        let (_, shown) = check_evidence(&mut e, "crm", 0, &mut v);
        assert_eq!(shown, None);
        assert_eq!(
            violations(&mut v),
            [
                "evidence.collect_time",
                "evidence.channel",
                "evidence.notice",
                "evidence.source_ip",
                "evidence.proof.content"
            ]
        );
    }
}
