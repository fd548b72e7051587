//! The in-memory state index against a real database.

use custodia_consent::{records::WriteJob, store::ConsentStore};
use custodia_proto::consent::v1::ConsentState;
use custodia_tests::{Backend, TestStore};

use super::{job, record};

custodia_tests::both_backends!(state_index_follows_the_table);

/// The state index (every subject's states in memory) loaded page by page from a
/// real database answers what the table holds; a subject marked stale is not
/// answered until it is read again, and then answers its new state; an index too
/// big for its bound turns itself off.
async fn state_index_follows_the_table(backend: Backend) {
    use custodia_consent::{index::StateIndex, records::DIRECT_MARKETING};
    let fixture = TestStore::consent(backend).await;
    let db = fixture.db.clone();
    let store = ConsentStore::new(db.clone());
    let hash = |i: usize| format!("{i:064x}");
    let state_of = |i: usize| match i % 4 {
        0 => ConsentState::Granted,
        1 => ConsentState::Denied,
        2 => ConsentState::Withdrawn,
        _ => ConsentState::Objected,
    };
    // 1,200 subjects: newsletter states, a third also analytics, every seventh an
    // objection to direct marketing.
    let jobs: Vec<WriteJob> = (0..1_200)
        .map(|i| {
            let mut records = vec![record(&hash(i), "newsletter", state_of(i))];
            if i % 3 == 0 {
                records.push(record(&hash(i), "analytics", ConsentState::Granted));
            }
            if i % 7 == 0 {
                records.push(record(&hash(i), DIRECT_MARKETING, ConsentState::Objected));
            }
            job("RecordConsent", &format!("r{i}"), records)
        })
        .collect();
    for r in store.record_all(jobs).await.unwrap() {
        r.unwrap();
    }
    let subjects: Vec<String> = (0..1_250).map(hash).collect();
    let refs: Vec<&str> = subjects.iter().map(String::as_str).collect();
    let agrees = async |index: &StateIndex, purpose: &str| {
        let db = store.states(&refs, purpose).await.unwrap();
        let no = index.purpose_no(purpose);
        for s in &subjects {
            let want = db.get(s).cloned().unwrap_or_default();
            assert_eq!(index.lookup(s, purpose, no), Some(want), "{s} {purpose}");
        }
    };

    let index = StateIndex::new(10_000);
    assert!(index.wants_load());
    // Pages of 500 rows: ~1,800 rows take four.
    index.load_pages(&store, 500).await.unwrap();
    assert!(!index.serving(), "not before the first refresh");
    assert_eq!(index.lookup(&hash(0), "newsletter", None), None);
    index.refresh(&store).await.unwrap();
    assert!(index.serving());
    agrees(&index, "newsletter").await;
    agrees(&index, "analytics").await;
    agrees(&index, "never-used").await;

    // Another replica changes two subjects and erases a third; until the follower
    // marks them the index still holds what it read (the follower's poll bounds
    // that); marked, they are not answered; read again, they agree.
    let changed = vec![
        job(
            "WithdrawConsent",
            "w1",
            vec![record(&hash(0), "newsletter", ConsentState::Withdrawn)],
        ),
        job(
            "RecordConsent",
            "w2",
            vec![record(&hash(1_240), "newsletter", ConsentState::Granted)],
        ),
    ];
    for r in store.record_all(changed).await.unwrap() {
        r.unwrap();
    }
    store.erase(&[hash(4)], 0).await.unwrap();
    for i in [0, 1_240, 4] {
        index.mark_stale(&hash(i));
        assert_eq!(index.lookup(&hash(i), "newsletter", None), None);
    }
    index.refresh(&store).await.unwrap();
    agrees(&index, "newsletter").await;
    assert_eq!(
        index.lookup(&hash(0), "newsletter", index.purpose_no("newsletter")),
        Some((
            Some(custodia_consent::decision::StateRow {
                state: ConsentState::Withdrawn,
                decision_us: 1_000,
                expire_us: None,
            }),
            true
        ))
    );
    assert_eq!(
        index.lookup(&hash(4), "newsletter", None),
        Some((None, false))
    );

    // A reset (erasure elsewhere) loads everything again.
    index.reset();
    assert!(!index.serving() && index.wants_load());
    index.load(&store).await.unwrap();
    index.refresh(&store).await.unwrap();
    agrees(&index, "newsletter").await;

    // More states than the bound: not loaded, checks read the database.
    let small = StateIndex::new(1_000);
    small.load_pages(&store, 500).await.unwrap();
    small.refresh(&store).await.unwrap();
    assert!(!small.serving() && !small.wants_load());
    assert_eq!(small.lookup(&hash(0), "newsletter", None), None);

    fixture.close().await;
}
