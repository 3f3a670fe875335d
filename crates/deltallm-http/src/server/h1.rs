//! One client connection: the JSON proxy routes on a lean HTTP/1.1 path,
//! everything else by hyper.
//!
//! A proxied request's head is parsed with `httparse` (the parser hyper
//! uses) into a stack array and read for the handful of headers the route
//! needs; the answer's head is written as bytes with the route headers,
//! with no `HeaderMap` on either side, no body channel and no boxed
//! service future. Only the plainest well-formed request takes this path:
//! `POST` to one of the JSON proxy routes, HTTP/1.1, one `Content-Length`,
//! no `Transfer-Encoding`, `Expect` or `Upgrade`, at most one key header of
//! each kind. The first request that is anything else, including any head
//! `httparse` rejects, hands the connection, with the bytes already read,
//! to hyper's HTTP/1 driver for the rest of its life, so chunked bodies,
//! `100-continue`, malformed requests and every other route keep hyper's
//! behaviour. docs/architecture.md has the numbers behind it.

use std::io::{self, IoSlice};
use std::mem::MaybeUninit;
use std::pin::pin;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use axum::response::{IntoResponse, Response};
use bytes::{Buf, Bytes, BytesMut};
use deltallm_core::Error;
use deltallm_core::proxy::{Endpoint, ProxyBody, ProxyResponse};
use futures_util::{FutureExt, StreamExt};
use http::HeaderName;
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::watch;

use super::rewind::Rewind;
use crate::error::ProxyError;
use crate::{GatewayService, openai};

/// Headers read from one request head; more hands the request to hyper.
const MAX_HEADERS: usize = 32;
/// A head still incomplete at this size goes to hyper, which has its own limits.
const MAX_HEAD: usize = 16 * 1024;
/// Bytes of a next (pipelined) request buffered while one is being served.
const MAX_AHEAD: usize = 64 * 1024;
/// How long, and how much, an unread body is drained before closing.
const LINGER: Duration = Duration::from_secs(2);
const LINGER_BYTES: usize = 64 * 1024 * 1024;

/// What every connection of one server shares.
pub(super) struct Shared {
    pub(super) service: GatewayService,
    pub(super) hyper: hyper::server::conn::http1::Builder,
    pub(super) header_read_timeout: Option<Duration>,
}

/// Serve one connection until the client leaves, a timeout or shutdown ends it.
pub(super) async fn connection(stream: TcpStream, shared: Arc<Shared>, mut stop: watch::Receiver<()>) {
    let mut conn = Conn { stream, buf: BytesMut::with_capacity(4096), head: Vec::with_capacity(512) };
    let mut head_deadline = pin!(tokio::time::sleep(Duration::ZERO));
    loop {
        let request = match conn.next_head(&shared, &mut stop, head_deadline.as_mut()).await {
            Next::Hot(request) => request,
            Next::Other => return hand_to_hyper(conn, &shared, stop).await,
            Next::Close => return,
        };
        let keep_alive = match serve_hot(&mut conn, &shared, request).await {
            Ok(keep_alive) => keep_alive,
            Err(_) => return,
        };
        if !keep_alive || stop.has_changed().unwrap_or(true) {
            let _ = conn.stream.shutdown().await;
            return;
        }
    }
}

struct Conn {
    stream: TcpStream,
    /// Bytes read from the client and not yet consumed.
    buf: BytesMut,
    /// The answer's head, reused.
    head: Vec<u8>,
}

/// A proxied request whose head was consumed from the buffer.
struct HotRequest {
    endpoint: Endpoint,
    body_len: usize,
    close: bool,
    started: Instant,
    /// The master-key check, done while the head was borrowed.
    auth: Result<(), Error>,
}

enum Next {
    Hot(HotRequest),
    Other,
    Close,
}

impl Conn {
    /// Wait for a complete request head and decide who serves it.
    async fn next_head(
        &mut self,
        shared: &Shared,
        stop: &mut watch::Receiver<()>,
        mut deadline: std::pin::Pin<&mut tokio::time::Sleep>,
    ) -> Next {
        let mut armed = false;
        // Bytes already known to hold no end of head: a head that arrives a
        // few bytes at a time is not parsed again from its start per read.
        let mut scanned = 0usize;
        loop {
            let fresh = &self.buf[scanned.saturating_sub(2)..];
            let inspected =
                if scanned == 0 || may_end_head(fresh) { inspect(&self.buf, shared) } else { Inspected::Partial };
            scanned = self.buf.len();
            match inspected {
                Inspected::Partial => {}
                Inspected::Other => return Next::Other,
                Inspected::Hot { head_len, request } => {
                    self.buf.advance(head_len);
                    return Next::Hot(request);
                }
            }
            if let (false, Some(timeout)) = (armed, shared.header_read_timeout) {
                deadline.as_mut().reset(tokio::time::Instant::now() + timeout);
                armed = true;
            }
            self.buf.reserve(4096);
            let idle = self.buf.is_empty();
            tokio::select! {
                biased;
                read = self.stream.read_buf(&mut self.buf) => match read {
                    Ok(0) | Err(_) => return Next::Close,
                    Ok(_) => {}
                },
                () = deadline.as_mut(), if armed => {
                    tracing::debug!("client connection closed: no complete request head in time");
                    return Next::Close;
                }
                _ = stop.changed(), if idle => return Next::Close,
            }
        }
    }

    /// Read the request body (`len` bytes) into its own buffer.
    async fn body(&mut self, len: usize) -> io::Result<Bytes> {
        while self.buf.len() < len {
            self.buf.reserve(len - self.buf.len());
            if self.stream.read_buf(&mut self.buf).await? == 0 {
                return Err(io::ErrorKind::UnexpectedEof.into());
            }
        }
        // A small body is copied so that the read buffer is not shared while
        // the request is served (see `openai::unshare_small`).
        Ok(if len < openai::UNSHARE_BELOW {
            let body = Bytes::copy_from_slice(&self.buf[..len]);
            self.buf.advance(len);
            body
        } else {
            self.buf.split_to(len).freeze()
        })
    }

    /// Run `work` unless the client closes its side first (then `None`, and
    /// `work` is dropped, which cancels the upstream call). A next request
    /// the client sends meanwhile is kept in the buffer.
    async fn unless_client_leaves<F: Future + Unpin>(&mut self, mut work: F) -> Option<F::Output> {
        loop {
            let watch = self.buf.len() < MAX_AHEAD;
            tokio::select! {
                biased;
                out = &mut work => return Some(out),
                ready = self.stream.readable(), if watch => {
                    ready.ok()?;
                    self.buf.reserve(4096);
                    match self.stream.try_read_buf(&mut self.buf) {
                        Ok(0) => return None,
                        Ok(_) => {}
                        Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                        Err(_) => return None,
                    }
                }
            }
        }
    }

    /// Close after an answer to a request whose body was left unread:
    /// closing a socket with unread bytes makes the kernel reset the
    /// connection, which can discard the answer before the client reads it.
    /// So stop writing, then read and drop what still comes, briefly.
    async fn linger_close(&mut self) {
        if self.stream.shutdown().await.is_err() {
            return;
        }
        let mut scratch = vec![0u8; 16 * 1024];
        let drain = async {
            let mut left = LINGER_BYTES;
            while left > 0 {
                match self.stream.read(&mut scratch).await {
                    Ok(0) | Err(_) => return,
                    Ok(n) => left = left.saturating_sub(n),
                }
            }
        };
        let _ = tokio::time::timeout(LINGER, drain).await;
    }

    async fn write_all_vectored(&mut self, parts: &mut [IoSlice<'_>]) -> io::Result<()> {
        let mut parts = parts;
        IoSlice::advance_slices(&mut parts, 0);
        while !parts.is_empty() {
            let n = self.stream.write_vectored(parts).await?;
            if n == 0 {
                return Err(io::ErrorKind::WriteZero.into());
            }
            IoSlice::advance_slices(&mut parts, n);
        }
        Ok(())
    }
}

enum Inspected {
    Partial,
    Other,
    Hot { head_len: usize, request: HotRequest },
}

/// Parse what the buffer holds and check the key, without consuming it.
fn inspect(buf: &[u8], shared: &Shared) -> Inspected {
    if buf.is_empty() {
        return Inspected::Partial;
    }
    // Slots left uninitialized: the parser writes the ones it fills, and
    // zeroing 32 of them (1 KiB) per request was a measurable share of it.
    let mut headers = [const { MaybeUninit::<httparse::Header<'_>>::uninit() }; MAX_HEADERS];
    let mut req = httparse::Request::new(&mut []);
    let head_len = match req.parse_with_uninit_headers(buf, &mut headers) {
        Ok(httparse::Status::Complete(n)) => n,
        Ok(httparse::Status::Partial) if buf.len() < MAX_HEAD => return Inspected::Partial,
        _ => return Inspected::Other,
    };
    if req.method != Some("POST") || req.version != Some(1) {
        return Inspected::Other;
    }
    let path = req.path.unwrap_or_default();
    let path = path.split_once('?').map_or(path, |(path, _)| path);
    let Some(endpoint) = openai::json_endpoint(path) else { return Inspected::Other };
    let (mut length, mut master, mut authorization, mut close) = (None, None, None, false);
    for h in req.headers.iter() {
        let name = h.name;
        if name.eq_ignore_ascii_case("content-length") {
            if length.is_some() {
                return Inspected::Other;
            }
            match digits(h.value) {
                Some(n) => length = Some(n),
                None => return Inspected::Other,
            }
        } else if name.eq_ignore_ascii_case("x-master-key") {
            if master.replace(h.value).is_some() {
                return Inspected::Other;
            }
        } else if name.eq_ignore_ascii_case("authorization") {
            if authorization.replace(h.value).is_some() {
                return Inspected::Other;
            }
        } else if name.eq_ignore_ascii_case("connection") {
            for token in h.value.split(|b| *b == b',') {
                let token = token.trim_ascii();
                if token.eq_ignore_ascii_case(b"close") {
                    close = true;
                } else if !token.eq_ignore_ascii_case(b"keep-alive") {
                    return Inspected::Other;
                }
            }
        } else if ["transfer-encoding", "expect", "upgrade"].iter().any(|n| name.eq_ignore_ascii_case(n)) {
            return Inspected::Other;
        }
    }
    let Some(body_len) = length else { return Inspected::Other };
    let gateway = &shared.service.gateway;
    let auth = gateway.check_master_key(crate::auth::key_from(master, authorization));
    Inspected::Hot { head_len, request: HotRequest { endpoint, body_len, close, started: Instant::now(), auth } }
}

/// Could a head end in `bytes`: a line feed followed by an empty line
/// (`\n\n` or `\n\r\n`, as `httparse` accepts both)?
fn may_end_head(bytes: &[u8]) -> bool {
    memchr::memchr_iter(b'\n', bytes).any(|i| match bytes.get(i + 1) {
        Some(b'\n') => true,
        Some(b'\r') => bytes.get(i + 2) == Some(&b'\n'),
        _ => false,
    })
}

/// A `Content-Length` value: ASCII digits only.
fn digits(value: &[u8]) -> Option<usize> {
    if value.is_empty() || value.len() > 15 || !value.iter().all(u8::is_ascii_digit) {
        return None;
    }
    value.iter().try_fold(0usize, |n, d| n.checked_mul(10)?.checked_add(usize::from(d - b'0')))
}

/// Serve one proxied request; `Ok(true)` when the connection can take another.
async fn serve_hot(conn: &mut Conn, shared: &Shared, request: HotRequest) -> io::Result<bool> {
    let gateway = &shared.service.gateway;
    let HotRequest { endpoint, body_len, close, started, auth } = request;
    let limit = gateway.settings().max_request_body_bytes;
    // Refused as the routes behind hyper refuse: a missing or wrong key
    // first, then a body over the limit.
    let refusal = match auth {
        Err(e) => Some(ProxyError(e).into_response()),
        Ok(()) if body_len > limit => Some(openai::too_large(limit).into_response()),
        Ok(()) => None,
    };
    if let Some(refusal) = refusal {
        if body_len > limit {
            // The body is not read: answer, then close without resetting
            // the connection under the answer.
            write_local(conn, openai::local(started, refusal), true).await?;
            conn.linger_close().await;
            return Ok(false);
        }
        conn.body(body_len).await?;
        write_local(conn, openai::local(started, refusal), close).await?;
        return Ok(!close);
    }
    let body = conn.body(body_len).await?;
    // Pinned where it is made: the call's future is several KiB, and every
    // move of it is a copy.
    let call = pin!(gateway.proxy_json(endpoint, body, started));
    let Some(answer) = conn.unless_client_leaves(call).await else {
        return Err(io::ErrorKind::ConnectionAborted.into());
    };
    match answer {
        Ok(answer) => write_proxied(conn, answer, close).await?,
        Err(e) => write_local(conn, openai::render(Err(e)), close).await?,
    }
    Ok(!close)
}

/// A proxied answer: its head written as bytes, the body after it in the same write.
async fn write_proxied(conn: &mut Conn, answer: ProxyResponse, close: bool) -> io::Result<()> {
    let ProxyResponse { body, route, overhead, request_id } = answer;
    let head = &mut conn.head;
    head.clear();
    match &body {
        ProxyBody::Json(_) => head.extend_from_slice(b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\n"),
        ProxyBody::Binary { content_type, .. } => {
            head.extend_from_slice(b"HTTP/1.1 200 OK\r\n");
            header(head, "content-type", content_type);
        }
        ProxyBody::Stream(_) => head.extend_from_slice(
            b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\ncache-control: no-cache\r\nx-accel-buffering: no\r\n",
        ),
    }
    openai::route_headers(&mut HeadBytes(head), &route, overhead);
    trusted(head, openai::REQUEST_ID.as_str(), &request_id);
    end_head(
        head,
        close,
        match &body {
            ProxyBody::Json(bytes) | ProxyBody::Binary { body: bytes, .. } => Some(bytes.len()),
            ProxyBody::Stream(_) => None,
        },
    );
    match body {
        ProxyBody::Json(bytes) | ProxyBody::Binary { body: bytes, .. } => {
            let head = std::mem::take(&mut conn.head);
            let written = conn.write_all_vectored(&mut [IoSlice::new(&head), IoSlice::new(&bytes)]).await;
            conn.head = head;
            written
        }
        ProxyBody::Stream(stream) => write_stream(conn, stream).await,
    }
}

/// A stream as chunked transfer coding: every piece already produced goes
/// out in one write (the head with the first), the last chunk with the end
/// of the stream when it has ended by then; a client that leaves while the
/// gateway waits for the upstream ends the stream, and with it the call.
async fn write_stream(conn: &mut Conn, mut stream: futures_util::stream::BoxStream<'static, Bytes>) -> io::Result<()> {
    let mut out = std::mem::take(&mut conn.head);
    let mut next = stream.next().now_or_never();
    loop {
        let ended = loop {
            match next {
                Some(Some(piece)) => chunk(&mut out, &piece),
                Some(None) => {
                    out.extend_from_slice(b"0\r\n\r\n");
                    break true;
                }
                None => break false,
            }
            next = stream.next().now_or_never();
        };
        let written = conn.stream.write_all(&out).await;
        out.clear();
        if written.is_err() || ended {
            conn.head = out;
            return written;
        }
        let Some(piece) = conn.unless_client_leaves(stream.next()).await else {
            conn.head = out;
            return Err(io::ErrorKind::ConnectionAborted.into());
        };
        next = Some(piece);
    }
}

fn chunk(out: &mut Vec<u8>, piece: &[u8]) {
    if piece.is_empty() {
        return;
    }
    let mut hex = [0u8; 16];
    let mut i = hex.len();
    let mut n = piece.len();
    while n > 0 || i == hex.len() {
        i -= 1;
        hex[i] = b"0123456789abcdef"[n & 15];
        n >>= 4;
    }
    out.extend_from_slice(&hex[i..]);
    out.extend_from_slice(b"\r\n");
    out.extend_from_slice(piece);
    out.extend_from_slice(b"\r\n");
}

/// A response built by the shared handlers (errors, refusals): its status,
/// headers and whole body.
async fn write_local(conn: &mut Conn, response: Response, close: bool) -> io::Result<()> {
    let (parts, body) = response.into_parts();
    let body = match http_body_util::BodyExt::collect(body).await {
        Ok(collected) => collected.to_bytes(),
        Err(_) => return Err(io::ErrorKind::InvalidData.into()),
    };
    let head = &mut conn.head;
    head.clear();
    head.extend_from_slice(b"HTTP/1.1 ");
    head.extend_from_slice(parts.status.as_str().as_bytes());
    head.push(b' ');
    head.extend_from_slice(parts.status.canonical_reason().unwrap_or("").as_bytes());
    head.extend_from_slice(b"\r\n");
    for (name, value) in &parts.headers {
        if [http::header::CONTENT_LENGTH, http::header::TRANSFER_ENCODING, http::header::CONNECTION].contains(name) {
            continue;
        }
        head.extend_from_slice(name.as_str().as_bytes());
        head.extend_from_slice(b": ");
        head.extend_from_slice(value.as_bytes());
        head.extend_from_slice(b"\r\n");
    }
    end_head(head, close, Some(body.len()));
    let head = std::mem::take(&mut conn.head);
    let written = conn.write_all_vectored(&mut [IoSlice::new(&head), IoSlice::new(&body)]).await;
    conn.head = head;
    written
}

/// `name: value`, unless the value could not travel in a header (as
/// `HeaderValue::from_str` would refuse it, the header is left out).
fn header(head: &mut Vec<u8>, name: &str, value: &str) {
    if value.bytes().all(|b| b == b'\t' || (b >= 0x20 && b != 0x7f)) {
        trusted(head, name, value);
    }
}

/// A response head being written, as [`openai::route_headers`] fills it.
struct HeadBytes<'h>(&'h mut Vec<u8>);

impl openai::HeaderSink for HeadBytes<'_> {
    fn text(&mut self, name: HeaderName, value: &str) {
        header(self.0, name.as_str(), value);
    }

    fn constant(&mut self, name: HeaderName, value: &'static str) {
        trusted(self.0, name.as_str(), value);
    }

    fn number(&mut self, name: HeaderName, value: u64) {
        trusted(self.0, name.as_str(), itoa::Buffer::new().format(value));
    }
}

/// `name: value` for a value the gateway made (a number, a constant, its
/// own request id), so known to be a valid header value.
fn trusted(head: &mut Vec<u8>, name: &str, value: &str) {
    head.reserve(name.len() + value.len() + 4);
    head.extend_from_slice(name.as_bytes());
    head.extend_from_slice(b": ");
    head.extend_from_slice(value.as_bytes());
    head.extend_from_slice(b"\r\n");
}

/// Framing, `connection: close` when asked, the date, and the blank line.
fn end_head(head: &mut Vec<u8>, close: bool, length: Option<usize>) {
    match length {
        Some(n) => trusted(head, "content-length", itoa::Buffer::new().format(n)),
        None => head.extend_from_slice(b"transfer-encoding: chunked\r\n"),
    }
    if close {
        head.extend_from_slice(b"connection: close\r\n");
    }
    head.extend_from_slice(b"date: ");
    DATE.with(|date| {
        let mut date = date.borrow_mut();
        let now = SystemTime::now();
        let second = now.duration_since(SystemTime::UNIX_EPOCH).map_or(0, |d| d.as_secs());
        if date.0 != second {
            *date = (second, httpdate::fmt_http_date(now));
        }
        head.extend_from_slice(date.1.as_bytes());
    });
    head.extend_from_slice(b"\r\n\r\n");
}

thread_local! {
    /// The `date` header's text, rebuilt once a second.
    static DATE: std::cell::RefCell<(u64, String)> = const { std::cell::RefCell::new((u64::MAX, String::new())) };
}

/// hyper serves the rest of the connection, starting with the bytes already read.
async fn hand_to_hyper(conn: Conn, shared: &Shared, mut stop: watch::Receiver<()>) {
    let io = TokioIo::new(Rewind::new(conn.buf.freeze(), conn.stream));
    let mut connection = pin!(shared.hyper.serve_connection(io, shared.service.clone()));
    tokio::select! {
        biased;
        result = connection.as_mut() => super::log_connection_end(result),
        _ = stop.changed() => {
            connection.as_mut().graceful_shutdown();
            super::log_connection_end(connection.await);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn chunk_sizes_are_lowercase_hex() {
        for (len, size) in [(1, "1"), (15, "f"), (16, "10"), (255, "ff"), (4096, "1000")] {
            let mut out = Vec::new();
            chunk(&mut out, &vec![b'x'; len]);
            assert!(out.starts_with(format!("{size}\r\n").as_bytes()), "{len}");
            assert!(out.ends_with(b"x\r\n"));
        }
        let mut out = Vec::new();
        chunk(&mut out, b"");
        assert!(out.is_empty(), "an empty piece must not read as the last chunk");
    }

    #[test]
    fn a_head_can_only_end_at_an_empty_line() {
        assert!(may_end_head(b"Host: x\r\n\r\n"));
        assert!(may_end_head(b"Host: x\n\n"));
        assert!(may_end_head(b"\n\r\n"));
        assert!(!may_end_head(b"Host: x\r\nAccept: y\r\n"));
        assert!(!may_end_head(b"Host: x\r\n\r"));
        assert!(!may_end_head(b""));
    }

    #[test]
    fn content_length_is_digits_only() {
        assert_eq!(digits(b"0"), Some(0));
        assert_eq!(digits(b"1234"), Some(1234));
        for bad in [&b""[..], b"+1", b"-1", b"1 2", b"0x10", b"1e3", b"1234567890123456"] {
            assert_eq!(digits(bad), None, "{:?}", String::from_utf8_lossy(bad));
        }
    }
}
