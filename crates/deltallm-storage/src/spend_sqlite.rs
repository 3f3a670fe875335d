//! The SQLite spend insert, on a thread of its own with its own connection.
//!
//! This is the one write that runs once per proxied request. Through the
//! pool's driver each batch costs three round trips to the driver's database
//! thread (`BEGIN`, the insert, `COMMIT`), and the multi-row statement binds
//! thousands of values whose copies no longer fit SQLite's small-allocation
//! slots. Here one thread owns one connection and two prepared `INSERT`s
//! (8 rows and 1), runs a whole batch in one transaction, and is woken once
//! per batch. A statement parameter is bound again only when its value
//! changed, and `OR ROLLBACK` spares SQLite a statement journal. WAL lets the
//! pool's connections read and write beside it; the busy timeout orders its
//! writes with theirs, on this thread rather than on the async runtime.

use std::borrow::Cow;
use std::path::PathBuf;
use std::sync::mpsc;
use std::sync::{Arc, OnceLock};
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

/// How much lower than the process's the writer thread's priority is (nice
/// units). On a gateway with one core the writer shares it with the request
/// path, and a 256-record batch is about 0.8 ms of work: at the same priority
/// a request arriving meanwhile waits for it, which was the whole of the
/// gateway's p99 at low load. At +5 the scheduler still gives the writer a
/// quarter of a busy core, and at saturation it needs about a sixth
/// (docs/benchmarks.md, step 44).
#[cfg_attr(not(target_os = "linux"), allow(dead_code))]
const WRITER_NICE: i32 = 5;

/// Lowers the calling thread's priority by [`WRITER_NICE`]. On Linux a
/// thread id names one thread for `setpriority`; elsewhere this does nothing.
fn lower_priority() {
    #[cfg(target_os = "linux")]
    {
        use rustix::process::{getpriority_process, setpriority_process};
        let tid = Some(rustix::thread::gettid());
        let lowered = getpriority_process(tid).and_then(|nice| setpriority_process(tid, (nice + WRITER_NICE).min(19)));
        if let Err(e) = lowered {
            tracing::debug!(error = %e, "spend writer keeps the process's priority");
        }
    }
}

/// The thread: one connection, opened on the first batch and again after a
/// failed one, so a database that went away is found once it is back.
fn run(path: &std::path::Path, jobs: &mpsc::Receiver<Job>) {
    lower_priority();
    while let Ok(job) = jobs.recv() {
        let conn = match open(path) {
            Ok(conn) => conn,
            Err(e) => {
                let _ = job.done.send(Err(sqlite_error(&e)));
                continue;
            }
        };
        let mut writer = match Writer::prepare(&conn) {
            Ok(writer) => writer,
            Err(e) => {
                let _ = job.done.send(Err(sqlite_error(&e)));
                continue;
            }
        };
        let mut next = Some(job);
        while let Some(job) = next.take() {
            let result = writer.write_batch(&conn, &job.records);
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
    // Appending rows touches only the last pages of the table and its index,
    // so 512 KiB serves the writer as well as SQLite's 2 MiB default and
    // keeps 1.5 MiB out of the gateway's RSS (docs/benchmarks.md, step 33).
    // A 256-record batch dirties about 35 pages of 4 KiB or 10 of 16 KiB
    // (the size of a new file, see `Store::connect`); 128 or 32 fit.
    conn.execute_batch("PRAGMA cache_size = -512")?;
    // Checkpoints of about 4 MB whatever the page size (SQLite's default is
    // 1000 pages, 16 MB with the 16 KiB pages of a new file). The checkpoint
    // that follows a commit runs on this thread and ends with an `fsync`;
    // while it runs, records wait in the gateway's bounded queue (10,000 by
    // default, a quarter of a second at 40,000 requests a second), so a
    // quarter of the copy keeps that wait short.
    let page_size: i64 = conn.query_row("PRAGMA page_size", [], |row| row.get(0))?;
    conn.pragma_update(None, "wal_autocheckpoint", (CHECKPOINT_BYTES / page_size.max(512)).max(1))?;
    Ok(conn)
}

/// WAL bytes after which a commit checkpoints (SQLite's 1000 pages of 4 KiB).
const CHECKPOINT_BYTES: i64 = 4_096_000;

/// The connection's prepared statements: the transaction's two ends and one
/// `INSERT` per size in [`ROWS_PER_STATEMENT`].
struct Writer<'c> {
    begin: Statement<'c>,
    commit: Statement<'c>,
    inserts: Vec<Insert<'c>>,
    time: TimeText,
}

/// Timestamp text for binding: SQLite copies a bound text at once, so one
/// buffer serves every timestamp of every batch.
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

impl<'c> Writer<'c> {
    fn prepare(conn: &'c Connection) -> rusqlite::Result<Self> {
        let persistent = |sql: &str| conn.prepare_with_flags(sql, rusqlite::PrepFlags::SQLITE_PREPARE_PERSISTENT);
        Ok(Self {
            // IMMEDIATE: take the write lock at BEGIN, where the busy timeout applies.
            begin: persistent("BEGIN IMMEDIATE")?,
            commit: persistent("COMMIT")?,
            inserts: ROWS_PER_STATEMENT
                .iter()
                .map(|rows| {
                    persistent(&insert_sql(*rows)).map(|stmt| Insert {
                        stmt,
                        last: std::iter::repeat_with(Bound::default).take(rows * SPEND_COLUMNS.len()).collect(),
                    })
                })
                .collect::<rusqlite::Result<_>>()?,
            time: TimeText::default(),
        })
    }

    /// One transaction for the batch; rolled back whole if any row fails.
    fn write_batch(&mut self, conn: &Connection, records: &[SpendRecord]) -> rusqlite::Result<()> {
        self.begin.raw_execute()?;
        let mut inserted = Ok(());
        let mut rest = records;
        for (rows, insert) in ROWS_PER_STATEMENT.iter().zip(self.inserts.iter_mut()) {
            while rest.len() >= *rows && inserted.is_ok() {
                let (now, later) = rest.split_at(*rows);
                inserted = insert.run(now, &mut self.time);
                rest = later;
            }
        }
        match inserted.and_then(|()| self.commit.raw_execute().map(drop)) {
            Ok(()) => Ok(()),
            Err(e) => {
                // `OR ROLLBACK` may already have ended the transaction.
                if !conn.is_autocommit() {
                    let _ = conn.execute_batch("ROLLBACK");
                }
                Err(e)
            }
        }
    }
}

/// What a parameter of a prepared statement holds. SQLite keeps a bound
/// value (its own copy of a text) from one execution to the next, so a
/// parameter whose new value equals the held one is not bound again: most
/// columns of a record (model, deployment, provider, base URL, route
/// metadata, status, most counters) repeat the previous record's in the same
/// row position, and rebinding a text costs SQLite a free, a malloc and a copy.
#[derive(Default)]
enum Bound {
    /// Never bound, or holding a value not worth comparing (ids, times).
    #[default]
    Unknown,
    Null,
    Int(i64),
    /// The bits of an `f64`, so that equality is exact (and `-0.0 != 0.0`).
    Real(u64),
    /// A copy of a text the record only lends.
    Text(String),
    /// A record's shared text, held so that its allocation stays alive: the
    /// same allocation next time is the same text, settled without reading
    /// it (deployment, provider, base URL and route metadata come from the
    /// registry this way).
    Shared(Arc<str>),
    /// A text of a fixed vocabulary: the same slice is the same text.
    Static(&'static str),
}

impl Bound {
    /// Does the held value stand for `value` (`None` for NULL)?
    fn holds(&self, value: Option<&str>) -> bool {
        match (self, value) {
            (Bound::Null, None) => true,
            (Bound::Text(held), Some(v)) => held == v,
            (Bound::Shared(held), Some(v)) => **held == *v,
            (Bound::Static(held), Some(v)) => *held == v,
            _ => false,
        }
    }
}

/// A prepared multi-row `INSERT` and what each of its parameters holds.
struct Insert<'c> {
    stmt: Statement<'c>,
    last: Vec<Bound>,
}

impl Insert<'_> {
    /// Binds `records` (as many as the statement has rows) and runs the insert.
    fn run(&mut self, records: &[SpendRecord], time: &mut TimeText) -> rusqlite::Result<()> {
        for (row, r) in records.iter().enumerate() {
            self.bind_record(row * SPEND_COLUMNS.len(), r, time)?;
        }
        self.stmt.raw_execute().map(drop)
    }

    /// Binds one record in [`SPEND_COLUMNS`] order after parameter `at`.
    fn bind_record(&mut self, at: usize, r: &SpendRecord, time: &mut TimeText) -> rusqlite::Result<()> {
        self.fresh(at, r.request_id.as_str())?;
        self.fixed(at + 1, Some(r.call_type))?;
        self.shared(at + 2, Some(&r.model))?;
        self.shared(at + 3, r.deployment_id.as_ref())?;
        self.shared(at + 4, r.deployment_model.as_ref())?;
        self.shared(at + 5, Some(&r.provider))?;
        self.shared(at + 6, r.api_base.as_ref())?;
        self.real(at + 7, r.spend)?;
        self.real(at + 8, r.provider_cost)?;
        self.fixed(at + 9, Some(r.billing_unit))?;
        self.int(at + 10, r.prompt_tokens)?;
        self.int(at + 11, r.completion_tokens)?;
        self.int(at + 12, r.total_tokens)?;
        self.int(at + 13, r.prompt_tokens_cached)?;
        self.int(at + 14, r.images)?;
        self.int(at + 15, r.characters)?;
        self.real(at + 16, r.audio_seconds)?;
        self.fixed(at + 17, r.unpriced_reason)?;
        match &r.request_tags {
            Cow::Borrowed(tags) => self.fixed(at + 18, Some(tags))?,
            Cow::Owned(tags) => self.text(at + 18, Some(tags))?,
        }
        self.shared(at + 19, Some(&r.metadata))?;
        self.fixed(at + 20, Some(r.status))?;
        self.int(at + 21, i64::from(r.http_status_code))?;
        self.fixed(at + 22, r.error_type)?;
        self.int(at + 23, i64::from(r.stream))?;
        self.int(at + 24, r.latency_ms)?;
        self.fresh(at + 25, time.text(r.start_time))?;
        self.fresh(at + 26, time.text(r.end_time))
    }

    /// Parameter `i` (0-based) to a text that differs from record to record.
    fn fresh(&mut self, i: usize, value: &str) -> rusqlite::Result<()> {
        self.last[i] = Bound::Unknown;
        self.stmt.raw_bind_parameter(i + 1, value)
    }

    /// Parameter `i` to a shared text (or NULL). The same allocation as the
    /// held one needs no look at the text; an equal text in another
    /// allocation needs no binding, and is held from now on.
    fn shared(&mut self, i: usize, value: Option<&Arc<str>>) -> rusqlite::Result<()> {
        if let (Bound::Shared(held), Some(v)) = (&self.last[i], value)
            && Arc::ptr_eq(held, v)
        {
            return Ok(());
        }
        self.hold(i, value.map(|v| &**v), || value.map_or(Bound::Null, |v| Bound::Shared(v.clone())))
    }

    /// Parameter `i` to a text of a fixed vocabulary (or NULL).
    fn fixed(&mut self, i: usize, value: Option<&'static str>) -> rusqlite::Result<()> {
        if let (Bound::Static(held), Some(v)) = (&self.last[i], value)
            && std::ptr::eq(*held, v)
        {
            return Ok(());
        }
        self.hold(i, value, || value.map_or(Bound::Null, Bound::Static))
    }

    /// Binds `value` unless the held value already stands for it, and holds `next`.
    fn hold(&mut self, i: usize, value: Option<&str>, next: impl FnOnce() -> Bound) -> rusqlite::Result<()> {
        if !self.last[i].holds(value) {
            match value {
                Some(v) => self.stmt.raw_bind_parameter(i + 1, v)?,
                None => self.stmt.raw_bind_parameter(i + 1, rusqlite::types::Null)?,
            }
        }
        self.last[i] = next();
        Ok(())
    }

    /// Parameter `i` to a text the record only lends (request tags a client
    /// sent): held as a copy, whose buffer is reused for the next one.
    fn text(&mut self, i: usize, value: Option<&str>) -> rusqlite::Result<()> {
        if let (Bound::Text(held), Some(v)) = (&mut self.last[i], value) {
            if held != v {
                self.stmt.raw_bind_parameter(i + 1, v)?;
                held.clear();
                held.push_str(v);
            }
            return Ok(());
        }
        self.hold(i, value, || value.map_or(Bound::Null, |v| Bound::Text(v.to_owned())))
    }

    fn int(&mut self, i: usize, value: i64) -> rusqlite::Result<()> {
        if matches!(self.last[i], Bound::Int(held) if held == value) {
            return Ok(());
        }
        self.stmt.raw_bind_parameter(i + 1, value)?;
        self.last[i] = Bound::Int(value);
        Ok(())
    }

    fn real(&mut self, i: usize, value: f64) -> rusqlite::Result<()> {
        if matches!(self.last[i], Bound::Real(held) if held == value.to_bits()) {
            return Ok(());
        }
        self.stmt.raw_bind_parameter(i + 1, value)?;
        self.last[i] = Bound::Real(value.to_bits());
        Ok(())
    }
}

/// Rows per prepared statement, largest first; a batch is split into these.
/// Under callgrind a record cost 12.8k instructions with 8-row statements and
/// 13.0k with 16, 32 or 64 rows (before parameters were reused: 17.5k with 8
/// rows, 21.6k with single rows, 19.4k with 16, as the copies of the bound
/// texts outgrew SQLite's small-allocation slots).
const ROWS_PER_STATEMENT: [usize; 2] = [8, 1];

/// `INSERT OR ROLLBACK INTO spend_logs (...) VALUES (?, ...), ...` for `rows`
/// rows. `OR ROLLBACK`: a failing row ends the whole batch's transaction
/// anyway, so SQLite need not keep a statement journal to undo just the one
/// statement (it copied every page the statement touched).
fn insert_sql(rows: usize) -> String {
    let row = format!("({})", vec!["?"; SPEND_COLUMNS.len()].join(", "));
    format!("INSERT OR ROLLBACK INTO spend_logs ({}) VALUES {}", SPEND_COLUMNS.join(", "), vec![row; rows].join(", "))
}
