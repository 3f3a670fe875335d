//! Spend records (SPEND-3) and per-model/provider/deployment totals.

use chrono::{DateTime, Utc};
use sea_orm::sea_query::{Alias, Expr, Func};
use std::borrow::Cow;
use std::cell::RefCell;
use std::sync::{Arc, OnceLock};

use sea_orm::{
    ColumnTrait, ConnectionTrait, DbBackend, EntityTrait, FromQueryResult, QueryFilter, QueryOrder, QuerySelect,
};
use serde::Serialize;

use crate::entity::spend_log as row;
use crate::spend_sqlite::SqliteSpendWriter;
use crate::{Error, Result, Store};

/// One request's spend event.
///
/// Text shared by many records (model, deployment, provider, base URL) is
/// `Arc<str>`, taken from the registry without copying; fixed vocabularies
/// (call type, billing unit, status, reasons) are `&'static str`. Neither is
/// copied on its way to SQLite: both bind as shared slices.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct SpendRecord {
    /// Gateway request id.
    pub request_id: String,
    /// `chat_completion`, `embedding`, ...
    pub call_type: &'static str,
    /// Public model (what the client asked for).
    pub model: Arc<str>,
    /// Served deployment.
    pub deployment_id: Option<Arc<str>>,
    /// Upstream model id of the served deployment.
    pub deployment_model: Option<Arc<str>>,
    /// Provider attribution (SPEND-4).
    pub provider: Arc<str>,
    /// Upstream base URL.
    pub api_base: Option<Arc<str>>,
    /// Cost charged (USD).
    pub spend: f64,
    /// Provider cost (USD, sync prices).
    pub provider_cost: f64,
    /// token, image, character, second.
    pub billing_unit: &'static str,
    /// Prompt tokens.
    pub prompt_tokens: i64,
    /// Completion tokens.
    pub completion_tokens: i64,
    /// Total tokens.
    pub total_tokens: i64,
    /// Cached prompt tokens.
    pub prompt_tokens_cached: i64,
    /// Images generated.
    pub images: i64,
    /// Characters synthesized.
    pub characters: i64,
    /// Audio seconds.
    pub audio_seconds: f64,
    /// Why the cost is 0 when unpriced.
    pub unpriced_reason: Option<&'static str>,
    /// `metadata.tags` of the request (JSON array text; `[]` needs no allocation).
    pub request_tags: Cow<'static, str>,
    /// Route decision and other metadata (JSON object text; usually the
    /// text the registry wrote once for the route, shared).
    pub metadata: Arc<str>,
    /// `success`, `failure`, `client_disconnected`.
    pub status: &'static str,
    /// HTTP status returned to the client.
    pub http_status_code: i32,
    /// Error class on failure.
    pub error_type: Option<&'static str>,
    /// Streaming request.
    pub stream: bool,
    /// Total latency.
    pub latency_ms: i64,
    /// Start.
    pub start_time: DateTime<Utc>,
    /// End.
    pub end_time: DateTime<Utc>,
}

/// Grouping of the spend summary.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SpendGroupBy {
    /// By public model.
    Model,
    /// By provider.
    Provider,
    /// By served deployment.
    Deployment,
}

/// One row of the spend summary.
#[derive(Debug, Clone, PartialEq, Serialize, FromQueryResult)]
pub struct SpendSummaryRow {
    /// The group value.
    pub key: Option<String>,
    /// Requests.
    pub requests: i64,
    /// Total spend (USD).
    pub spend: f64,
    /// Prompt tokens.
    pub prompt_tokens: i64,
    /// Completion tokens.
    pub completion_tokens: i64,
    /// Total tokens.
    pub total_tokens: i64,
}

/// Columns written by [`Store::insert_spend`], in bind order.
pub(crate) const SPEND_COLUMNS: [&str; 27] = [
    "request_id",
    "call_type",
    "model",
    "deployment_id",
    "deployment_model",
    "provider",
    "api_base",
    "spend",
    "provider_cost",
    "billing_unit",
    "prompt_tokens",
    "completion_tokens",
    "total_tokens",
    "prompt_tokens_cached",
    "images",
    "characters",
    "audio_seconds",
    "unpriced_reason",
    "request_tags",
    "metadata",
    "status",
    "http_status_code",
    "error_type",
    "stream",
    "latency_ms",
    "start_time",
    "end_time",
];

/// Rows per statement on PostgreSQL (and an in-memory SQLite database),
/// largest first; a batch is split into these sizes and the gateway's spend
/// writer sends batches of up to 256. Each statement is a round trip to the
/// database, so a full batch is one. A SQLite file is written by
/// [`crate::spend_sqlite`] instead.
const ROW_CHUNKS: [usize; 9] = [256, 128, 64, 32, 16, 8, 4, 2, 1];

/// A `&'static str` as a shared slice, made once per thread and string: the
/// SQLite driver binds an `Arc<str>` without copying it, but copies a `&str`
/// into a fresh allocation every time.
fn literal(s: &'static str) -> Arc<str> {
    thread_local! {
        static LITERALS: RefCell<Vec<(&'static str, Arc<str>)>> = const { RefCell::new(Vec::new()) };
    }
    LITERALS.with(|cache| {
        let mut cache = cache.borrow_mut();
        // Identity, not content: the vocabulary is a few dozen literals.
        if let Some((_, shared)) = cache.iter().find(|(k, _)| std::ptr::eq(*k, s)) {
            return shared.clone();
        }
        let shared: Arc<str> = Arc::from(s);
        cache.push((s, shared.clone()));
        shared
    })
}

/// Adds one record's values to the argument buffer `$args` in
/// [`SPEND_COLUMNS`] order. A macro rather than a function because the two
/// drivers' argument types differ.
macro_rules! bind_record {
    ($args:expr, $r:expr, $time:expr) => {{
        let r: SpendRecord = $r;
        let args = &mut $args;
        let add = || -> std::result::Result<(), sea_orm::sqlx::error::BoxDynError> {
            args.add(r.request_id)?;
            args.add(literal(r.call_type))?;
            args.add(r.model)?;
            args.add(r.deployment_id)?;
            args.add(r.deployment_model)?;
            args.add(r.provider)?;
            args.add(r.api_base)?;
            args.add(r.spend)?;
            args.add(r.provider_cost)?;
            args.add(literal(r.billing_unit))?;
            args.add(r.prompt_tokens)?;
            args.add(r.completion_tokens)?;
            args.add(r.total_tokens)?;
            args.add(r.prompt_tokens_cached)?;
            args.add(r.images)?;
            args.add(r.characters)?;
            args.add(r.audio_seconds)?;
            args.add(r.unpriced_reason.map(literal))?;
            args.add(r.request_tags)?;
            args.add(r.metadata)?;
            args.add(literal(r.status))?;
            args.add(r.http_status_code)?;
            args.add(r.error_type.map(literal))?;
            args.add(r.stream)?;
            args.add(r.latency_ms)?;
            args.add($time(r.start_time))?;
            args.add($time(r.end_time))?;
            Ok(())
        };
        add().map_err(sea_orm::sqlx::Error::Encode)?;
    }};
}

/// Writes timestamps exactly as the SQLite driver encodes a `DateTime<Utc>`
/// (`to_rfc3339_opts(AutoSi, false)`), so stored rows read back and compare
/// the same. The date and time of day are formatted once per second and
/// reused (a batch's records mostly share their second); the fraction is
/// written digit by digit. chrono's formatting machinery cost more per record
/// than the rest of the timestamp's way into the database.
#[derive(Debug, Default)]
pub(crate) struct TimestampFormat {
    /// The second (and leap flag) `prefix` was made for.
    second: Option<(i64, bool)>,
    /// `YYYY-MM-DDTHH:MM:SS` of that second.
    prefix: String,
}

impl TimestampFormat {
    /// `t` into `out` (cleared first).
    pub(crate) fn write(&mut self, t: DateTime<Utc>, out: &mut String) {
        use chrono::{Datelike, Timelike};
        out.clear();
        if !(0..=9999).contains(&t.year()) {
            out.push_str(&t.to_rfc3339_opts(chrono::SecondsFormat::AutoSi, false));
            return;
        }
        // A leap second is carried in the nanoseconds (≥ 1e9); chrono prints it
        // as second 60 of the same minute, which has the same timestamp as :59.
        let nanos = t.nanosecond();
        let key = (t.timestamp(), nanos >= 1_000_000_000);
        if self.second != Some(key) {
            self.prefix.clear();
            push_digits(&mut self.prefix, t.year() as u32, 4);
            self.prefix.push('-');
            push_digits(&mut self.prefix, t.month(), 2);
            self.prefix.push('-');
            push_digits(&mut self.prefix, t.day(), 2);
            self.prefix.push('T');
            push_digits(&mut self.prefix, t.hour(), 2);
            self.prefix.push(':');
            push_digits(&mut self.prefix, t.minute(), 2);
            self.prefix.push(':');
            push_digits(&mut self.prefix, t.second() + nanos / 1_000_000_000, 2);
            self.second = Some(key);
        }
        out.push_str(&self.prefix);
        let frac = nanos % 1_000_000_000;
        if frac != 0 {
            out.push('.');
            if frac.is_multiple_of(1_000_000) {
                push_digits(out, frac / 1_000_000, 3);
            } else if frac.is_multiple_of(1_000) {
                push_digits(out, frac / 1_000, 6);
            } else {
                push_digits(out, frac, 9);
            }
        }
        out.push_str("+00:00");
    }
}

/// `v` as exactly `n` decimal digits (zero-padded; `v` < 10^n).
fn push_digits(out: &mut String, v: u32, n: u32) {
    let mut scale = 10u32.pow(n - 1);
    while scale > 0 {
        out.push(char::from(b'0' + ((v / scale) % 10) as u8));
        scale /= 10;
    }
}

/// A timestamp as a shared slice, which the pool's SQLite driver binds as is
/// (one allocation; a `String` would be wrapped in a second one).
fn sqlite_timestamp(t: DateTime<Utc>) -> Arc<str> {
    let mut out = String::with_capacity(35);
    TimestampFormat::default().write(t, &mut out);
    Arc::from(out)
}

/// Inserts `records` in [`ROW_CHUNKS`]-sized statements inside the driver
/// transaction `txn`, then commits. `$time` encodes a timestamp for the driver.
/// Records are bound straight from the batch (no per-statement `Vec`), into
/// an argument buffer sized for the statement up front.
macro_rules! insert_in {
    ($txn:expr, $records:expr, $args:ty, $postgres:expr, $time:expr) => {{
        use sea_orm::sqlx::Arguments as _;
        let mut txn = $txn;
        let mut rest = $records.into_iter();
        while let Some(rows) = chunk_rows(rest.len()) {
            let mut args = <$args>::default();
            args.reserve(rows * SPEND_COLUMNS.len(), 0);
            for r in rest.by_ref().take(rows) {
                bind_record!(args, r, $time);
            }
            sea_orm::sqlx::query_with(insert_sql($postgres, rows), args).execute(&mut *txn).await?;
        }
        txn.commit().await?;
    }};
}

/// `INSERT INTO spend_logs (...) VALUES (...), ...` for `rows` rows (one of
/// [`ROW_CHUNKS`]), with the backend's placeholders. Built once and kept.
fn insert_sql(postgres: bool, rows: usize) -> &'static str {
    static CACHE: [[OnceLock<String>; ROW_CHUNKS.len()]; 2] =
        [const { [const { OnceLock::new() }; ROW_CHUNKS.len()] }; 2];
    let slot = ROW_CHUNKS.iter().position(|n| *n == rows).unwrap_or(ROW_CHUNKS.len() - 1);
    let rows = ROW_CHUNKS[slot];
    CACHE[usize::from(postgres)][slot].get_or_init(|| {
        let cols = &SPEND_COLUMNS;
        let mut sql = format!("INSERT INTO spend_logs ({}) VALUES ", cols.join(", "));
        let mut n = 0;
        for row in 0..rows {
            sql.push_str(if row == 0 { "(" } else { ", (" });
            for col in 0..cols.len() {
                n += 1;
                if col > 0 {
                    sql.push_str(", ");
                }
                if postgres {
                    sql.push('$');
                    sql.push_str(&n.to_string());
                } else {
                    sql.push('?');
                }
            }
            sql.push(')');
        }
        sql
    })
}

/// Rows in the next statement when `left` records remain (`None` when done).
fn chunk_rows(left: usize) -> Option<usize> {
    ROW_CHUNKS.iter().copied().find(|n| *n <= left)
}

/// SUM over a BIGINT column; PostgreSQL widens it to NUMERIC, so cast back.
fn int_sum(col: row::Column) -> Expr {
    Func::cast_as(Func::sum(Expr::col(col)), Alias::new("BIGINT")).into()
}

impl Store {
    /// Write a batch of spend records in one transaction: all of them or,
    /// on an error, none.
    ///
    /// This is the one write that runs once per proxied request, so it skips
    /// sea-orm, whose `Value`s copy every string twice more (about a third of
    /// the insert's CPU). A SQLite file is written by its own thread and
    /// connection ([`crate::spend_sqlite`]); PostgreSQL (and an in-memory
    /// SQLite database) through the pool's driver, in multi-row `INSERT`s of
    /// [`ROW_CHUNKS`] rows, so at most nine distinct statements exist and each
    /// stays in the driver's prepared-statement cache. No `RETURNING`: on
    /// SQLite fetching ids streams one row per record back from the database
    /// thread.
    pub async fn insert_spend(&self, records: Vec<SpendRecord>) -> Result<()> {
        if records.is_empty() {
            return Ok(());
        }
        match self.db.get_database_backend() {
            DbBackend::Sqlite => {
                if let Some(writer) = self.spend_sqlite_writer().await? {
                    return writer.insert(records).await;
                }
                // An in-memory database, which only the pool's connections can see.
                // IMMEDIATE: take the write lock at BEGIN, where the busy timeout applies.
                let txn = self.db.get_sqlite_connection_pool().begin_with("BEGIN IMMEDIATE").await?;
                insert_in!(txn, records, sea_orm::sqlx::sqlite::SqliteArguments, false, sqlite_timestamp);
            }
            DbBackend::Postgres => {
                let txn = self.db.get_postgres_connection_pool().begin().await?;
                insert_in!(txn, records, sea_orm::sqlx::postgres::PgArguments, true, std::convert::identity);
            }
            other => return Err(sea_orm::DbErr::Custom(format!("spend logs are not supported on {other:?}")).into()),
        }
        Ok(())
    }

    /// The writer thread for this SQLite database's file, started on first
    /// use; `None` for an in-memory database.
    async fn spend_sqlite_writer(&self) -> Result<Option<&SqliteSpendWriter>> {
        let writer = self
            .spend_sqlite
            .get_or_try_init(|| async {
                // SQLite's own answer, whatever form the URL took (relative, URI, ...).
                let sql = "SELECT file FROM pragma_database_list WHERE name = 'main'";
                let row = self.db.query_one_raw(sea_orm::Statement::from_string(DbBackend::Sqlite, sql)).await?;
                let file = row.map(|r| r.try_get::<String>("", "file")).transpose()?.unwrap_or_default();
                Ok::<_, Error>((!file.is_empty()).then(|| SqliteSpendWriter::new(file.into())))
            })
            .await?;
        Ok(writer.as_ref())
    }

    /// Totals grouped by model, provider or deployment within `[from, to)`.
    pub async fn spend_summary(
        &self,
        group_by: SpendGroupBy,
        from: Option<DateTime<Utc>>,
        to: Option<DateTime<Utc>>,
    ) -> Result<Vec<SpendSummaryRow>> {
        let col = match group_by {
            SpendGroupBy::Model => row::Column::Model,
            SpendGroupBy::Provider => row::Column::Provider,
            SpendGroupBy::Deployment => row::Column::DeploymentId,
        };
        let mut q = row::Entity::find().select_only().column_as(col, "key");
        q = q
            .column_as(Expr::from(Func::count(Expr::col(row::Column::Id))), "requests")
            .column_as(Expr::from(Func::sum(Expr::col(row::Column::Spend))), "spend")
            .column_as(int_sum(row::Column::PromptTokens), "prompt_tokens")
            .column_as(int_sum(row::Column::CompletionTokens), "completion_tokens")
            .column_as(int_sum(row::Column::TotalTokens), "total_tokens");
        if let Some(from) = from {
            q = q.filter(row::Column::StartTime.gte(from));
        }
        if let Some(to) = to {
            q = q.filter(row::Column::StartTime.lt(to));
        }
        let rows = q.group_by(col).order_by_asc(col).into_model::<SpendSummaryRow>().all(&self.db).await?;
        Ok(rows)
    }

    /// Recent spend records, newest first (tests and the admin view).
    pub async fn recent_spend(&self, limit: u64) -> Result<Vec<row::Model>> {
        Ok(row::Entity::find().order_by_desc(row::Column::Id).limit(limit).all(&self.db).await?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::TimeZone;

    #[test]
    fn sqlite_timestamps_match_the_driver_encoding() {
        let base = Utc.with_ymd_and_hms(2026, 3, 7, 4, 5, 9).unwrap();
        for nanos in [0, 5_000_000, 120_000_000, 123_456_000, 7_000, 123_456_789, 1, 999_999_999] {
            let t = base + chrono::Duration::nanoseconds(nanos);
            assert_eq!(&*sqlite_timestamp(t), t.to_rfc3339_opts(chrono::SecondsFormat::AutoSi, false), "{nanos}");
        }
        // A leap second, and years at the edges of the four-digit form.
        let leap = chrono::NaiveDate::from_ymd_opt(2016, 12, 31)
            .and_then(|d| d.and_hms_nano_opt(23, 59, 59, 1_250_000_000))
            .unwrap()
            .and_utc();
        let first = Utc.with_ymd_and_hms(0, 1, 1, 0, 0, 0).unwrap();
        let last = Utc.with_ymd_and_hms(9999, 12, 31, 23, 59, 59).unwrap();
        for t in [leap, first, last, first - chrono::Duration::seconds(1), last + chrono::Duration::seconds(1)] {
            assert_eq!(&*sqlite_timestamp(t), t.to_rfc3339_opts(chrono::SecondsFormat::AutoSi, false));
        }
        let now = Utc::now();
        assert_eq!(&*sqlite_timestamp(now), now.to_rfc3339_opts(chrono::SecondsFormat::AutoSi, false));
    }

    #[test]
    fn one_formatter_reused_across_seconds_and_a_leap_second() {
        let base = Utc.with_ymd_and_hms(2016, 12, 31, 23, 59, 58).unwrap();
        let leap = chrono::NaiveDate::from_ymd_opt(2016, 12, 31)
            .and_then(|d| d.and_hms_nano_opt(23, 59, 59, 1_500_000_000))
            .unwrap()
            .and_utc();
        let times = [
            base,
            base + chrono::Duration::milliseconds(250),
            base + chrono::Duration::nanoseconds(1_999_999_999),
            leap,
            base + chrono::Duration::seconds(1),
            base + chrono::Duration::seconds(2),
            base + chrono::Duration::microseconds(2_000_001),
            Utc.with_ymd_and_hms(1999, 1, 2, 3, 4, 5).unwrap(),
        ];
        let mut format = TimestampFormat::default();
        let mut out = String::new();
        for t in times {
            format.write(t, &mut out);
            assert_eq!(out, t.to_rfc3339_opts(chrono::SecondsFormat::AutoSi, false));
        }
    }
}
