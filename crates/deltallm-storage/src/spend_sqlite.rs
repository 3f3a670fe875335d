//! The SQLite spend insert, on a thread of its own with its own connection.
//!
//! This is the one write that runs once per proxied request. Through the
//! pool's driver each batch costs three round trips to the driver's database
//! thread (`BEGIN`, the insert, `COMMIT`), and the multi-row statement binds
//! thousands of values whose copies no longer fit SQLite's small-allocation
//! slots. Here one thread owns one connection and two prepared `INSERT`s
//! (8 rows and 1), runs a whole batch in one transaction, and is woken once
//! per batch. WAL lets the pool's connections read and write beside it; the
//! busy timeout orders its writes with theirs, on this thread rather than on
//! the async runtime.

use std::path::PathBuf;
use std::sync::OnceLock;
use std::sync::mpsc;
use std::time::Duration;

use rusqlite::{Connection, OpenFlags, Statement};
use tokio::sync::oneshot;

use crate::spend::{SPEND_COLUMNS, SpendRecord, TimestampFormat};
use crate::{Error, Result};

/// How long a batch waits for another connection's write lock.
const BUSY_TIMEOUT: Duration = Duration::from_secs(5);

struct Job {
    records: Vec<SpendRecord>,
    done: oneshot::Sender<Result<()>>,
}

/// Handle to the writer thread of one database file. The thread starts with
/// the first batch and ends when the last handle is dropped.
#[derive(Debug)]
pub(crate) struct SqliteSpendWriter {
    path: PathBuf,
    jobs: OnceLock<std::io::Result<mpsc::Sender<Job>>>,
}

impl SqliteSpendWriter {
    /// A writer for the database file at `path`.
    pub(crate) fn new(path: PathBuf) -> Self {
        Self { path, jobs: OnceLock::new() }
    }

    /// Write `records` in one transaction; resolves when it is committed.
    pub(crate) async fn insert(&self, records: Vec<SpendRecord>) -> Result<()> {
        let jobs = self.jobs.get_or_init(|| {
            let (tx, rx) = mpsc::channel();
            let path = self.path.clone();
            std::thread::Builder::new().name("deltallm-spend".into()).spawn(move || run(&path, &rx)).map(|_| tx)
        });
        let jobs = jobs.as_ref().map_err(|e| failed(format!("cannot start the spend writer thread: {e}")))?;
        let (done, wait) = oneshot::channel();
        jobs.send(Job { records, done }).map_err(|_| failed("the spend writer thread has stopped".into()))?;
        wait.await.unwrap_or_else(|_| Err(failed("the spend writer thread has stopped".into())))
    }
}

fn failed(message: String) -> Error {
    Error::Db(sea_orm::DbErr::Custom(message))
}

fn sqlite_error(e: &rusqlite::Error) -> Error {
    failed(format!("spend insert: {e}"))
}

/// The thread: one connection, opened on the first batch and again after a
/// failed one, so a database that went away is found once it is back.
fn run(path: &std::path::Path, jobs: &mpsc::Receiver<Job>) {
    while let Ok(job) = jobs.recv() {
        let conn = match open(path) {
            Ok(conn) => conn,
            Err(e) => {
                let _ = job.done.send(Err(sqlite_error(&e)));
                continue;
            }
        };
        let prepared: rusqlite::Result<Vec<Statement<'_>>> = ROWS_PER_STATEMENT
            .iter()
            .map(|rows| conn.prepare_with_flags(&insert_sql(*rows), rusqlite::PrepFlags::SQLITE_PREPARE_PERSISTENT))
            .collect();
        let mut stmts = match prepared {
            Ok(stmts) => stmts,
            Err(e) => {
                let _ = job.done.send(Err(sqlite_error(&e)));
                continue;
            }
        };
        let mut next = Some(job);
        while let Some(job) = next.take() {
            let result = write_batch(&conn, &mut stmts, &job.records);
            let ok = result.is_ok();
            let _ = job.done.send(result.map_err(|e| sqlite_error(&e)));
            if !ok {
                break;
            }
            next = jobs.recv().ok();
        }
    }
}

fn open(path: &std::path::Path) -> rusqlite::Result<Connection> {
    // No create flag: the pool and its migrations made the file; a missing
    // file is an error here, not a fresh empty database.
    let conn = Connection::open_with_flags(path, OpenFlags::SQLITE_OPEN_READ_WRITE | OpenFlags::SQLITE_OPEN_NO_MUTEX)?;
    conn.busy_timeout(BUSY_TIMEOUT)?;
    // As on the pool's connections (see `Store::connect`); WAL itself is a
    // property of the file, set there.
    conn.execute_batch("PRAGMA synchronous = NORMAL")?;
    Ok(conn)
}

/// One transaction for the batch; rolled back whole if any row fails.
fn write_batch(conn: &Connection, stmts: &mut [Statement<'_>], records: &[SpendRecord]) -> rusqlite::Result<()> {
    // IMMEDIATE: take the write lock at BEGIN, where the busy timeout applies.
    conn.execute_batch("BEGIN IMMEDIATE")?;
    let mut inserted = Ok(());
    let mut rest = records;
    let mut time = TimeText::default();
    for (rows, stmt) in ROWS_PER_STATEMENT.iter().zip(stmts.iter_mut()) {
        while rest.len() >= *rows && inserted.is_ok() {
            let (now, later) = rest.split_at(*rows);
            inserted = insert_rows(stmt, now, &mut time);
            rest = later;
        }
    }
    for stmt in stmts.iter_mut() {
        // Bound texts are copied by SQLite; dropping them keeps none alive between batches.
        stmt.clear_bindings();
    }
    match inserted.and_then(|()| conn.execute_batch("COMMIT")) {
        Ok(()) => Ok(()),
        Err(e) => {
            if !conn.is_autocommit() {
                let _ = conn.execute_batch("ROLLBACK");
            }
            Err(e)
        }
    }
}

/// Timestamp text for binding: SQLite copies a bound text at once, so one
/// buffer serves every timestamp of a batch.
#[derive(Default)]
struct TimeText {
    format: TimestampFormat,
    buf: String,
}

impl TimeText {
    fn text(&mut self, t: chrono::DateTime<chrono::Utc>) -> &str {
        self.format.write(t, &mut self.buf);
        &self.buf
    }
}

/// Binds `records` (as many as the statement has rows) and runs the insert.
fn insert_rows(stmt: &mut Statement<'_>, records: &[SpendRecord], time: &mut TimeText) -> rusqlite::Result<()> {
    for (row, r) in records.iter().enumerate() {
        bind_record(stmt, row * SPEND_COLUMNS.len(), r, time)?;
    }
    stmt.raw_execute().map(drop)
}

/// Binds one record in [`SPEND_COLUMNS`] order after parameter `at`.
fn bind_record(stmt: &mut Statement<'_>, at: usize, r: &SpendRecord, time: &mut TimeText) -> rusqlite::Result<()> {
    stmt.raw_bind_parameter(at + 1, r.request_id.as_str())?;
    stmt.raw_bind_parameter(at + 2, r.call_type)?;
    stmt.raw_bind_parameter(at + 3, &*r.model)?;
    stmt.raw_bind_parameter(at + 4, r.deployment_id.as_deref())?;
    stmt.raw_bind_parameter(at + 5, r.deployment_model.as_deref())?;
    stmt.raw_bind_parameter(at + 6, &*r.provider)?;
    stmt.raw_bind_parameter(at + 7, r.api_base.as_deref())?;
    stmt.raw_bind_parameter(at + 8, r.spend)?;
    stmt.raw_bind_parameter(at + 9, r.provider_cost)?;
    stmt.raw_bind_parameter(at + 10, r.billing_unit)?;
    stmt.raw_bind_parameter(at + 11, r.prompt_tokens)?;
    stmt.raw_bind_parameter(at + 12, r.completion_tokens)?;
    stmt.raw_bind_parameter(at + 13, r.total_tokens)?;
    stmt.raw_bind_parameter(at + 14, r.prompt_tokens_cached)?;
    stmt.raw_bind_parameter(at + 15, r.images)?;
    stmt.raw_bind_parameter(at + 16, r.characters)?;
    stmt.raw_bind_parameter(at + 17, r.audio_seconds)?;
    stmt.raw_bind_parameter(at + 18, r.unpriced_reason)?;
    stmt.raw_bind_parameter(at + 19, &*r.request_tags)?;
    stmt.raw_bind_parameter(at + 20, &*r.metadata)?;
    stmt.raw_bind_parameter(at + 21, r.status)?;
    stmt.raw_bind_parameter(at + 22, r.http_status_code)?;
    stmt.raw_bind_parameter(at + 23, r.error_type)?;
    stmt.raw_bind_parameter(at + 24, r.stream)?;
    stmt.raw_bind_parameter(at + 25, r.latency_ms)?;
    stmt.raw_bind_parameter(at + 26, time.text(r.start_time))?;
    stmt.raw_bind_parameter(at + 27, time.text(r.end_time))
}

/// Rows per prepared statement, largest first; a batch is split into these.
/// Eight rows bind about 110 texts, whose copies still fit SQLite's
/// small-allocation slots: under callgrind a record cost 17.5k instructions
/// with 8-row statements, 21.6k with single rows and 19.4k with 16 rows.
const ROWS_PER_STATEMENT: [usize; 2] = [8, 1];

/// `INSERT INTO spend_logs (...) VALUES (?, ...), ...` for `rows` rows.
fn insert_sql(rows: usize) -> String {
    let row = format!("({})", vec!["?"; SPEND_COLUMNS.len()].join(", "));
    format!("INSERT INTO spend_logs ({}) VALUES {}", SPEND_COLUMNS.join(", "), vec![row; rows].join(", "))
}
