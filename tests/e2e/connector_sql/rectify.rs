//! RectifySubject: corrections applied field by field, each answered.

use super::*;

custodia_tests::both_backends!(rectify);

async fn rectify(backend: Backend) {
    let mut crm = Crm::start(backend).await;
    let correction =
        |category: &str, field: &str, record_id: &str, value: Option<Value>| Correction {
            category: category.into(),
            field: field.into(),
            record_id: record_id.into(),
            value,
        };
    let request = RectifySubjectRequest {
        subject_identifiers: ada(),
        dsar_request: "requests/r3".into(),
        corrections: vec![
            correction("contacts", "last_name", "", string("King")),
            correction("contacts", "shoe_size", "", string("38")),
            correction("contacts", "created_at", "", string("2020-01-01T00:00:00Z")),
            correction("courses", "name", "", string("x")),
            correction("contacts", "phone", "2", string("+33000000000")),
            correction("contacts", "email", "", string("ada.king@example.edu")),
            correction("contacts", "first_name", "1", None),
        ],
        request_id: "rectify-1".into(),
    };
    let results = crm
        .client
        .rectify_subject(request.clone())
        .await
        .unwrap()
        .into_inner()
        .results;
    let applied: Vec<(bool, i64)> = results
        .iter()
        .map(|r| (r.applied, r.record_count))
        .collect();
    assert_eq!(
        applied,
        [
            (true, 1),
            (false, 0),
            (false, 0),
            (false, 0),
            (false, 0),
            (true, 1),
            (true, 1)
        ]
    );
    assert!(results[1].message.contains("unknown field"), "{results:?}");
    assert!(results[2].message.contains("cannot be rectified"));
    assert!(results[3].message.contains("unknown category"));
    assert!(results[4].message.contains("does not belong"));
    assert!(results.iter().enumerate().all(|(i, r)| r.index == i as i32));
    assert_eq!(
        crm.count("SELECT COUNT(*) FROM contacts WHERE last_name = 'King' AND email = 'ada.king@example.edu' AND first_name IS NULL")
            .await,
        1
    );
    assert_eq!(
        crm.count("SELECT COUNT(*) FROM contacts WHERE last_name = 'Martin'")
            .await,
        1,
        "Bob untouched"
    );

    // A repeat answers the same, and the new email finds the subject.
    let again = crm
        .client
        .rectify_subject(request)
        .await
        .unwrap()
        .into_inner()
        .results;
    assert_eq!(again, results);
    let found: usize = export(&mut crm.client, vec![id("email", "ada.king@example.edu")])
        .await
        .iter()
        .map(Vec::len)
        .sum();
    assert_eq!(found, 1 + 3 + 2);

    let err = crm
        .client
        .rectify_subject(RectifySubjectRequest {
            subject_identifiers: ada(),
            corrections: vec![correction("contacts", "", "", None)],
            request_id: "rectify-2".into(),
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_code(&err, Code::InvalidArgument, &["corrections[0].field"]);
    crm.stop().await;
}
