//! Notices over the API: PublishNotice, GetNotice and ListNotices. A notice is
//! published in versions; consents name the version shown (`evidence.notice`).

use custodia_core::{
    ApiError,
    auth::CallContext,
    idempotency::{MAX_REQUEST_ID, RequestKey},
    pagination,
    storage::to_micros,
    validate::{MAX_ID, MAX_TEXT, Validator},
};
use custodia_proto::{
    common::v1::Actor,
    consent::v1::{self as pb, Notice},
};
use sha2::{Digest, Sha256};

use crate::{
    api::{Api, MAX_PURPOSE_FILTER},
    register::{check_id, checked_purpose_id, purpose_id, timestamp, valid_id},
};

/// Largest notice text.
const MAX_NOTICE: usize = 1024 * 1024;

/// The notice id and version of `notices/{id}/versions/{version}`.
pub(crate) fn notice_ref(name: &str) -> Option<(&str, i64)> {
    let rest = name.strip_prefix("notices/")?;
    let (id, version) = rest.split_once("/versions/")?;
    (valid_id(id)).then_some(())?;
    Some((id, version.parse().ok().filter(|v: &i64| *v > 0)?))
}

/// A PublishNoticeRequest, validated: the notice id, the notice (with the
/// SHA-256 of its text) and the ids of the purposes it covers.
fn validate_publish(
    r: pb::PublishNoticeRequest,
) -> Result<(String, Notice, Vec<String>), ApiError> {
    let mut v = Validator::new();
    check_id(&mut v, "notice_id", &r.notice_id);
    v.max_len("request_id", &r.request_id, MAX_REQUEST_ID);
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
        if let Some(id) = checked_purpose_id(&mut v, p, &format!("notice.purposes[{i}]")) {
            purpose_ids.push(id.to_string());
        }
    }
    v.finish()?;
    Ok((r.notice_id, notice, purpose_ids))
}

/// PublishNotice.
pub(crate) async fn publish(
    api: &Api,
    call: &CallContext,
    r: pb::PublishNoticeRequest,
) -> Result<pb::PublishNoticeResponse, ApiError> {
    let key = RequestKey::of(call, "PublishNotice", &r.request_id, &r);
    let (notice_id, mut notice, purpose_ids) = validate_publish(r)?;
    for (i, id) in purpose_ids.iter().enumerate() {
        if api.store.purpose(id).await?.is_none() {
            return Err(ApiError::invalid(
                format!("notice.purposes[{i}]"),
                format!("purposes/{id} is not in the register"),
            ));
        }
    }
    let now = api.ctx.clock.now();
    notice.publish_time = Some(timestamp(now));
    notice.publisher = Some(Actor {
        principal: call.principal.name().to_string(),
        user: String::new(),
    });
    if notice.effective_time.is_none() {
        notice.effective_time = Some(timestamp(now));
    }
    let published = api
        .store
        .publish_notice(
            &notice_id,
            notice,
            &purpose_ids,
            key.as_ref(),
            to_micros(now),
        )
        .await;
    api.cache.forget_register();
    Ok(pb::PublishNoticeResponse {
        notice: Some(published?),
    })
}

/// The notice id and version (`None`: the latest) of a GetNotice `name`:
/// `notices/{id}/versions/{v}` or `notices/{id}/versions/latest`.
fn parse_name(name: &str) -> Result<(&str, Option<i64>), ApiError> {
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
    Ok((id, version))
}

/// GetNotice.
pub(crate) async fn get(
    api: &Api,
    r: pb::GetNoticeRequest,
) -> Result<pb::GetNoticeResponse, ApiError> {
    let (id, version) = parse_name(&r.name)?;
    let notice = api
        .store
        .notice(id, version)
        .await?
        .ok_or_else(|| ApiError::not_found("notice", r.name.clone()).in_field("name"))?;
    Ok(pb::GetNoticeResponse {
        notice: Some(notice),
    })
}

/// The filters of a ListNoticesRequest: a notice id, a purpose id.
fn list_filter(r: &pb::ListNoticesRequest) -> Result<(Option<&str>, Option<String>), ApiError> {
    let notice_id = (!r.notice_id.is_empty()).then_some(r.notice_id.as_str());
    if notice_id.is_some_and(|id| !valid_id(id)) {
        return Err(ApiError::invalid("notice_id", "is not a notice id"));
    }
    let purpose = match r.purpose.as_str() {
        "" => None,
        p => Some(purpose_id(p, "purpose")?.to_string()),
    };
    Ok((notice_id, purpose))
}

/// The notice id in a notice version's name.
fn id_in(name: &str) -> &str {
    name.split('/').nth(1).unwrap_or_default()
}

/// The highest version of each notice in `notices` (ordered by id and version).
fn latest_versions(notices: Vec<Notice>) -> Vec<Notice> {
    let mut latest: Vec<Notice> = Vec::new();
    for n in notices {
        match latest.last_mut() {
            Some(prev) if prev.name.split('/').nth(1) == Some(id_in(&n.name)) => *prev = n,
            _ => latest.push(n),
        }
    }
    latest
}

/// ListNotices.
pub(crate) async fn list(
    api: &Api,
    r: pb::ListNoticesRequest,
) -> Result<pb::ListNoticesResponse, ApiError> {
    let size = pagination::page_size(r.page_size)?;
    let (notice_id, purpose) = list_filter(&r)?;
    let fingerprint = format!("{notice_id:?}{purpose:?}{}", r.latest_only);
    let after: Option<(String, i64)> = pagination::decode(&r.page_token, &fingerprint)?;
    let mut notices = api
        .store
        .notices(notice_id, purpose.as_deref(), after, size + 1)
        .await?;
    let next = (notices.len() > size).then(|| {
        let last = &notices[size - 1];
        let id = id_in(&last.name).to_string();
        pagination::encode(&(id, i64::from(last.version)), &fingerprint)
    });
    notices.truncate(size);
    if r.latest_only {
        // Keep the highest version of each notice on this page.
        notices = latest_versions(notices);
    }
    Ok(pb::ListNoticesResponse {
        notices,
        next_page_token: next.unwrap_or_default(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::test_support::fields;

    fn request(notice: Notice) -> pb::PublishNoticeRequest {
        pb::PublishNoticeRequest {
            notice_id: "privacy".into(),
            notice: Some(notice),
            ..Default::default()
        }
    }

    #[test]
    fn references_name_a_positive_version() {
        assert_eq!(
            notice_ref("notices/privacy/versions/3"),
            Some(("privacy", 3))
        );
        assert_eq!(
            notice_ref("notices/privacy/versions/003"),
            Some(("privacy", 3))
        );
        assert_eq!(notice_ref("notices/privacy/versions/0"), None);
        assert_eq!(notice_ref("notices/Privacy/versions/1"), None);
        assert_eq!(notice_ref("privacy/versions/1"), None);
    }

    #[test]
    fn names_take_a_version_or_latest() {
        assert_eq!(
            parse_name("notices/privacy/versions/2").unwrap(),
            ("privacy", Some(2))
        );
        assert_eq!(
            parse_name("notices/privacy/versions/latest").unwrap(),
            ("privacy", None)
        );
        for bad in [
            "notices/privacy",
            "notices/x_y/versions/1",
            "notices/privacy/versions/new",
        ] {
            assert_eq!(fields(parse_name(bad).unwrap_err()), ["name"], "{bad}");
        }
    }

    #[test]
    fn a_text_notice_gets_its_hash() {
        let (id, notice, purposes) = validate_publish(request(Notice {
            content: Some(pb::notice::Content::Text("hello".into())),
            purposes: vec!["purposes/newsletter".into()],
            ..Default::default()
        }))
        .unwrap();
        assert_eq!(id, "privacy");
        assert_eq!(purposes, ["newsletter"]);
        assert_eq!(
            notice.content_sha256,
            "2cf24dba5fb0a30e26e83b2ac5b9e29e1b161e5c1fa7425e73043362938b9824"
        );
    }

    #[test]
    fn a_notice_needs_content_purposes_and_a_hash_for_a_uri() {
        assert_eq!(
            fields(validate_publish(pb::PublishNoticeRequest::default()).unwrap_err()),
            ["notice"]
        );
        let e = validate_publish(request(Notice {
            content: Some(pb::notice::Content::Uri("ftp://example.org".into())),
            purposes: vec!["newsletter".into()],
            ..Default::default()
        }))
        .unwrap_err();
        assert_eq!(
            fields(e),
            ["notice.uri", "notice.content_sha256", "notice.purposes[0]"]
        );
        let e = validate_publish(request(Notice::default())).unwrap_err();
        assert_eq!(fields(e), ["notice.content", "notice.purposes"]);
    }

    #[test]
    fn latest_keeps_the_last_version_of_each_notice() {
        let n = |name: &str| Notice {
            name: name.into(),
            ..Default::default()
        };
        let latest = latest_versions(vec![
            n("notices/a/versions/1"),
            n("notices/a/versions/2"),
            n("notices/b/versions/1"),
        ]);
        let names: Vec<_> = latest.iter().map(|n| n.name.as_str()).collect();
        assert_eq!(names, ["notices/a/versions/2", "notices/b/versions/1"]);
    }

    #[test]
    fn list_filters_are_ids() {
        let r = pb::ListNoticesRequest {
            notice_id: "Bad".into(),
            ..Default::default()
        };
        assert_eq!(fields(list_filter(&r).unwrap_err()), ["notice_id"]);
        let r = pb::ListNoticesRequest {
            purpose: "purposes/newsletter".into(),
            ..Default::default()
        };
        assert_eq!(
            list_filter(&r).unwrap(),
            (None, Some("newsletter".to_string()))
        );
    }
}
