//! Races between grants and withdrawals of one subject: after each acknowledged
//! withdrawal no check says ALLOWED, and under concurrent writes the state is
//! that of the last event in the trail.

use custodia_proto::consent::v1::{CheckReason, ConsentState};
use custodia_tests::{Backend, TestApp};

use super::{Client, check, events_of, grant, newsletter, withdraw};

custodia_tests::both_backends!(
    withdrawals_win_and_the_last_write_stands,
    checks_racing_withdrawals
);

/// Sends `n` writes of `who` at once, write `i` a grant where `grants(i)` holds
/// and a withdrawal elsewhere, and waits until every one is acknowledged.
async fn at_once(
    app: &TestApp,
    c: &Client,
    who: &str,
    notice: &str,
    n: usize,
    grants: impl Fn(usize) -> bool,
) {
    let writes: Vec<_> = (0..n)
        .map(|i| {
            let mut c = c.clone();
            let g = grant(app, who, notice);
            let w = withdraw(app, who, "newsletter");
            let grant = grants(i);
            tokio::spawn(async move {
                if grant {
                    c.record_consent(g).await.map(|_| ())
                } else {
                    c.withdraw_consent(w).await.map(|_| ())
                }
            })
        })
        .collect();
    for w in writes {
        w.await.unwrap().unwrap();
    }
}

/// Ten grant-then-withdraw rounds, each checked right after the withdrawal;
/// then sixteen grants and withdrawals at once: the check agrees with the last
/// event of the trail.
async fn withdrawals_win_and_the_last_write_stands(backend: Backend) {
    let app = TestApp::spawn(backend, &[custodia_consent::SERVICE]).await;
    let (mut c, v1) = newsletter(&app).await;

    // Races: after each acknowledged withdrawal no check says ALLOWED; under
    // concurrent writes the state is that of the last event in the trail.
    for _ in 0..10 {
        c.record_consent(grant(&app, "eve@example.edu", &v1))
            .await
            .unwrap();
        c.withdraw_consent(withdraw(&app, "eve@example.edu", "newsletter"))
            .await
            .unwrap();
        assert_eq!(
            check(&mut c, "eve@example.edu", "newsletter").await,
            (false, CheckReason::Withdrawn)
        );
    }
    at_once(&app, &c, "fay@example.edu", &v1, 16, |i| i % 2 == 0).await;
    let trail = events_of(&mut c, "fay@example.edu").await;
    assert_eq!(trail.len(), 16);
    let last_granted = trail.last().unwrap().state == ConsentState::Granted as i32;
    assert_eq!(
        check(&mut c, "fay@example.edu", "newsletter").await.0,
        last_granted
    );

    app.stop().await;
}

/// Grants and withdrawals race on one subject while checkers check it without
/// pause. Each round ends with a withdrawal; every check that started after that
/// withdrawal was acknowledged, and answered before the next round sent a grant,
/// must say not allowed. After all rounds the state is the last acknowledged
/// write (a withdrawal) and the trail's last event agrees.
async fn checks_racing_withdrawals(backend: Backend) {
    use std::{
        sync::{
            Arc, Mutex,
            atomic::{AtomicBool, Ordering},
        },
        time::Instant,
    };
    let app = TestApp::spawn(backend, &[custodia_consent::SERVICE]).await;
    let (mut c, v1) = newsletter(&app).await;
    let who = "race@example.edu";

    let stop = Arc::new(AtomicBool::new(false));
    // (started, answered, allowed) of every concurrent check.
    let seen = Arc::new(Mutex::new(Vec::<(Instant, Instant, bool)>::new()));
    let checkers: Vec<_> = (0..4)
        .map(|_| {
            let (mut c, stop, seen) = (c.clone(), stop.clone(), seen.clone());
            tokio::spawn(async move {
                while !stop.load(Ordering::Relaxed) {
                    let started = Instant::now();
                    let (allowed, _) = check(&mut c, who, "newsletter").await;
                    seen.lock()
                        .unwrap()
                        .push((started, Instant::now(), allowed));
                }
            })
        })
        .collect();

    // (withdrawal acknowledged, next grant sent) per round.
    let mut windows: Vec<(Instant, Instant)> = Vec::new();
    let mut own_checks = 0;
    for round in 0..12 {
        let grants_from = Instant::now();
        if let Some(w) = windows.last_mut() {
            *w = (w.0, grants_from);
        }
        at_once(&app, &c, who, &v1, 6, |i| (i + round) % 2 == 0).await;
        c.withdraw_consent(withdraw(&app, who, "newsletter"))
            .await
            .unwrap();
        let acked = Instant::now();
        windows.push((acked, acked));
        // At least these checks fall in the window, beside the checkers'.
        for _ in 0..3 {
            let started = Instant::now();
            let (allowed, reason) = check(&mut c, who, "newsletter").await;
            assert!(
                !allowed,
                "round {round}: ALLOWED ({reason:?}) after a withdrawal's ack"
            );
            seen.lock()
                .unwrap()
                .push((started, Instant::now(), allowed));
            own_checks += 1;
        }
    }
    stop.store(true, Ordering::Relaxed);
    for checker in checkers {
        checker.await.unwrap();
    }
    let end = Instant::now();
    if let Some(w) = windows.last_mut() {
        *w = (w.0, end);
    }

    let seen = std::mem::take(&mut *seen.lock().unwrap());
    let in_windows: Vec<_> = seen
        .iter()
        .filter(|(started, answered, _)| {
            windows
                .iter()
                .any(|(acked, next)| started > acked && answered < next)
        })
        .collect();
    assert!(
        in_windows.len() >= own_checks,
        "{} checks in the windows",
        in_windows.len()
    );
    assert!(
        in_windows.iter().all(|(_, _, allowed)| !allowed),
        "a check after a withdrawal's ack said ALLOWED"
    );

    let trail = events_of(&mut c, who).await;
    assert_eq!(trail.len(), 12 * 7);
    assert_eq!(trail.last().unwrap().state, ConsentState::Withdrawn as i32);
    assert_eq!(
        check(&mut c, who, "newsletter").await,
        (false, CheckReason::Withdrawn)
    );
    app.stop().await;
}
