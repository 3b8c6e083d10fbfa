//! The request pool's admission rules (SPEC R24) against a real PostgreSQL: the circuit breaker
//! opens on connection failures and closes when the database answers again; a full wait queue
//! refuses at once.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // tests fail loudly

use std::time::{Duration, Instant};

use orgbase_db::Pool;
use orgbase_db::pool::{GetError, Limits};
use orgbase_testkit::{TestDb, occupy};

#[tokio::test]
async fn the_breaker_opens_on_failed_connects_and_closes_when_the_database_answers() {
    let db = TestDb::migrated().await;
    let admin = db.admin().await;
    // A role of this test's own that may not log in yet: every connect fails in PostgreSQL.
    let role = format!("probe_{}", db.name);
    admin
        .batch_execute(&format!(
            "CREATE ROLE {role} NOLOGIN PASSWORD 'probe-password';
             GRANT CONNECT ON DATABASE {} TO {role};",
            db.name
        ))
        .await
        .unwrap();
    let mut config = db.target.runtime_config().clone();
    config.user(&role).password("probe-password");
    let pool = Pool::build(
        config,
        2,
        Duration::from_secs(5),
        Limits {
            breaker_failures: 3,
            backoff_min: Duration::from_millis(300),
            backoff_max: Duration::from_millis(1200),
            ..Limits::default()
        },
    )
    .unwrap();

    for i in 0..3 {
        match pool.get().await {
            Err(e @ GetError::Pool(_)) => assert!(e.to_string().contains(&role), "{e}"),
            other => panic!("connect {i}: {other:?}"),
        }
        assert_eq!(pool.circuit_open(), i == 2, "open after the third failure");
    }
    // Open: refused at once, without asking PostgreSQL.
    let t = Instant::now();
    match pool.get().await {
        Err(e @ GetError::CircuitOpen { .. }) => {
            let wait = e.retry_after().unwrap();
            assert!(wait <= Duration::from_millis(300), "{wait:?}");
            assert!(e.to_string().contains("retrying in 1s"), "{e}");
        }
        other => panic!("{other:?}"),
    }
    assert!(t.elapsed() < Duration::from_millis(100));

    // After the backoff one trial goes to PostgreSQL; it fails, and the breaker opens for twice
    // as long.
    tokio::time::sleep(Duration::from_millis(350)).await;
    assert!(
        matches!(pool.get().await, Err(GetError::Pool(_))),
        "the trial"
    );
    match pool.get().await {
        Err(GetError::CircuitOpen { retry_after }) => {
            assert!(retry_after > Duration::from_millis(300), "{retry_after:?}")
        }
        other => panic!("{other:?}"),
    }

    // The database answers again: the next trial closes the breaker.
    admin
        .batch_execute(&format!("ALTER ROLE {role} LOGIN"))
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(650)).await;
    let client = pool
        .get()
        .await
        .expect("the trial after the role may log in");
    let who: String = client
        .query_one("SELECT current_user::text", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(who, role);
    assert!(!pool.circuit_open());
    drop(client);
    drop(pool.get().await.expect("closed: requests pass"));
    let refused = pool.refusals();
    assert_eq!((refused.circuit_open, refused.queue_full), (2, 0));

    drop(pool);
    admin
        .batch_execute(&format!(
            "REVOKE CONNECT ON DATABASE {} FROM {role}; DROP ROLE {role};",
            db.name
        ))
        .await
        .unwrap();
}

#[tokio::test]
async fn a_full_wait_queue_refuses_at_once_and_frees_its_places() {
    let db = TestDb::migrated().await;
    let pool = db.pool_with(
        1,
        Limits {
            wait_queue: 1,
            ..Limits::default()
        },
    );
    let (held, waiter) = occupy(&pool).await;
    match pool.get().await {
        Err(e @ GetError::QueueFull { queue: 1 }) => {
            assert_eq!(e.retry_after(), Some(Duration::from_secs(1)));
        }
        other => panic!("{other:?}"),
    }
    assert_eq!(pool.refusals().queue_full, 1);
    // The server's own background work (the access-log writer) waits its turn instead.
    let background = tokio::spawn({
        let pool = pool.clone();
        async move { pool.get_background().await.map(drop) }
    });
    tokio::time::sleep(Duration::from_millis(50)).await;
    assert!(!background.is_finished(), "queued, not refused");
    drop(held);
    waiter
        .await
        .unwrap()
        .expect("the waiter gets the connection");
    background.await.unwrap().expect("then the background task");
    // The places were given back: a request that has to wait is queued again, not refused.
    let held = pool.get().await.unwrap();
    let waiter = tokio::spawn({
        let pool = pool.clone();
        async move { pool.get().await.map(drop) }
    });
    tokio::time::sleep(Duration::from_millis(20)).await;
    drop(held);
    waiter.await.unwrap().unwrap();
    assert!(
        !pool.circuit_open(),
        "a busy pool is not a failing database"
    );
}
