//! The register of data sources: registration (idempotent, no secrets, no
//! reserved ids), listing beside the built-in sources, updates by mask with the
//! etag, and reads.

use custodia_proto::{
    connector::v1::Capability,
    dsar::v1::{
        DataSource, DataSourceState, GetDataSourceRequest, ListDataSourcesRequest,
        RegisterDataSourceRequest, UpdateDataSourceRequest,
    },
};
use custodia_tests::Backend;
use tonic::Code;

use super::*;

custodia_tests::both_backends!(data_sources);

async fn data_sources(backend: Backend) {
    let app = spawn(backend).await;
    let mut c = client(&app).await;
    let crm = DataSource {
        display_name: "CRM".into(),
        endpoint: "http://127.0.0.1:9".into(),
        credentials_ref: "config:crm".into(),
        capabilities: vec![Capability::Export as i32, Capability::Erase as i32],
        data_categories: vec!["contacts".into(), "invoices".into()],
        purposes: vec!["purposes/prospects".into()],
        recipients: vec!["MailChimp".into()],
        ..Default::default()
    };
    let register = |id: &str, s: DataSource, rid: &str| RegisterDataSourceRequest {
        data_source_id: id.into(),
        data_source: Some(s),
        request_id: rid.into(),
    };
    let made = c
        .register_data_source(register("crm", crm.clone(), "reg-1"))
        .await
        .unwrap()
        .into_inner()
        .data_source
        .unwrap();
    assert_eq!(made.name, "dataSources/crm");
    assert_eq!(made.state(), DataSourceState::Enabled);
    assert!(!made.builtin);
    // Idempotent; a second registration under the same id is refused.
    let again = c
        .register_data_source(register("crm", crm.clone(), "reg-1"))
        .await
        .unwrap()
        .into_inner()
        .data_source
        .unwrap();
    assert_eq!(again.name, made.name);
    let err = c
        .register_data_source(register("crm", crm.clone(), ""))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::AlreadyExists);
    // A secret is not a credentials reference.
    let mut secret = crm.clone();
    secret.credentials_ref = "s3cr3t-token-value".into();
    let err = c
        .register_data_source(register("moodle", secret, ""))
        .await
        .unwrap_err();
    assert_code(
        &err,
        Code::InvalidArgument,
        &["data_source.credentials_ref"],
    );
    assert!(!err.message().contains("s3cr3t"));
    let err = c
        .register_data_source(register("custodia-x", crm.clone(), ""))
        .await
        .unwrap_err();
    assert_code(&err, Code::InvalidArgument, &["data_source_id", "reserved"]);

    // Listed by name with the built-in sources.
    let list = c
        .list_data_sources(ListDataSourcesRequest::default())
        .await
        .unwrap()
        .into_inner();
    let names: Vec<_> = list.data_sources.iter().map(|s| s.name.as_str()).collect();
    assert_eq!(
        names,
        [
            "dataSources/crm",
            "dataSources/custodia-audit-log",
            "dataSources/custodia-consent"
        ]
    );
    assert!(list.data_sources[1].builtin);
    let page = c
        .list_data_sources(ListDataSourcesRequest {
            page_size: 2,
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(page.data_sources.len(), 2);
    let rest = c
        .list_data_sources(ListDataSourcesRequest {
            page_size: 2,
            page_token: page.next_page_token,
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(rest.data_sources[0].name, "dataSources/custodia-consent");

    // Update by mask, with the etag.
    let updated = update(
        &mut c,
        DataSource {
            name: "dataSources/crm".into(),
            state: DataSourceState::Disabled as i32,
            display_name: "ignored: not in the mask".into(),
            etag: made.etag.clone(),
            ..Default::default()
        },
        "state",
    )
    .await
    .unwrap();
    assert_eq!(updated.state(), DataSourceState::Disabled);
    assert_eq!(updated.display_name, "CRM");
    assert_ne!(updated.etag, made.etag);
    let stale = update(
        &mut c,
        DataSource {
            name: "dataSources/crm".into(),
            etag: made.etag.clone(),
            ..Default::default()
        },
        "display_name",
    )
    .await
    .unwrap_err();
    assert_eq!(stale.code(), Code::FailedPrecondition);
    let builtin = update(
        &mut c,
        DataSource {
            name: "dataSources/custodia-consent".into(),
            ..Default::default()
        },
        "state",
    )
    .await
    .unwrap_err();
    assert_eq!(builtin.code(), Code::FailedPrecondition);
    let got = get_source(&mut c, "dataSources/crm").await.unwrap();
    assert_eq!(got.credentials_ref, "config:crm");
    let missing = get_source(&mut c, "dataSources/nope").await.unwrap_err();
    assert_eq!(missing.code(), Code::NotFound);
    app.stop().await;
}

/// UpdateDataSource of `source` through a mask of `path` alone.
async fn update(c: &mut Client, source: DataSource, path: &str) -> Result<DataSource, Status> {
    c.update_data_source(UpdateDataSourceRequest {
        data_source: Some(source),
        update_mask: Some(prost_types::FieldMask {
            paths: vec![path.into()],
        }),
        request_id: String::new(),
    })
    .await
    .map(|r| r.into_inner().data_source.expect("data source"))
}

/// GetDataSource of `name`.
async fn get_source(c: &mut Client, name: &str) -> Result<DataSource, Status> {
    c.get_data_source(GetDataSourceRequest { name: name.into() })
        .await
        .map(|r| r.into_inner().data_source.expect("data source"))
}
