//! The SQLite spend writer: its own thread and connection beside the pool.
//! A batch lands whole or not at all, the writer waits out another
//! connection's write lock, comes back after a failure, and an in-memory
//! database (which only the pool can see) still records spend.

use std::time::Duration;

use chrono::Utc;
use deltallm_migration::{Migrator, MigratorTrait};
use deltallm_secrets::{Key, KeyRing};
use deltallm_storage::{SpendGroupBy, SpendRecord, Store};
use sea_orm::{ConnectionTrait, TransactionTrait};

async fn store(url: &str) -> Store {
    let store = Store::connect(url, KeyRing::new(Key::derive("spend-store-test").unwrap())).await.unwrap();
    Migrator::up(store.connection(), None).await.unwrap();
    store
}

fn records(prefix: &str, n: usize) -> Vec<SpendRecord> {
    let now = Utc::now();
    (0..n)
        .map(|i| SpendRecord {
            request_id: format!("{prefix}-{i}"),
            call_type: "chat_completion",
            model: "m".into(),
            provider: "vllm".into(),
            billing_unit: "token",
            prompt_tokens: 1,
            total_tokens: 1,
            request_tags: "[]".into(),
            metadata: "{}".into(),
            status: "success",
            http_status_code: 200,
            start_time: now,
            end_time: now,
            ..SpendRecord::default()
        })
        .collect()
}

async fn requests(store: &Store) -> i64 {
    let rows = store.spend_summary(SpendGroupBy::Model, None, None).await.unwrap();
    rows.iter().map(|r| r.requests).sum()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_batch_leaves_no_rows_and_the_next_batch_lands() {
    let dir = tempfile::tempdir().unwrap();
    let url = format!("sqlite://{}?mode=rwc", dir.path().join("spend.db").display());
    let store = store(&url).await;
    store.insert_spend(records("first", 30)).await.unwrap();
    assert_eq!(requests(&store).await, 30);

    // Row 21 of the next batch is refused (after two full 8-row statements).
    let refuse = "CREATE TRIGGER refuse_boom BEFORE INSERT ON spend_logs WHEN NEW.request_id = 'boom-20' \
                  BEGIN SELECT RAISE(ABORT, 'refused by test'); END";
    store.connection().execute_unprepared(refuse).await.unwrap();
    let err = store.insert_spend(records("boom", 40)).await.unwrap_err();
    assert!(err.to_string().contains("refused by test"), "{err}");
    assert_eq!(requests(&store).await, 30, "none of the failed batch's rows stay");

    store.connection().execute_unprepared("DROP TRIGGER refuse_boom").await.unwrap();
    store.insert_spend(records("after", 5)).await.unwrap();
    assert_eq!(requests(&store).await, 35);
    let newest = store.recent_spend(1).await.unwrap();
    assert_eq!(newest[0].request_id, "after-4");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_batch_waits_for_another_connections_write_and_then_lands() {
    let dir = tempfile::tempdir().unwrap();
    let url = format!("sqlite://{}?mode=rwc", dir.path().join("spend.db").display());
    let store = store(&url).await;
    store.insert_spend(records("warm", 1)).await.unwrap();

    // A pool connection holds the write lock for a while.
    let txn = store.connection().begin().await.unwrap();
    txn.execute_unprepared("DELETE FROM spend_logs WHERE request_id = 'warm-0'").await.unwrap();
    let writer = tokio::spawn({
        let store = store.clone();
        async move { store.insert_spend(records("queued", 12)).await }
    });
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(!writer.is_finished(), "the spend batch waits for the lock");
    txn.commit().await.unwrap();
    tokio::time::timeout(Duration::from_secs(5), writer).await.unwrap().unwrap().unwrap();
    assert_eq!(requests(&store).await, 12, "the other write and the whole batch both landed");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_in_memory_database_records_spend_through_the_pool() {
    let store = store("sqlite::memory:").await;
    store.insert_spend(records("mem", 19)).await.unwrap();
    assert_eq!(requests(&store).await, 19);
}
