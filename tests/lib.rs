//! Harness for the end-to-end tests: a real gateway on a loopback port, backed
//! by a throw-away SQLite file or a fresh PostgreSQL database.
//!
//! PostgreSQL runs when `DELTALLM_TEST_POSTGRES_URL` is set (CI always sets it);
//! each test gets its own database, dropped afterwards.

use std::net::SocketAddr;

use deltallm_core::{Gateway, GatewaySettings};
use deltallm_domain::SecretString;
use deltallm_secrets::{Key, KeyRing};
use deltallm_storage::Store;
use sea_orm::{ConnectionTrait, Database};
use serde_json::Value;

/// Master key every test app uses.
pub const MASTER_KEY: &str = "sk-test-master-0123456789abcdefghijklmnop";
/// Salt key every test app uses.
pub const SALT_KEY: &str = "test-salt-key-0123456789abcdef";

/// Which database backs a test.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    /// A temp-file SQLite database.
    Sqlite,
    /// A fresh database on the server named by `DELTALLM_TEST_POSTGRES_URL`.
    Postgres,
}

/// A database created for one test.
pub struct TestDb {
    /// Connection URL.
    pub url: String,
    _dir: Option<tempfile::TempDir>,
    drop_pg: Option<(String, String)>,
}

impl TestDb {
    /// Create one; `None` when PostgreSQL is requested but not configured.
    pub async fn create(backend: Backend) -> Option<Self> {
        match backend {
            Backend::Sqlite => {
                let dir = tempfile::tempdir().expect("tempdir");
                let url = format!("sqlite://{}?mode=rwc", dir.path().join("test.db").display());
                Some(Self { url, _dir: Some(dir), drop_pg: None })
            }
            Backend::Postgres => {
                let admin_url = std::env::var("DELTALLM_TEST_POSTGRES_URL").ok().filter(|s| !s.is_empty())?;
                let name = format!("deltallm_t_{}", uuid::Uuid::new_v4().simple());
                let admin = Database::connect(&admin_url).await.expect("connect to DELTALLM_TEST_POSTGRES_URL");
                admin.execute_unprepared(&format!("CREATE DATABASE {name}")).await.expect("create test database");
                admin.close().await.ok();
                let base = admin_url.rsplit_once('/').map_or(admin_url.as_str(), |(b, _)| b).to_owned();
                Some(Self { url: format!("{base}/{name}"), _dir: None, drop_pg: Some((admin_url, name)) })
            }
        }
    }

    /// Drop a PostgreSQL test database (best effort).
    pub async fn cleanup(self) {
        if let Some((admin_url, name)) = &self.drop_pg
            && let Ok(admin) = Database::connect(admin_url).await
        {
            let _ = admin.execute_unprepared(&format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)")).await;
            let _ = admin.close().await;
        }
    }
}

/// Settings used by test apps: master key set, everything else default.
pub fn test_settings() -> GatewaySettings {
    GatewaySettings { master_key: Some(SecretString::new(MASTER_KEY)), ..GatewaySettings::default() }
}

/// The key ring test apps use.
pub fn test_key_ring() -> KeyRing {
    KeyRing::new(Key::derive(SALT_KEY).expect("salt key"))
}

/// A running gateway on a loopback port.
pub struct TestApp {
    /// `http://127.0.0.1:<port>`.
    pub base: String,
    /// The gateway handle (in-process inspection).
    pub gateway: Gateway,
    /// HTTP client.
    pub client: reqwest::Client,
    server: tokio::task::JoinHandle<()>,
}

impl TestApp {
    /// Start a gateway on `url` with `settings` (migrations run first).
    pub async fn start(url: &str, settings: GatewaySettings) -> Self {
        Self::start_with_ring(url, settings, test_key_ring()).await
    }

    /// Start with a specific key ring.
    pub async fn start_with_ring(url: &str, settings: GatewaySettings, ring: KeyRing) -> Self {
        let store: Store = deltallm_bootstrap::connect_store(url, ring).await.expect("store");
        let gateway = Gateway::start(store, settings).await.expect("gateway start");
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr: SocketAddr = listener.local_addr().expect("addr");
        // The server and service the gateway binary runs.
        let service = deltallm_http::GatewayService::new(gateway.clone());
        let server = tokio::spawn(deltallm_http::serve(
            listener,
            service,
            deltallm_http::ServerOptions::default(),
            std::future::pending(),
        ));
        Self { base: format!("http://{addr}"), gateway, client: reqwest::Client::new(), server }
    }

    /// Stop serving (the database stays).
    pub async fn stop(self) {
        self.gateway.flush_spend().await;
        self.server.abort();
        let _ = self.server.await;
    }

    /// URL of a path.
    pub fn url(&self, path: &str) -> String {
        format!("{}{}", self.base, path)
    }

    /// Send with the master key and return (status, JSON body or Null).
    pub async fn send(&self, method: reqwest::Method, path: &str, body: Option<&Value>) -> (u16, Value) {
        let mut req = self.client.request(method, self.url(path)).bearer_auth(MASTER_KEY);
        if let Some(b) = body {
            req = req.json(b);
        }
        let resp = req.send().await.expect("request");
        let status = resp.status().as_u16();
        let text = resp.text().await.expect("body");
        (status, serde_json::from_str(&text).unwrap_or(Value::String(text)))
    }

    /// GET with the master key.
    pub async fn get(&self, path: &str) -> (u16, Value) {
        self.send(reqwest::Method::GET, path, None).await
    }

    /// POST JSON with the master key.
    pub async fn post(&self, path: &str, body: &Value) -> (u16, Value) {
        self.send(reqwest::Method::POST, path, Some(body)).await
    }

    /// PUT JSON with the master key.
    pub async fn put(&self, path: &str, body: &Value) -> (u16, Value) {
        self.send(reqwest::Method::PUT, path, Some(body)).await
    }

    /// DELETE with the master key.
    pub async fn delete(&self, path: &str) -> (u16, Value) {
        self.send(reqwest::Method::DELETE, path, None).await
    }
}

/// Define one async test body and run it on SQLite and on PostgreSQL.
/// The PostgreSQL variant passes vacuously (with a note on stderr) when
/// `DELTALLM_TEST_POSTGRES_URL` is unset; CI always sets it.
#[macro_export]
macro_rules! on_both_backends {
    ($name:ident, $body:expr) => {
        mod $name {
            #[allow(unused_imports)]
            use super::*;

            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn sqlite() {
                let db = $crate::TestDb::create($crate::Backend::Sqlite).await.expect("sqlite");
                ($body)(db.url.clone()).await;
                db.cleanup().await;
            }

            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn postgres() {
                let Some(db) = $crate::TestDb::create($crate::Backend::Postgres).await else {
                    eprintln!("DELTALLM_TEST_POSTGRES_URL not set; PostgreSQL variant not run");
                    return;
                };
                ($body)(db.url.clone()).await;
                db.cleanup().await;
            }
        }
    };
}

/// One HTTP/1.1 request read off a raw upstream connection (for test
/// upstreams that wiremock cannot play): its head, request line and headers,
/// and its `content-length` body. `None` if the peer closes or fails first.
pub async fn read_request<R: tokio::io::AsyncRead + Unpin>(io: &mut R) -> Option<(String, Vec<u8>)> {
    use tokio::io::AsyncReadExt;
    let mut buf = Vec::new();
    let mut chunk = [0u8; 4096];
    loop {
        if let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            let head = String::from_utf8_lossy(&buf[..end]).into_owned();
            let len = header_of(&head, "content-length").and_then(|v| v.parse::<usize>().ok()).unwrap_or(0);
            if buf.len() >= end + 4 + len {
                return Some((head, buf[end + 4..end + 4 + len].to_vec()));
            }
        }
        let n = io.read(&mut chunk).await.ok()?;
        if n == 0 {
            return None;
        }
        buf.extend_from_slice(&chunk[..n]);
    }
}

/// A header's value in a request head, by case-insensitive name.
pub fn header_of<'h>(head: &'h str, name: &str) -> Option<&'h str> {
    head.lines()
        .skip(1)
        .find_map(|l| l.split_once(':').filter(|(k, _)| k.trim().eq_ignore_ascii_case(name)).map(|(_, v)| v.trim()))
}
