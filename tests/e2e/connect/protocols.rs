//! Every RPC answers alike over gRPC, Connect (JSON and proto) and gRPC-Web, and
//! a call in JSON is a call like any other.

use super::*;

custodia_tests::both_backends!(json_calls_are_calls);

/// Every unary RPC of every service, without a token and then with an empty
/// message: the same code, message and ErrorInfo reason over gRPC, Connect
/// proto, Connect JSON and gRPC-Web.
#[tokio::test]
async fn every_rpc_answers_alike_over_every_protocol() {
    let app = TestApp::spawn_with(Backend::Sqlite, &all_services(), |c| {
        // Access events stay queued, so the log (and what its reads answer)
        // does not change between the four calls of one comparison.
        c.audit.endpoint = Some("http://127.0.0.1:1".into());
    })
    .await;
    let services: Vec<&str> = custodia_core::ServiceName::ALL
        .iter()
        .map(|s| s.grpc_name())
        .collect();
    let table = MethodTable::new(pool(), &services);
    let mut checked = 0;
    for method in table.all() {
        if method.server_streaming {
            continue;
        }
        for token in [None, Some(ADMIN_TOKEN)] {
            let path = &method.path;
            let g = grpc(&app, path, token, &[]).await;
            let p = connect_proto(&app, path, token, &[]).await;
            let (j, _) = connect_json(&app, path, token, "{}").await;
            let w = grpc_web(&app, path, token, &[]).await;
            let strip = |o: &Outcome| Outcome {
                message_bytes: None,
                ..o.clone()
            };
            assert_eq!(
                strip(&g),
                strip(&p),
                "{path} {token:?}: gRPC vs Connect proto"
            );
            assert_eq!(
                strip(&g),
                strip(&j),
                "{path} {token:?}: gRPC vs Connect JSON"
            );
            assert_eq!(strip(&g), strip(&w), "{path} {token:?}: gRPC vs gRPC-Web");
            if token.is_none() {
                assert_eq!(g.code, Code::Unauthenticated, "{path}");
            }
            checked += 1;
        }
    }
    assert!(checked > 100, "{checked} calls compared");
    app.stop().await;
}

/// A consent recorded in JSON is what gRPC then reads, a check answers the same
/// in JSON (POST and GET) as over gRPC, and the JSON call is an access event.
async fn json_calls_are_calls(backend: Backend) {
    let app = TestApp::spawn(backend, &all_services()).await;
    let notice = app.newsletter_notice().await;
    let mut c = app.consent().await;
    let collect = app.clock.now().format("%Y-%m-%dT%H:%M:%SZ").to_string();
    let record = serde_json::json!({
        "subject": {"type": "email", "value": "ada@example.edu"},
        "decisions": [{"purpose": "purposes/newsletter", "decision": "DECISION_GRANTED"}],
        "evidence": {"collectTime": collect, "channel": "CONSENT_CHANNEL_WEB_FORM", "notice": notice},
        "request_id": "php-1",
    });
    let (outcome, answer) =
        connect_json(&app, RECORD, Some(ADMIN_TOKEN), &record.to_string()).await;
    assert_eq!(
        outcome.code,
        Code::Ok,
        "{}",
        String::from_utf8_lossy(&answer.body)
    );
    let recorded: serde_json::Value = serde_json::from_slice(&answer.body).unwrap();
    assert_eq!(recorded["events"][0]["state"], "CONSENT_STATE_GRANTED");
    assert_eq!(answer.headers["cache-control"], "no-store");

    // gRPC sees it.
    let check = CheckConsentRequest {
        subject: Some(email("ada@example.edu")),
        purpose: "purposes/newsletter".into(),
    };
    let over_grpc = c.check_consent(check.clone()).await.unwrap().into_inner();
    assert!(over_grpc.result.as_ref().unwrap().allowed);

    // The same check over Connect proto: the same answer but its check time.
    let p = connect_proto(&app, CHECK, Some(ADMIN_TOKEN), &check.encode_to_vec()).await;
    let mut over_connect = CheckConsentResponse::decode(p.message_bytes.unwrap()).unwrap();
    over_connect.result.as_mut().unwrap().check_time =
        over_grpc.result.as_ref().unwrap().check_time;
    assert_eq!(over_connect, over_grpc);

    // GET, for a read: JSON in the query.
    let message = serde_json::json!({
        "subject": {"type": "email", "value": "ada@example.edu"},
        "purpose": "purposes/newsletter",
    })
    .to_string();
    let query: String = form_urlencoded::Serializer::new(String::new())
        .append_pair("encoding", "json")
        .append_pair("message", &message)
        .finish();
    let get = Request::get(format!("{}{CHECK}?{query}", app.endpoint))
        .header("authorization", format!("Bearer {ADMIN_TOKEN}"))
        .body(Full::new(Bytes::new()))
        .unwrap();
    let answer = send(&http1(), get).await;
    assert_eq!(answer.status, StatusCode::OK, "{:?}", answer.body);
    let json: serde_json::Value = serde_json::from_slice(&answer.body).unwrap();
    assert_eq!(json["result"]["allowed"], true);
    assert_eq!(json["result"]["reason"], "CHECK_REASON_GRANTED");

    // ...and binary, base64url in the query.
    let query: String = form_urlencoded::Serializer::new(String::new())
        .append_pair("encoding", "proto")
        .append_pair("base64", "1")
        .append_pair(
            "message",
            &base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(check.encode_to_vec()),
        )
        .finish();
    let get = Request::get(format!("{}{CHECK}?{query}", app.endpoint))
        .header("authorization", format!("Bearer {ADMIN_TOKEN}"))
        .body(Full::new(Bytes::new()))
        .unwrap();
    let answer = send(&http1(), get).await;
    assert_eq!(answer.status, StatusCode::OK);
    assert!(
        CheckConsentResponse::decode(answer.body)
            .unwrap()
            .result
            .unwrap()
            .allowed
    );

    // The JSON write is an access event like any other.
    audit_events_until(
        app.channel().await,
        ListEventsRequest {
            service: "custodia.consent.v1.ConsentService".into(),
            ..Default::default()
        },
        |events| events.iter().any(|e| e.method == "RecordConsent"),
    )
    .await;
    app.stop().await;
}
