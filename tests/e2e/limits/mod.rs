//! Every repeated field of a request has a maximum (issue 24, finding 3): one
//! entry more is INVALID_ARGUMENT naming the field, before any query or access
//! event; a list at its maximum is served on both backends; and the store reads
//! lists longer than one SQL statement may bind in chunks instead of failing.
//! over_maximum.rs holds the refusals, served.rs what is served; the request
//! builders below are what they share.

mod over_maximum;
mod served;

use custodia_proto::{
    breach::v1::{Breach, ReportBreachRequest},
    consent::v1::{ConsentChannel, Evidence, LawfulBasis, Purpose, PurposeCategory},
    dsar::v1::{
        self as dsar, DataSource, RegisterDataSourceRequest, RequestType, Requester, RequesterRole,
        SubmitRequestRequest,
    },
};
use custodia_tests::{TestApp, subjects};

/// `n` distinct purpose names.
fn purposes(n: usize) -> Vec<String> {
    (0..n).map(|i| format!("purposes/p{i}")).collect()
}

/// `n` distinct short texts.
fn texts(n: usize) -> Vec<String> {
    (0..n).map(|i| format!("value-{i}")).collect()
}

/// A field mask naming `path` `n` times.
fn mask(n: usize, path: &str) -> Option<prost_types::FieldMask> {
    Some(prost_types::FieldMask {
        paths: vec![path.to_string(); n],
    })
}

/// Evidence of an e-mail link, collected now.
fn evidence(app: &TestApp) -> Evidence {
    Evidence {
        collect_time: Some(app.timestamp()),
        channel: ConsentChannel::EmailLink as i32,
        ..Default::default()
    }
}

/// A purpose that is valid but for the lists `with` sets.
fn purpose(with: impl FnOnce(&mut Purpose)) -> Option<Purpose> {
    let mut p = Purpose {
        display_name: "Newsletter".into(),
        lawful_basis: LawfulBasis::Consent as i32,
        category: PurposeCategory::Communication as i32,
        ..Default::default()
    };
    with(&mut p);
    Some(p)
}

/// A data-subject request that is valid but for the lists `with` sets.
fn request(with: impl FnOnce(&mut dsar::Request)) -> SubmitRequestRequest {
    let mut r = dsar::Request {
        r#type: RequestType::Access as i32,
        subject_identifiers: subjects(1),
        requester: Some(Requester {
            role: RequesterRole::Subject as i32,
            ..Default::default()
        }),
        ..Default::default()
    };
    with(&mut r);
    SubmitRequestRequest {
        request: Some(r),
        request_id: String::new(),
    }
}

/// A data source that is valid but for the lists `with` sets.
fn source(with: impl FnOnce(&mut DataSource)) -> RegisterDataSourceRequest {
    let mut s = DataSource {
        endpoint: "http://127.0.0.1:1".into(),
        ..Default::default()
    };
    with(&mut s);
    RegisterDataSourceRequest {
        data_source_id: "crm".into(),
        data_source: Some(s),
        request_id: String::new(),
    }
}

/// A breach that is valid but for the lists `with` sets.
fn breach(app: &TestApp, with: impl FnOnce(&mut Breach)) -> ReportBreachRequest {
    let mut b = Breach {
        description: "A laptop was stolen".into(),
        detect_time: Some(app.timestamp()),
        ..Default::default()
    };
    with(&mut b);
    ReportBreachRequest {
        breach: Some(b),
        request_id: String::new(),
    }
}
