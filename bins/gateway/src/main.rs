//! `deltallm-gateway`: settings → logging → store → gateway → HTTP.

use std::path::PathBuf;
use std::process::ExitCode;

use deltallm_bootstrap::{prepare, serve, telemetry};
use deltallm_core::Gateway;

const USAGE: &str = "usage: deltallm-gateway [--config PATH]

Runs the DeltaLLM gateway. Settings come from the YAML file (--config,
DELTALLM_CONFIG_PATH, or ./config.yaml if present), then DELTALLM_* variables.
With no database configured it keeps its data in ./deltallm-data (SQLite).";

fn parse_args() -> Result<Option<PathBuf>, String> {
    let mut args = std::env::args().skip(1);
    let mut config = None;
    while let Some(arg) = args.next() {
        match arg.as_str() {
            "--config" | "-c" => config = Some(PathBuf::from(args.next().ok_or("--config needs a path")?)),
            s if s.starts_with("--config=") => config = Some(PathBuf::from(&s["--config=".len()..])),
            "--help" | "-h" => return Err(String::new()),
            other => return Err(format!("unknown argument '{other}'")),
        }
    }
    Ok(config)
}

async fn run(config: Option<PathBuf>) -> anyhow::Result<()> {
    let prepared = prepare(config).await?;
    tracing::info!(database = %prepared.database, "storage ready");
    let gateway = Gateway::start(prepared.store, prepared.settings).await?;
    let listener = serve::bind(prepared.listen).await?;
    tracing::info!(address = %prepared.listen, "DeltaLLM gateway listening");
    axum::serve(listener, deltallm_http::app(gateway.clone())).with_graceful_shutdown(serve::shutdown_signal()).await?;
    serve::drain(&gateway).await;
    Ok(())
}

fn main() -> ExitCode {
    let config = match parse_args() {
        Ok(c) => c,
        Err(msg) => {
            if !msg.is_empty() {
                eprintln!("error: {msg}\n");
            }
            eprintln!("{USAGE}");
            return if msg.is_empty() { ExitCode::SUCCESS } else { ExitCode::from(2) };
        }
    };
    telemetry::init();
    let runtime = match tokio::runtime::Builder::new_multi_thread().enable_all().build() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(run(config)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!("{e:#}");
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}
