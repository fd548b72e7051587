//! The platform contract: all four services registered, reflected and
//! health-checked; every call authenticated and scope-checked.

use custodia_core::ServiceName;
use custodia_tests::{ADMIN_TOKEN, Backend, TestApp, authed, eventually};
use tonic::Code;
use tonic_health::pb::{
    HealthCheckRequest, health_check_response::ServingStatus, health_client::HealthClient,
};
use tonic_reflection::pb::v1::{
    ServerReflectionRequest, server_reflection_client::ServerReflectionClient,
    server_reflection_request::MessageRequest, server_reflection_response::MessageResponse,
};

use crate::all_services;
use custodia_core::{
    config::PrincipalConfig,
    outbox::{OutboxStore, Outcome, SqlOutbox},
    storage,
};
use custodia_proto::consent::v1::{
    ExportRegisterRequest, ListPurposesRequest, consent_service_client::ConsentServiceClient,
};

const BANNER_TOKEN: &str = "web-banner-token-0123456789";

/// What reflection lists besides the custodia services served.
const ALWAYS_LISTED: [&str; 3] = [
    "grpc.health.v1.Health",
    "grpc.reflection.v1.ServerReflection",
    "grpc.reflection.v1alpha.ServerReflection",
];

async fn listed_services(app: &TestApp) -> Vec<String> {
    let mut client = ServerReflectionClient::new(app.channel().await);
    let request = ServerReflectionRequest {
        host: String::new(),
        message_request: Some(MessageRequest::ListServices(String::new())),
    };
    let mut stream = client
        .server_reflection_info(tokio_stream::iter([request]))
        .await
        .expect("reflection answers")
        .into_inner();
    let response = stream.message().await.unwrap().expect("one response");
    match response.message_response {
        Some(MessageResponse::ListServicesResponse(list)) => {
            let mut names: Vec<_> = list.service.into_iter().map(|s| s.name).collect();
            names.sort();
            names
        }
        other => panic!("unexpected reflection response {other:?}"),
    }
}

async fn platform_contract(backend: Backend) {
    let app = TestApp::spawn(backend, &all_services()).await;

    // Reflection lists all four custodia services, health and itself, nothing
    // else (no token needed).
    let listed = listed_services(&app).await;
    let mut expected: Vec<String> = ServiceName::ALL
        .iter()
        .map(|s| s.grpc_name())
        .chain(ALWAYS_LISTED)
        .map(String::from)
        .collect();
    expected.sort();
    assert_eq!(listed, expected);

    // Health reports SERVING for each service and for the server as a whole.
    let mut health = HealthClient::new(app.channel().await);
    for name in ServiceName::ALL.iter().map(|s| s.grpc_name()).chain([""]) {
        let status = health
            .check(HealthCheckRequest {
                service: name.to_string(),
            })
            .await
            .expect("health answers")
            .into_inner()
            .status;
        assert_eq!(status, ServingStatus::Serving as i32, "service {name:?}");
    }
    app.stop().await;
}

custodia_tests::both_backends!(platform_contract);

async fn auth_contract(backend: Backend) {
    let app = TestApp::spawn_with(backend, &all_services(), |c| {
        c.auth.principals.insert(
            "web-banner".into(),
            PrincipalConfig {
                token: Some(BANNER_TOKEN.to_string().into()),
                scopes: vec!["consent.check".into()],
                ..Default::default()
            },
        );
        // Keep access events in the outbox so the test can read them there.
        c.audit.endpoint = Some("http://127.0.0.1:1".into());
    })
    .await;
    let mut consent = ConsentServiceClient::new(app.channel().await);

    let no_token = consent
        .list_purposes(ListPurposesRequest::default())
        .await
        .unwrap_err();
    assert_eq!(no_token.code(), Code::Unauthenticated);
    let bad_token = consent
        .list_purposes(authed(
            ListPurposesRequest::default(),
            "not-a-known-token-at-all",
        ))
        .await
        .unwrap_err();
    assert_eq!(bad_token.code(), Code::Unauthenticated);
    let lacking_scope = consent
        .export_register(authed(ExportRegisterRequest::default(), BANNER_TOKEN))
        .await
        .unwrap_err();
    assert_eq!(lacking_scope.code(), Code::PermissionDenied);
    assert!(
        lacking_scope.message().contains("consent.read"),
        "{}",
        lacking_scope.message()
    );

    // With the scope, the call reaches the service.
    let allowed = consent
        .list_purposes(authed(ListPurposesRequest::default(), BANNER_TOKEN))
        .await;
    assert!(
        !matches!(
            allowed.as_ref().map_err(|s| s.code()),
            Err(Code::Unauthenticated | Code::PermissionDenied)
        ),
        "{allowed:?}"
    );
    let admin = consent
        .export_register(authed(ExportRegisterRequest::default(), ADMIN_TOKEN))
        .await;
    assert!(
        !matches!(
            admin.as_ref().map_err(|s| s.code()),
            Err(Code::Unauthenticated | Code::PermissionDenied)
        ),
        "{admin:?}"
    );

    // Every refusal is an access event in the called service's outbox. (On SQLite
    // the service's own outbox takes them in its read-event journal first and
    // moves them into the table in the background: this second handle sees them
    // there.)
    let db = storage::open_service(&app.config, ServiceName::Consent)
        .await
        .unwrap();
    let outbox = SqlOutbox::new(db.clone());
    let denied = eventually(|| async {
        let denied: Vec<_> = outbox
            .peek(100)
            .await
            .unwrap()
            .into_iter()
            .map(|(_, e)| e)
            .filter(|e| e.outcome == Outcome::Denied)
            .collect();
        (denied.len() >= 3).then_some(denied)
    })
    .await;
    assert_eq!(denied.len(), 3, "{denied:?}");
    assert_eq!(denied[0].actor, "anonymous");
    assert_eq!(denied[0].method, "ListPurposes");
    assert_eq!(denied[0].service, "custodia.consent.v1.ConsentService");
    assert_eq!(denied[2].actor, "web-banner");
    assert_eq!(denied[2].status_code, Code::PermissionDenied as i32);
    db.close().await;
    app.stop().await;
}

custodia_tests::both_backends!(auth_contract);

#[tokio::test]
async fn embedded_default_generates_the_admin_token_once() {
    let app = TestApp::spawn_with(Backend::Sqlite, &all_services(), |c| {
        c.auth.admin_token = None;
    })
    .await;
    let path = app.config.data_dir.join("admin.token");
    let token = std::fs::read_to_string(&path).expect("admin.token written");
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        assert_eq!(
            std::fs::metadata(&path).unwrap().permissions().mode() & 0o777,
            0o600
        );
    }
    let mut consent = ConsentServiceClient::new(app.channel().await);
    let call = consent
        .list_purposes(authed(ListPurposesRequest::default(), token.trim()))
        .await;
    assert!(
        !matches!(
            call.as_ref().map_err(|s| s.code()),
            Err(Code::Unauthenticated | Code::PermissionDenied)
        ),
        "{call:?}"
    );
    app.stop().await;
}

#[tokio::test]
async fn oversized_requests_are_refused() {
    let app = TestApp::spawn_with(Backend::Sqlite, &all_services(), |c| {
        c.server.max_request_bytes = 2048;
    })
    .await;
    let mut consent = ConsentServiceClient::new(app.channel().await);
    let big = ListPurposesRequest {
        page_token: "x".repeat(4096),
        ..Default::default()
    };
    let err = consent
        .list_purposes(authed(big, ADMIN_TOKEN))
        .await
        .unwrap_err();
    // RESOURCE_EXHAUSTED naming the limit (tonic alone says OUT_OF_RANGE).
    assert_eq!(err.code(), Code::ResourceExhausted, "{err:?}");
    assert!(
        err.message().contains("server.max_request_bytes"),
        "{}",
        err.message()
    );
    let info = tonic_types::StatusExt::get_error_details(&err)
        .error_info()
        .cloned()
        .expect("ErrorInfo");
    assert_eq!(info.reason, "REQUEST_TOO_LARGE");
    assert_eq!(info.metadata["limit"], "server.max_request_bytes");
    assert_eq!(info.metadata["limit_bytes"], "2048");
    app.stop().await;
}

/// An AppendEventsRequest whose one event has an `event_id` that is not UTF-8
/// (prost would refuse to build it, so the bytes are laid out by hand).
#[derive(Clone, PartialEq, prost::Message)]
struct RawAppend {
    #[prost(bytes = "vec", repeated, tag = "1")]
    events: Vec<Vec<u8>>,
}

#[tokio::test]
async fn invalid_utf8_is_invalid_argument_naming_the_field() {
    let app = TestApp::spawn(Backend::Sqlite, &all_services()).await;
    // event_id (field 1, length-delimited) = 0xFF 0xFE
    let err = app
        .call_raw::<_, custodia_proto::audit::v1::AppendEventsResponse>(
            "/custodia.audit.v1.AuditLogService/AppendEvents",
            RawAppend {
                events: vec![vec![0x0a, 0x02, 0xff, 0xfe]],
            },
        )
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument, "{err:?}");
    assert!(err.message().contains("event_id"), "{}", err.message());
    app.stop().await;
}

#[tokio::test]
async fn io_threads_serve_every_connection_over_one_state_and_stop_cleanly() {
    use custodia_proto::consent::v1::GetPurposeRequest;
    let app = TestApp::spawn_with(Backend::Sqlite, &all_services(), |c| {
        c.server.io_threads = 2;
    })
    .await;
    // Connections are dealt out to the threads in turn: a purpose created over the
    // first is read over the next three (both threads), and health answers on each.
    let mut first = ConsentServiceClient::new(app.channel().await);
    first
        .create_purpose(authed(custodia_tests::newsletter_purpose(), ADMIN_TOKEN))
        .await
        .unwrap();
    for _ in 0..3 {
        let channel = app.channel().await;
        let got = ConsentServiceClient::new(channel.clone())
            .get_purpose(authed(
                GetPurposeRequest {
                    name: "purposes/newsletter".into(),
                },
                ADMIN_TOKEN,
            ))
            .await
            .unwrap()
            .into_inner();
        assert_eq!(got.purpose.unwrap().name, "purposes/newsletter");
        let health = HealthClient::new(channel)
            .check(HealthCheckRequest::default())
            .await
            .unwrap()
            .into_inner();
        assert_eq!(health.status, ServingStatus::Serving as i32);
    }
    // A refused call is still refused (the layers run on every thread).
    let err = first
        .list_purposes(authed(ListPurposesRequest::default(), "not-a-token"))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::Unauthenticated);
    // Stops within the test's runtime: `stop` asserts a clean end.
    app.stop().await;
}

/// `serve` (Application::build) refuses each configuration `config check`
/// refuses, with the same message and before it binds or creates anything: one
/// validation behind both (issue 24, finding 7).
#[tokio::test]
async fn serve_refuses_what_config_check_refuses() {
    fn principal(token: &str, scope: &str) -> PrincipalConfig {
        PrincipalConfig {
            token: Some(token.to_string().into()),
            scopes: vec![scope.into()],
            ..Default::default()
        }
    }
    type Adjust = fn(&mut custodia_core::Config);
    let bad: [(&str, Adjust); 5] = [
        ("unknown scope `consent.chek`", |c| {
            c.auth.principals.insert(
                "crm".into(),
                principal("crm-token-0123456789", "consent.chek"),
            );
        }),
        ("shorter than 16", |c| {
            c.auth
                .principals
                .insert("crm".into(), principal("short", "consent.check"));
        }),
        ("same token", |c| {
            // The admin's token (the test servers' own) given to a principal.
            c.auth
                .principals
                .insert("crm".into(), principal(ADMIN_TOKEN, "consent.check"));
        }),
        ("server.concurrency_limit_per_connection", |c| {
            c.server.concurrency_limit_per_connection = 0
        }),
        ("server.request_timeout_secs", |c| {
            c.server.request_timeout_secs = 0
        }),
    ];
    for (needle, adjust) in bad {
        let (mut config, dir, _) = custodia_tests::test_config(Backend::Sqlite).await;
        config.data_dir = dir.path().join("data");
        adjust(&mut config);
        let checked = config.validate().expect_err(needle).to_string();
        assert!(checked.contains(needle), "{needle}: {checked}");
        let served =
            custodia_core::server::Application::build(config, &[custodia_consent::SERVICE])
                .await
                .expect_err(needle);
        assert_eq!(format!("{served:#}"), checked);
        assert!(!dir.path().join("data").exists(), "{needle}");
    }
}

/// A server of consent alone lists consent, health and reflection (v1 and
/// v1alpha), not the other services nor custodia.connector.v1.DataSource that
/// the descriptor set also describes (issue 24, finding 7); each listed service
/// resolves to its descriptor.
#[tokio::test]
async fn reflection_lists_only_the_services_served() {
    use tonic_reflection::pb::v1alpha;
    let app = TestApp::spawn(Backend::Sqlite, &[custodia_consent::SERVICE]).await;
    let mut expected: Vec<String> = [ServiceName::Consent.grpc_name()]
        .into_iter()
        .chain(ALWAYS_LISTED)
        .map(String::from)
        .collect();
    expected.sort();
    assert_eq!(listed_services(&app).await, expected);

    let mut client = ServerReflectionClient::new(app.channel().await);
    for symbol in &expected {
        let request = ServerReflectionRequest {
            host: String::new(),
            message_request: Some(MessageRequest::FileContainingSymbol(symbol.clone())),
        };
        let answer = client
            .server_reflection_info(tokio_stream::iter([request]))
            .await
            .unwrap()
            .into_inner()
            .message()
            .await
            .unwrap()
            .unwrap()
            .message_response;
        assert!(
            matches!(answer, Some(MessageResponse::FileDescriptorResponse(_))),
            "{symbol}: {answer:?}"
        );
    }

    let mut alpha =
        v1alpha::server_reflection_client::ServerReflectionClient::new(app.channel().await);
    let request = v1alpha::ServerReflectionRequest {
        host: String::new(),
        message_request: Some(
            v1alpha::server_reflection_request::MessageRequest::ListServices(String::new()),
        ),
    };
    let answer = alpha
        .server_reflection_info(tokio_stream::iter([request]))
        .await
        .unwrap()
        .into_inner()
        .message()
        .await
        .unwrap()
        .unwrap()
        .message_response;
    let Some(v1alpha::server_reflection_response::MessageResponse::ListServicesResponse(list)) =
        answer
    else {
        panic!("unexpected v1alpha answer {answer:?}");
    };
    let mut names: Vec<String> = list.service.into_iter().map(|s| s.name).collect();
    names.sort();
    assert_eq!(names, expected);
    app.stop().await;
}
