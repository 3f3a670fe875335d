//! Logging: `RUST_LOG` (default `info`), `DELTALLM_LOG_FORMAT=json` for JSON lines.

use tracing_subscriber::EnvFilter;

/// Install the global subscriber (once per process).
pub fn init() {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| {
        EnvFilter::new("info,sqlx=warn,sea_orm=warn,sea_orm_migration=warn,hyper=warn,reqwest=warn")
    });
    let json = std::env::var("DELTALLM_LOG_FORMAT").is_ok_and(|v| v.eq_ignore_ascii_case("json"));
    // Colours only on a terminal (and never with NO_COLOR): log files and
    // collectors get plain text.
    let ansi = std::io::IsTerminal::is_terminal(&std::io::stdout()) && std::env::var_os("NO_COLOR").is_none();
    let builder = tracing_subscriber::fmt().with_env_filter(filter).with_target(false).with_ansi(ansi);
    let _ = if json { builder.json().try_init() } else { builder.try_init() };
}
