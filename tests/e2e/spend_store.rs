//! The SQLite spend writer: its own thread and connection beside the pool.
//! A batch lands whole or not at all, the writer waits out another
//! connection's write lock, comes back after a failure, and an in-memory
//! database (which only the pool can see) still records spend.

use std::time::Duration;

use chrono::Utc;
use deltallm_e2e::on_both_backends;
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

/// Records whose fields change in every pattern the writer's statements can
/// meet: a value repeated in the same row position, changed, switched
/// between `NULL` and text and back, and both sides of every counter.
fn varied(batch: usize, n: usize) -> Vec<SpendRecord> {
    static SHARED: std::sync::LazyLock<[std::sync::Arc<str>; 6]> = std::sync::LazyLock::new(|| {
        ["d-0", "d-1", "d-2", "{\"attempts\":0}", "{\"attempts\":1}", "{\"attempts\":2}"].map(Into::into)
    });
    // Whole microseconds: PostgreSQL keeps no more.
    let now = Utc::now() - chrono::TimeDelta::seconds(5);
    let start = chrono::DateTime::from_timestamp_micros(now.timestamp_micros()).unwrap();
    (0..n)
        .map(|i| {
            let k = batch * 1000 + i;
            let start_time = start + chrono::TimeDelta::microseconds(k as i64 * 1237);
            SpendRecord {
                request_id: format!("v-{batch}-{i}"),
                call_type: ["chat_completion", "embedding", "rerank"][k % 3],
                model: ["m-a", "m-b", "m-a", "a much longer model name than the others"][k % 4].into(),
                // Even records share the registry's allocations (as the
                // gateway's do), odd ones bring equal texts of their own.
                deployment_id: (!k.is_multiple_of(5))
                    .then(|| if k.is_multiple_of(2) { SHARED[k % 3].clone() } else { format!("d-{}", k % 3).into() }),
                deployment_model: (k % 7 != 3).then(|| "upstream".into()),
                provider: ["vllm", "openai"][(k / 3) % 2].into(),
                api_base: k.is_multiple_of(2).then(|| "http://127.0.0.1:1/v1".into()),
                spend: [0.0, 0.25, 2.5, 1e-9][k % 4],
                provider_cost: (k % 9) as f64 / 8.0,
                billing_unit: ["token", "image", "character"][(k / 2) % 3],
                prompt_tokens: (k % 6) as i64,
                completion_tokens: (k % 4) as i64 * 10,
                total_tokens: (k % 6 + k % 4 * 10) as i64,
                prompt_tokens_cached: k.is_multiple_of(11) as i64,
                images: k.is_multiple_of(13) as i64 * 2,
                characters: (k % 8) as i64 * 100,
                audio_seconds: (k % 5) as f64 / 2.0,
                unpriced_reason: (k % 4 == 1).then_some("no token prices configured for the deployment"),
                request_tags: if k.is_multiple_of(3) { "[]".into() } else { format!("[\"t{}\"]", k % 2).into() },
                metadata: if k.is_multiple_of(10) {
                    "{}".into()
                } else if k.is_multiple_of(2) {
                    SHARED[3 + k % 3].clone()
                } else {
                    format!("{{\"attempts\":{}}}", k % 3).into()
                },
                status: ["success", "failure", "client_disconnected"][(k / 4) % 3],
                http_status_code: [200, 502, 499][(k / 4) % 3],
                error_type: ((k / 4) % 3 == 1).then_some("api_error"),
                stream: k % 3 == 1,
                latency_ms: (k % 17) as i64,
                start_time,
                end_time: start_time + chrono::TimeDelta::milliseconds((k % 17) as i64),
            }
        })
        .collect()
}

/// The row a record should read back as (`id` aside).
fn expected(r: &SpendRecord) -> deltallm_storage::entity::spend_log::Model {
    deltallm_storage::entity::spend_log::Model {
        id: 0,
        request_id: r.request_id.clone(),
        call_type: r.call_type.to_owned(),
        model: r.model.to_string(),
        deployment_id: r.deployment_id.as_deref().map(str::to_owned),
        deployment_model: r.deployment_model.as_deref().map(str::to_owned),
        provider: r.provider.to_string(),
        api_base: r.api_base.as_deref().map(str::to_owned),
        spend: r.spend,
        provider_cost: r.provider_cost,
        billing_unit: r.billing_unit.to_owned(),
        prompt_tokens: r.prompt_tokens,
        completion_tokens: r.completion_tokens,
        total_tokens: r.total_tokens,
        prompt_tokens_cached: r.prompt_tokens_cached,
        images: r.images,
        characters: r.characters,
        audio_seconds: r.audio_seconds,
        unpriced_reason: r.unpriced_reason.map(str::to_owned),
        request_tags: r.request_tags.to_string(),
        metadata: r.metadata.to_string(),
        status: r.status.to_owned(),
        http_status_code: r.http_status_code,
        error_type: r.error_type.map(str::to_owned),
        stream: r.stream,
        latency_ms: r.latency_ms,
        start_time: r.start_time,
        end_time: r.end_time,
    }
}

/// Batches of 37, 8, 1 and 53 records (every statement size, reused with
/// other values in each position) read back field for field.
async fn every_field_reads_back(store: &Store) {
    let mut all = Vec::new();
    for (batch, n) in [37, 8, 1, 53].into_iter().enumerate() {
        let records = varied(batch, n);
        all.extend(records.iter().map(expected));
        store.insert_spend(records).await.unwrap();
    }
    let mut rows = store.recent_spend(1000).await.unwrap();
    rows.reverse();
    assert_eq!(rows.len(), all.len());
    for (got, want) in rows.into_iter().zip(&all) {
        assert_eq!(&deltallm_storage::entity::spend_log::Model { id: 0, ..got }, want);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_field_of_every_record_reads_back_from_an_in_memory_database() {
    every_field_reads_back(&store("sqlite::memory:").await).await;
}

// The database file's own writer thread (SQLite) and the pool's driver (PostgreSQL).
on_both_backends!(every_field_of_every_record_reads_back, |url: String| async move {
    every_field_reads_back(&store(&url).await).await;
});

async fn page_size(store: &Store) -> i64 {
    let row = store
        .connection()
        .query_one_raw(sea_orm::Statement::from_string(sea_orm::DatabaseBackend::Sqlite, "PRAGMA page_size"))
        .await
        .unwrap()
        .unwrap();
    row.try_get_by_index(0).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_new_database_file_gets_16k_pages_and_an_older_4k_file_keeps_its_own() {
    let dir = tempfile::tempdir().unwrap();
    let fresh = store(&format!("sqlite://{}?mode=rwc", dir.path().join("new.db").display())).await;
    assert_eq!(page_size(&fresh).await, 16384);
    fresh.insert_spend(records("new", 300)).await.unwrap();
    assert_eq!(requests(&fresh).await, 300);

    // A file made by an earlier release: 4 KiB pages, already in WAL mode,
    // where SQLite cannot change the page size. It opens and records as before.
    let old_path = dir.path().join("old.db");
    {
        let opts = sea_orm::sqlx::sqlite::SqliteConnectOptions::new()
            .filename(&old_path)
            .create_if_missing(true)
            .page_size(4096)
            .journal_mode(sea_orm::sqlx::sqlite::SqliteJournalMode::Wal);
        let pool = sea_orm::sqlx::SqlitePool::connect_with(opts).await.unwrap();
        sea_orm::sqlx::query("CREATE TABLE earlier (x INTEGER)").execute(&pool).await.unwrap();
        pool.close().await;
    }
    let old = store(&format!("sqlite://{}?mode=rwc", old_path.display())).await;
    assert_eq!(page_size(&old).await, 4096);
    old.insert_spend(records("old", 300)).await.unwrap();
    assert_eq!(requests(&old).await, 300);
}

/// The nice value in a `/proc/.../stat` line (field 19; the command name in
/// parentheses may hold spaces, so fields are counted after its `)`).
#[cfg(target_os = "linux")]
fn nice_in(stat: &str) -> i32 {
    let after = &stat[stat.rfind(')').unwrap() + 2..];
    after.split(' ').nth(16).unwrap().parse().unwrap()
}

#[cfg(target_os = "linux")]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_writer_thread_runs_at_a_lower_priority_than_the_request_path() {
    let dir = tempfile::tempdir().unwrap();
    let store = store(&format!("sqlite://{}?mode=rwc", dir.path().join("spend.db").display())).await;
    store.insert_spend(records("nice", 3)).await.unwrap();

    let process = nice_in(&std::fs::read_to_string("/proc/self/stat").unwrap());
    let mut writers = 0;
    for task in std::fs::read_dir("/proc/self/task").unwrap() {
        let task = task.unwrap().path();
        let Ok(comm) = std::fs::read_to_string(task.join("comm")) else { continue };
        if comm.trim_end() == "deltallm-spend" {
            writers += 1;
            let nice = nice_in(&std::fs::read_to_string(task.join("stat")).unwrap());
            assert_eq!(nice, (process + 5).min(19), "the writer thread is 5 nice units below the process");
        }
    }
    assert!(writers > 0, "the insert started a writer thread");
    assert_eq!(requests(&store).await, 3);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_write_ahead_log_is_checkpointed_every_few_megabytes() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("spend.db");
    let store = store(&format!("sqlite://{}?mode=rwc", path.display())).await;
    // Well over 6 MB of WAL frames, in 256-record batches as the spend queue writes them.
    for batch in 0..120 {
        store.insert_spend(varied(batch, 256)).await.unwrap();
    }
    let wal = std::fs::metadata(dir.path().join("spend.db-wal")).unwrap().len();
    // SQLite reuses the log from its start after a checkpoint: its file stays
    // near the checkpoint size (16 MB if the writer kept SQLite's default of
    // 1000 pages with 16 KiB pages).
    assert!(wal < 6 * 1024 * 1024, "WAL file is {wal} bytes");
    assert_eq!(requests(&store).await, 120 * 256);
}
