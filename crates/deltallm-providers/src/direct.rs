//! A small HTTP/1.1 client for JSON calls to upstreams, over plain TCP
//! (self-hosted vLLM, Ollama, LM Studio on a private network) or TLS (every
//! hosted provider).
//!
//! Why not hyper's client here: hyper-util's pooled client runs every
//! upstream connection as its own task and hands each request to it over a
//! channel, so one proxied call costs two extra task wake-ups, a pool behind
//! one lock for all hosts, and a boxed future per request. Under load that
//! was about a quarter of the gateway's CPU per request
//! (docs/benchmarks.md). This client does the exchange inside the calling
//! task instead: one vectored write of the precomputed request head and the
//! body, then the response head parsed with `httparse` and the body read
//! straight into the buffer the caller's `Bytes` share, with no copy. TLS is
//! rustls with the platform's roots (plus `extra_root_certs_pem`), the same
//! verifier reqwest uses, and ALPN `http/1.1`. Proxies, multipart uploads
//! and health probes stay on reqwest.
//!
//! Connections are kept per deployment ([`Pool`], one short lock per
//! checkout and return, never shared between deployments) and reused only
//! after a response was read to its end with keep-alive allowed. A registry
//! rebuild (a deployment change) builds new connections with empty pools;
//! the old idle connections close when the old registry is dropped. A request
//! whose future is dropped (client gone, deadline hit) drops its connection,
//! which closes the socket and so cancels the upstream's work.
//!
//! A pooled connection the upstream has already closed is recognised before
//! use (its socket reads as end-of-file; over TLS, anything readable at all)
//! and discarded. One that fails while the request is being written is
//! retried once on a fresh connection: the upstream cannot have acted on a
//! request it did not receive whole. A failure after the request was
//! written is not retried here, as nginx and Go's client do for `POST`: the
//! upstream may have started generating, and the gateway's own retry policy
//! (RUN-11) decides.

use std::io::{self, IoSlice};
use std::mem::MaybeUninit;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll, Waker};
use std::time::{Duration, Instant};

use bytes::{Buf, Bytes, BytesMut};
use futures_util::stream::{BoxStream, StreamExt};
use http::{HeaderMap, HeaderName, HeaderValue};
use reqwest::Url;
use rustls::pki_types::ServerName;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWriteExt, ReadBuf};
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;
use tokio_rustls::client::TlsStream;
use tokio_util::io::poll_read_buf;

use crate::error::{Error, Result};

/// Largest response head accepted.
const MAX_HEAD: usize = 64 * 1024;
/// Most response headers accepted.
const MAX_HEADERS: usize = 64;
/// Read buffer growth step; also the first buffer of each response.
const READ_CHUNK: usize = 8 * 1024;
/// Largest buffer reserved up front for a body of known length.
const MAX_PRESIZE: usize = 16 * 1024 * 1024;
/// Largest read buffer a pooled connection keeps. A body of known length is
/// read into one buffer of its size; a connection that carried a large
/// embeddings answer must not hold on to that memory while it waits idle.
const KEEP_BUFFER: usize = 64 * 1024;
/// Longest chunk-size or trailer line accepted in a chunked body.
const MAX_LINE: usize = 4 * 1024;

/// Client settings.
#[derive(Clone)]
pub(crate) struct Settings {
    pub connect_timeout: Duration,
    pub max_idle: usize,
    pub idle_timeout: Duration,
    /// `http://` upstreams go through this client (no HTTP proxy configured).
    pub plain: bool,
    /// `https://` upstreams go through this client with this TLS setup (no
    /// HTTPS proxy configured).
    pub tls: Option<TlsConnector>,
}

impl Settings {
    /// Whether this client calls `target` (otherwise reqwest does).
    pub(crate) fn serves(&self, target: &Target) -> bool {
        if target.tls.is_some() { self.tls.is_some() } else { self.plain }
    }
}

impl std::fmt::Debug for Settings {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Settings")
            .field("connect_timeout", &self.connect_timeout)
            .field("max_idle", &self.max_idle)
            .field("idle_timeout", &self.idle_timeout)
            .field("plain", &self.plain)
            .field("tls", &self.tls.is_some())
            .finish()
    }
}

/// One endpoint of a deployment: where to connect and the fixed part of the
/// request head. The head holds the auth header, so this type has no
/// `Debug` that could print it.
pub(crate) struct Target {
    /// `host:port` for the TCP connect.
    connect_to: Box<str>,
    /// The name the TLS certificate must carry, for `https://` targets.
    tls: Option<ServerName<'static>>,
    /// Request line and every fixed header, each ending in CRLF; the
    /// `content-length` line and the blank line are added per request.
    head: Box<[u8]>,
}

impl Target {
    /// A `POST` target for `url`, or `None` when the URL is neither `http`
    /// nor `https` or carries user info (reqwest turns that into basic auth).
    pub(crate) fn post(url: &Url, headers: &[(&HeaderName, &HeaderValue)]) -> Option<Target> {
        let tls = match url.scheme() {
            "http" => None,
            // A DNS name or an IP address (IPv6 without its brackets).
            "https" => {
                let host = url.host_str()?;
                let host = host.strip_prefix('[').and_then(|h| h.strip_suffix(']')).unwrap_or(host);
                Some(ServerName::try_from(host.to_owned()).ok()?)
            }
            _ => return None,
        };
        if !url.username().is_empty() || url.password().is_some() {
            return None;
        }
        let host = url.host_str()?;
        let port = url.port_or_known_default()?;
        let authority = match url.port() {
            Some(port) => format!("{host}:{port}"),
            None => host.to_owned(),
        };
        let path = match url.query() {
            Some(query) => format!("{}?{query}", url.path()),
            None => url.path().to_owned(),
        };
        let mut head = Vec::with_capacity(256);
        for part in ["POST ", &path, " HTTP/1.1\r\nhost: ", &authority, "\r\n"] {
            head.extend_from_slice(part.as_bytes());
        }
        for (name, value) in headers {
            head.extend_from_slice(name.as_str().as_bytes());
            head.extend_from_slice(b": ");
            head.extend_from_slice(value.as_bytes());
            head.extend_from_slice(b"\r\n");
        }
        Some(Target { connect_to: format!("{host}:{port}").into(), tls, head: head.into() })
    }
}

/// The TLS setup of the direct client: rustls with the platform verifier
/// (the system's roots, as reqwest has them) and `extra_roots` besides.
pub(crate) fn tls_connector(extra_roots: Vec<rustls::pki_types::CertificateDer<'static>>) -> Result<TlsConnector> {
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let setup = |e: rustls::Error| Error::transport(format!("upstream TLS setup: {e}"));
    let verifier = if extra_roots.is_empty() {
        rustls_platform_verifier::Verifier::new(provider.clone())
    } else {
        rustls_platform_verifier::Verifier::new_with_extra_roots(extra_roots, provider.clone())
    }
    .map_err(setup)?;
    let mut config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(setup)?
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(verifier))
        .with_no_client_auth();
    // This client speaks HTTP/1.1 only; say so, so that no server picks h2.
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(TlsConnector::from(Arc::new(config)))
}

/// An upstream connection, plain or TLS.
enum Stream {
    Tcp(TcpStream),
    Tls(Box<TlsStream<TcpStream>>),
}

impl AsyncRead for Stream {
    fn poll_read(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Stream::Tcp(tcp) => Pin::new(tcp).poll_read(cx, buf),
            Stream::Tls(tls) => Pin::new(&mut **tls).poll_read(cx, buf),
        }
    }
}

/// Idle keep-alive connections of one deployment, most recently used last.
#[derive(Default)]
pub(crate) struct Pool {
    idle: Mutex<Vec<Idle>>,
}

struct Idle {
    stream: Stream,
    /// The connection's read buffer, kept with it (see [`Conn`]).
    buf: BytesMut,
    since: Instant,
}

/// A connection and its read buffer. Response bodies are handed out as
/// slices of the buffer; by the time the connection carries its next
/// request the gateway has usually sent and dropped them, so the buffer's
/// memory is reclaimed in place instead of allocating a new one per request
/// (an 8 KiB allocation per request cost more than the whole response parse).
struct Conn {
    stream: Stream,
    buf: BytesMut,
}

impl Pool {
    /// A live idle connection, newest first; expired or closed ones are dropped.
    fn checkout(&self, idle_timeout: Duration) -> Option<Conn> {
        loop {
            let mut idle = {
                let mut idle = self.idle.lock().unwrap_or_else(|p| p.into_inner());
                let last = idle.pop()?;
                if last.since.elapsed() >= idle_timeout {
                    // The rest are older still.
                    idle.clear();
                    return None;
                }
                last
            };
            if still_open(&mut idle.stream) {
                return Some(Conn { stream: idle.stream, buf: idle.buf });
            }
        }
    }

    fn checkin(&self, conn: Conn, max_idle: usize) {
        let mut idle = self.idle.lock().unwrap_or_else(|p| p.into_inner());
        if idle.len() < max_idle {
            idle.push(Idle { stream: conn.stream, buf: conn.buf, since: Instant::now() });
        }
    }
}

/// An idle connection is usable when nothing is waiting to be read on it: a
/// closed one reads as end-of-file, and stray bytes mean it is out of step.
/// Over TLS a pending read is the only good answer (a `close_notify` or an
/// alert reads as end or error); rustls takes in records such as session
/// tickets itself and still reports nothing to read.
fn still_open(stream: &mut Stream) -> bool {
    let mut cx = Context::from_waker(Waker::noop());
    match stream {
        Stream::Tcp(tcp) => match tcp.poll_read_ready(&mut cx) {
            Poll::Pending => true,
            Poll::Ready(Err(_)) => false,
            Poll::Ready(Ok(())) => {
                let mut probe = [0u8; 1];
                matches!(tcp.try_read(&mut probe), Err(e) if e.kind() == io::ErrorKind::WouldBlock)
            }
        },
        Stream::Tls(tls) => {
            let mut probe = [0u8; 1];
            let mut probe = ReadBuf::new(&mut probe);
            Pin::new(&mut **tls).poll_read(&mut cx, &mut probe).is_pending()
        }
    }
}

/// A response whose head has been read.
pub(crate) struct Response {
    pub status: u16,
    /// `Content-Type`, if sent.
    pub content_type: Option<String>,
    /// All headers, kept only for non-2xx answers (error classification
    /// reads `retry-after` and the like).
    pub headers: Option<HeaderMap>,
    pub body: Body,
}

/// Send one `POST` with `body` and read the response head.
pub(crate) async fn post(settings: &Settings, pool: &Arc<Pool>, target: &Target, body: &[u8]) -> Result<Response> {
    let mut length = itoa::Buffer::new();
    let parts: Parts<'_> = [&target.head, b"content-length: ", length.format(body.len()).as_bytes(), b"\r\n\r\n", body];

    let Conn { mut stream, mut buf } = match pool.checkout(settings.idle_timeout) {
        Some(mut conn) => match write_all(&mut conn.stream, &parts).await {
            Ok(()) => conn,
            // The upstream did not get the whole request, so it cannot have
            // acted on it: a fresh connection is safe to try.
            Err(_) => fresh(settings, target, &parts).await?,
        },
        None => fresh(settings, target, &parts).await?,
    };
    loop {
        let head = read_head(&mut stream, &mut buf).await?;
        // Interim 1xx answers (other than 101, which we never ask for) precede the real one.
        if (100..200).contains(&head.status) && head.status != 101 {
            continue;
        }
        let framing = head.framing();
        let done = matches!(framing, Framing::Length(0));
        let mut body = Body {
            stream: Some(stream),
            buf,
            framing,
            keep_alive: head.keep_alive,
            oversized: false,
            pool: pool.clone(),
            max_idle: settings.max_idle,
        };
        if done {
            body.finish();
        }
        return Ok(Response { status: head.status, content_type: head.content_type, headers: head.headers, body });
    }
}

/// The request's bytes: fixed head, `content-length: `, the length, blank line, body.
type Parts<'a> = [&'a [u8]; 5];

/// A new connection (TCP, then TLS for `https://`, both within the connect
/// timeout) with the request written on it.
async fn fresh(settings: &Settings, target: &Target, parts: &Parts<'_>) -> Result<Conn> {
    let to = &target.connect_to;
    let connect = async {
        let tcp = TcpStream::connect(&**to)
            .await
            .map_err(|e| Error::transport(format!("upstream request failed: connecting to {to}: {e}")))?;
        // Request heads and SSE events are small writes; don't let Nagle hold them.
        tcp.set_nodelay(true).map_err(io_error)?;
        match (&target.tls, &settings.tls) {
            (None, _) => Ok(Stream::Tcp(tcp)),
            (Some(name), Some(connector)) => match connector.connect(name.clone(), tcp).await {
                Ok(tls) => Ok(Stream::Tls(Box::new(tls))),
                Err(e) => Err(Error::transport(format!("upstream request failed: TLS handshake with {to}: {e}"))),
            },
            (Some(_), None) => Err(Error::transport("upstream request failed: no TLS setup for an https upstream")),
        }
    };
    let mut stream = tokio::time::timeout(settings.connect_timeout, connect).await.map_err(|_| {
        Error::transport(format!(
            "upstream request failed: connecting to {to} timed out after {:.3} s",
            settings.connect_timeout.as_secs_f64()
        ))
    })??;
    write_all(&mut stream, parts).await.map_err(io_error)?;
    Ok(Conn { stream, buf: BytesMut::with_capacity(READ_CHUNK) })
}

/// `parts` from byte `skip` on, as slices for one vectored write.
fn remaining<'a>(parts: &'a Parts<'_>, skip: usize) -> ([IoSlice<'a>; 5], usize) {
    let mut slices = [IoSlice::new(&[]); 5];
    let mut used = 0;
    let mut offset = skip;
    for part in parts {
        if offset >= part.len() {
            offset -= part.len();
            continue;
        }
        slices[used] = IoSlice::new(&part[offset..]);
        used += 1;
        offset = 0;
    }
    (slices, used)
}

/// Write every part, with vectored writes, until all bytes are out.
async fn write_all(stream: &mut Stream, parts: &Parts<'_>) -> io::Result<()> {
    let mut skip = 0usize;
    let total: usize = parts.iter().map(|p| p.len()).sum();
    while skip < total {
        let (slices, used) = remaining(parts, skip);
        match stream {
            Stream::Tcp(tcp) => match tcp.try_write_vectored(&slices[..used]) {
                Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
                Ok(n) => skip += n,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => tcp.writable().await?,
                Err(e) => return Err(e),
            },
            // rustls takes the plaintext into records; the flush below sends them.
            Stream::Tls(tls) => match tls.write_vectored(&slices[..used]).await? {
                0 => return Err(io::ErrorKind::WriteZero.into()),
                n => skip += n,
            },
        }
    }
    if let Stream::Tls(tls) = stream {
        tls.flush().await?;
    }
    Ok(())
}

/// Read more bytes into `buf`; `Ok(0)` is end-of-file. `expected` is how
/// many more bytes the body is known to have (0 if unknown): room for them
/// is made at once, so a body of known length ends up in one buffer.
///
/// Reads go through `AsyncRead`, which forgets the socket's readiness after
/// a short read: the check of an idle connection before reuse then needs no
/// system call, and the next read waits for the poller instead of trying a
/// read that would fail with `EAGAIN`.
async fn read_more(stream: &mut Stream, buf: &mut BytesMut, expected: usize) -> io::Result<usize> {
    make_room(buf, expected);
    stream.read_buf(buf).await
}

/// Room in `buf` for the next read (see [`read_more`]).
fn make_room(buf: &mut BytesMut, expected: usize) {
    let spare = buf.capacity() - buf.len();
    if expected > spare {
        buf.reserve(expected.min(MAX_PRESIZE));
    } else if spare < 1024 {
        buf.reserve(READ_CHUNK);
    }
}

/// A body as a stream of pieces, polled in place (a stream built with
/// `unfold` moved the body into and out of a new future for every piece).
/// Nothing follows its end or an error.
struct BodyStream {
    body: Body,
    ended: bool,
}

impl futures_util::Stream for BodyStream {
    type Item = Result<Bytes>;

    fn poll_next(self: std::pin::Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Bytes>>> {
        let this = self.get_mut();
        if this.ended {
            return Poll::Ready(None);
        }
        let piece = std::task::ready!(this.body.poll_piece(cx));
        this.ended = !matches!(piece, Ok(Some(_)));
        Poll::Ready(piece.transpose())
    }
}

fn io_error(e: io::Error) -> Error {
    Error::transport(format!("upstream request failed: {e}"))
}

fn closed_early() -> Error {
    Error::transport("upstream request failed: connection closed before the response was complete")
}

fn invalid(what: impl std::fmt::Display) -> Error {
    Error::transport(format!("upstream request failed: invalid HTTP response: {what}"))
}

struct Head {
    status: u16,
    content_type: Option<String>,
    headers: Option<HeaderMap>,
    keep_alive: bool,
    content_length: Option<u64>,
    chunked: bool,
    /// A transfer coding other than chunked last: the body runs to close.
    other_coding: bool,
}

impl Head {
    /// How the body is delimited (RFC 9112 §6.3).
    fn framing(&self) -> Framing {
        if matches!(self.status, 204 | 304) {
            Framing::Length(0)
        } else if self.chunked {
            Framing::Chunked(Chunk::Size)
        } else if self.other_coding {
            Framing::Eof
        } else {
            self.content_length.map_or(Framing::Eof, Framing::Length)
        }
    }
}

async fn read_head(stream: &mut Stream, buf: &mut BytesMut) -> Result<Head> {
    loop {
        if !buf.is_empty()
            && let Some((len, head)) = parse_head(buf)?
        {
            buf.advance(len);
            return Ok(head);
        }
        if buf.len() >= MAX_HEAD {
            return Err(invalid("response head too large"));
        }
        if read_more(stream, buf, 0).await.map_err(io_error)? == 0 {
            return Err(if buf.is_empty() {
                Error::transport("upstream request failed: connection closed before a response was received")
            } else {
                closed_early()
            });
        }
    }
}

/// Parse a complete head at the start of `buf`: its length and contents.
fn parse_head(buf: &[u8]) -> Result<Option<(usize, Head)>> {
    // Uninitialized slots: the parser writes the ones it fills (zeroing all
    // 64 was 2 KiB of stores per response).
    let mut slots = [const { MaybeUninit::<httparse::Header<'_>>::uninit() }; MAX_HEADERS];
    let mut parsed = httparse::Response::new(&mut []);
    let len = match httparse::ParserConfig::default().parse_response_with_uninit_headers(&mut parsed, buf, &mut slots) {
        Ok(httparse::Status::Complete(len)) => len,
        Ok(httparse::Status::Partial) => return Ok(None),
        Err(e) => return Err(invalid(e)),
    };
    let status = parsed.code.unwrap_or(0);
    let http11 = parsed.version == Some(1);
    let mut head = Head {
        status,
        content_type: None,
        headers: None,
        keep_alive: http11,
        content_length: None,
        chunked: false,
        other_coding: false,
    };
    let mut all = (!(200..300).contains(&status)).then(HeaderMap::new);
    for h in parsed.headers.iter() {
        let name = h.name;
        if name.eq_ignore_ascii_case("content-length") {
            let value = std::str::from_utf8(h.value).ok().map(str::trim).and_then(|v| v.parse::<u64>().ok());
            match (value, head.content_length) {
                (None, _) => return Err(invalid("bad content-length")),
                (Some(v), Some(prev)) if v != prev => return Err(invalid("conflicting content-length")),
                (v, _) => head.content_length = v,
            }
        } else if name.eq_ignore_ascii_case("transfer-encoding") {
            let last = h.value.rsplit(|&b| b == b',').next().unwrap_or_default().trim_ascii();
            head.chunked = last.eq_ignore_ascii_case(b"chunked");
            head.other_coding = !head.chunked;
        } else if name.eq_ignore_ascii_case("connection") {
            for token in h.value.split(|&b| b == b',').map(<[u8]>::trim_ascii) {
                if token.eq_ignore_ascii_case(b"close") {
                    head.keep_alive = false;
                } else if token.eq_ignore_ascii_case(b"keep-alive") && !http11 {
                    head.keep_alive = true;
                }
            }
        } else if name.eq_ignore_ascii_case("content-type") {
            head.content_type = std::str::from_utf8(h.value).ok().map(str::to_owned);
        }
        if let Some(all) = all.as_mut()
            && let (Ok(n), Ok(v)) = (HeaderName::from_bytes(name.as_bytes()), HeaderValue::from_bytes(h.value))
        {
            all.append(n, v);
        }
    }
    head.headers = all;
    Ok(Some((len, head)))
}

/// How the rest of the body is delimited.
enum Framing {
    /// This many bytes remain.
    Length(u64),
    Chunked(Chunk),
    /// Until the upstream closes the connection.
    Eof,
    Done,
}

/// Where the chunked decoder is.
#[derive(Clone, Copy)]
enum Chunk {
    Size,
    Data(u64),
    /// The CRLF after a chunk's data.
    DataEnd,
    Trailers,
}

/// What the buffer yielded.
enum Step {
    Data(Bytes),
    NeedMore,
    End,
}

/// A response body, read on demand. Dropping it before the end closes the
/// connection.
pub(crate) struct Body {
    stream: Option<Stream>,
    buf: BytesMut,
    framing: Framing,
    keep_alive: bool,
    /// The buffer grew past [`KEEP_BUFFER`] for this body.
    oversized: bool,
    pool: Arc<Pool>,
    max_idle: usize,
}

impl Body {
    /// The next piece of the body, `None` at its end.
    pub(crate) async fn next(&mut self) -> Result<Option<Bytes>> {
        std::future::poll_fn(|cx| self.poll_piece(cx)).await
    }

    /// [`Body::next`] for a poller, so that a stream of the body can be
    /// polled in place.
    fn poll_piece(&mut self, cx: &mut Context<'_>) -> Poll<Result<Option<Bytes>>> {
        loop {
            let want = match self.step()? {
                Step::Data(data) => return Poll::Ready(Ok(Some(data))),
                Step::End => {
                    self.finish();
                    return Poll::Ready(Ok(None));
                }
                Step::NeedMore => match self.framing {
                    Framing::Length(rest) => usize::try_from(rest).unwrap_or(usize::MAX),
                    _ => 0,
                },
            };
            // Only a failed read leaves the body unfinished without its connection.
            let Some(stream) = self.stream.as_mut() else { return Poll::Ready(Err(closed_early())) };
            make_room(&mut self.buf, want);
            let read = std::task::ready!(poll_read_buf(Pin::new(stream), cx, &mut self.buf)).map_err(io_error)?;
            self.oversized |= self.buf.capacity() > KEEP_BUFFER;
            if read == 0 {
                if matches!(self.framing, Framing::Eof) {
                    self.keep_alive = false;
                    self.framing = Framing::Done;
                    self.stream = None;
                    return Poll::Ready(Ok(None));
                }
                self.stream = None;
                return Poll::Ready(Err(closed_early()));
            }
        }
    }

    /// The whole body. A body that arrives in one piece is returned as is.
    pub(crate) async fn collect(mut self) -> Result<Bytes> {
        if let Framing::Length(rest) = self.framing {
            // Read it all into one buffer, then hand that buffer out whole.
            let rest = usize::try_from(rest).map_err(|_| invalid("body too large"))?;
            while self.buf.len() < rest {
                let Some(stream) = self.stream.as_mut() else { return Err(closed_early()) };
                let missing = rest - self.buf.len();
                if read_more(stream, &mut self.buf, missing).await.map_err(io_error)? == 0 {
                    return Err(closed_early());
                }
                self.oversized |= self.buf.capacity() > KEEP_BUFFER;
            }
        }
        let Some(first) = self.next().await? else { return Ok(Bytes::new()) };
        let Some(second) = self.next().await? else { return Ok(first) };
        let mut all = BytesMut::with_capacity(first.len() + second.len());
        all.extend_from_slice(&first);
        all.extend_from_slice(&second);
        while let Some(more) = self.next().await? {
            all.extend_from_slice(&more);
        }
        Ok(all.freeze())
    }

    /// The body as a stream of pieces.
    pub(crate) fn into_stream(self) -> BoxStream<'static, Result<Bytes>> {
        BodyStream { body: self, ended: false }.boxed()
    }

    /// Take the next piece out of what is buffered.
    fn step(&mut self) -> Result<Step> {
        loop {
            match &mut self.framing {
                Framing::Done => return Ok(Step::End),
                Framing::Length(0) => {
                    self.framing = Framing::Done;
                    return Ok(Step::End);
                }
                Framing::Length(rest) => {
                    if self.buf.is_empty() {
                        return Ok(Step::NeedMore);
                    }
                    let n = self.buf.len().min(usize::try_from(*rest).unwrap_or(usize::MAX));
                    *rest -= n as u64;
                    return Ok(Step::Data(self.buf.split_to(n).freeze()));
                }
                Framing::Eof => {
                    if self.buf.is_empty() {
                        return Ok(Step::NeedMore);
                    }
                    return Ok(Step::Data(self.buf.split().freeze()));
                }
                Framing::Chunked(state) => match *state {
                    Chunk::Size => {
                        let Some(line) = take_line(&mut self.buf)? else { return Ok(Step::NeedMore) };
                        let size = chunk_size(&line)?;
                        *state = if size == 0 { Chunk::Trailers } else { Chunk::Data(size) };
                    }
                    Chunk::Data(rest) => {
                        if self.buf.is_empty() {
                            return Ok(Step::NeedMore);
                        }
                        let n = self.buf.len().min(usize::try_from(rest).unwrap_or(usize::MAX));
                        let left = rest - n as u64;
                        *state = if left == 0 { Chunk::DataEnd } else { Chunk::Data(left) };
                        return Ok(Step::Data(self.buf.split_to(n).freeze()));
                    }
                    Chunk::DataEnd => {
                        let Some(line) = take_line(&mut self.buf)? else { return Ok(Step::NeedMore) };
                        if !line.is_empty() {
                            return Err(invalid("chunk data longer than its size"));
                        }
                        *state = Chunk::Size;
                    }
                    Chunk::Trailers => {
                        let Some(line) = take_line(&mut self.buf)? else { return Ok(Step::NeedMore) };
                        if line.is_empty() {
                            self.framing = Framing::Done;
                            return Ok(Step::End);
                        }
                    }
                },
            }
        }
    }

    /// The body ended: give the connection back when it may carry another request.
    fn finish(&mut self) {
        self.framing = Framing::Done;
        if let Some(stream) = self.stream.take()
            && self.keep_alive
            && self.buf.is_empty()
        {
            // The body's pieces still share the buffer; a large one is left
            // to them and the connection starts a small one next time.
            let buf = if self.oversized { BytesMut::new() } else { std::mem::take(&mut self.buf) };
            self.pool.checkin(Conn { stream, buf }, self.max_idle);
        }
    }
}

/// One CRLF- (or LF-) terminated line off the front of `buf`, without the terminator.
fn take_line(buf: &mut BytesMut) -> Result<Option<Bytes>> {
    let Some(end) = memchr::memchr(b'\n', buf) else {
        return if buf.len() > MAX_LINE { Err(invalid("chunked line too long")) } else { Ok(None) };
    };
    let mut line = buf.split_to(end + 1);
    line.truncate(end);
    if line.last() == Some(&b'\r') {
        line.truncate(end - 1);
    }
    Ok(Some(line.freeze()))
}

/// The hexadecimal size of a chunk-size line, extensions ignored.
fn chunk_size(line: &[u8]) -> Result<u64> {
    let digits = line.split(|&b| b == b';').next().unwrap_or_default().trim_ascii();
    if digits.is_empty() || digits.len() > 15 {
        return Err(invalid("bad chunk size"));
    }
    digits.iter().try_fold(0u64, |size, &b| {
        let digit = (b as char).to_digit(16).ok_or_else(|| invalid("bad chunk size"))?;
        Ok(size * 16 + u64::from(digit))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn body_of(raw: &[u8], framing: Framing) -> Body {
        Body {
            stream: None,
            buf: BytesMut::from(raw),
            framing,
            keep_alive: true,
            oversized: false,
            pool: Arc::default(),
            max_idle: 1,
        }
    }

    fn drain(body: &mut Body) -> Result<(Vec<Bytes>, bool)> {
        let mut out = Vec::new();
        loop {
            match body.step()? {
                Step::Data(d) => out.push(d),
                Step::NeedMore => return Ok((out, false)),
                Step::End => return Ok((out, true)),
            }
        }
    }

    #[test]
    fn decodes_chunked_with_extensions_and_trailers() {
        let raw = b"5;ext=1\r\nhello\r\n7\r\n, world\r\n0\r\nx-trailer: 1\r\n\r\n";
        let (pieces, ended) = drain(&mut body_of(raw, Framing::Chunked(Chunk::Size))).unwrap();
        assert!(ended);
        assert_eq!(pieces.concat(), b"hello, world");
    }

    #[test]
    fn chunked_waits_for_more_mid_chunk() {
        let mut body = body_of(b"a\r\n01234", Framing::Chunked(Chunk::Size));
        let (pieces, ended) = drain(&mut body).unwrap();
        assert!(!ended);
        assert_eq!(pieces.concat(), b"01234");
        body.buf.extend_from_slice(b"56789\r\n0\r\n\r\n");
        let (pieces, ended) = drain(&mut body).unwrap();
        assert!(ended);
        assert_eq!(pieces.concat(), b"56789");
    }

    #[test]
    fn rejects_bad_chunk_sizes_and_overlong_chunks() {
        assert!(drain(&mut body_of(b"zz\r\n", Framing::Chunked(Chunk::Size))).is_err());
        assert!(drain(&mut body_of(b"2\r\nabc\r\n", Framing::Chunked(Chunk::Size))).is_err());
        assert!(chunk_size(b"ffffffffffffffff").is_err(), "sizes that overflow are refused");
        assert_eq!(chunk_size(b" 1F ").unwrap(), 31);
    }

    #[test]
    fn content_length_body_stops_at_its_length() {
        let mut body = body_of(b"abc", Framing::Length(3));
        let (pieces, ended) = drain(&mut body).unwrap();
        assert!(ended);
        assert_eq!(pieces.concat(), b"abc");
    }

    #[test]
    fn parses_heads() {
        let raw = b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: 2\r\n\r\n{}";
        let (len, head) = parse_head(raw).unwrap().unwrap();
        assert_eq!(len, raw.len() - 2, "the head ends before the body");
        assert_eq!((head.status, head.content_length, head.keep_alive), (200, Some(2), true));
        assert_eq!(head.content_type.as_deref(), Some("application/json"));
        assert!(head.headers.is_none(), "headers are kept only for errors");

        let (_, head) =
            parse_head(b"HTTP/1.1 429 Too Many\r\nRetry-After: 3\r\nConnection: close\r\n\r\n").unwrap().unwrap();
        assert!(!head.keep_alive);
        assert_eq!(head.headers.unwrap()["retry-after"], "3");
        assert!(matches!(
            head_framing(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip, chunked\r\n\r\n"),
            Framing::Chunked(_)
        ));
        assert!(matches!(head_framing(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip\r\n\r\n"), Framing::Eof));
        assert!(matches!(head_framing(b"HTTP/1.1 204 No Content\r\n\r\n"), Framing::Length(0)));
        assert!(matches!(head_framing(b"HTTP/1.0 200 OK\r\n\r\n"), Framing::Eof));

        let (_, head) =
            parse_head(b"HTTP/1.0 200 OK\r\nConnection: keep-alive\r\nContent-Length: 0\r\n\r\n").unwrap().unwrap();
        assert!(head.keep_alive, "HTTP/1.0 keeps the connection only when asked");
        assert!(parse_head(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nContent-Length: 3\r\n\r\n").is_err());
        assert!(parse_head(b"HTTP/1.1 200 OK\r\nContent-Le").unwrap().is_none());
        assert!(parse_head(b"garbage\r\n\r\n").is_err());
    }

    fn head_framing(raw: &[u8]) -> Framing {
        parse_head(raw).unwrap().unwrap().1.framing()
    }

    #[test]
    fn targets_carry_path_query_host_and_headers() {
        let name = HeaderName::from_static("authorization");
        let value = HeaderValue::from_static("Bearer k");
        let url = Url::parse("http://10.0.0.5:8000/v1/chat/completions?api-version=1").unwrap();
        let target = Target::post(&url, &[(&name, &value)]).unwrap();
        assert_eq!(&*target.connect_to, "10.0.0.5:8000");
        assert_eq!(
            std::str::from_utf8(&target.head).unwrap(),
            "POST /v1/chat/completions?api-version=1 HTTP/1.1\r\nhost: 10.0.0.5:8000\r\nauthorization: Bearer k\r\n"
        );
        let default_port = Target::post(&Url::parse("http://[::1]/v1/x").unwrap(), &[]).unwrap();
        assert_eq!(&*default_port.connect_to, "[::1]:80");
        assert!(default_port.tls.is_none());
        let tls = Target::post(&Url::parse("https://api.example.com/v1/chat/completions").unwrap(), &[]).unwrap();
        assert_eq!(&*tls.connect_to, "api.example.com:443");
        assert_eq!(tls.tls, Some(ServerName::try_from("api.example.com").unwrap()));
        assert!(std::str::from_utf8(&tls.head).unwrap().contains("\r\nhost: api.example.com\r\n"));
        let tls_ip = Target::post(&Url::parse("https://[::1]:8443/v1/x").unwrap(), &[]).unwrap();
        assert_eq!((&*tls_ip.connect_to, tls_ip.tls), ("[::1]:8443", Some(ServerName::try_from("::1").unwrap())));
        assert!(Target::post(&Url::parse("ftp://h/v1").unwrap(), &[]).is_none());
        assert!(Target::post(&Url::parse("http://u:p@h/v1").unwrap(), &[]).is_none());
        assert!(Target::post(&Url::parse("https://u@h/v1").unwrap(), &[]).is_none());
    }

    #[tokio::test]
    async fn a_pooled_connection_does_not_keep_a_large_body_buffer() {
        use tokio::io::AsyncWriteExt;
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = Url::parse(&format!("http://{}/v1/embeddings", listener.local_addr().unwrap())).unwrap();
        tokio::spawn(async move {
            let (mut sock, _) = listener.accept().await.unwrap();
            let mut request = [0u8; 4096];
            for len in [1024 * 1024, 10] {
                let _ = tokio::io::AsyncReadExt::read(&mut sock, &mut request).await.unwrap();
                let head = format!("HTTP/1.1 200 OK\r\ncontent-length: {len}\r\n\r\n");
                sock.write_all(head.as_bytes()).await.unwrap();
                sock.write_all(&vec![b'x'; len]).await.unwrap();
            }
        });
        let settings = Settings {
            connect_timeout: Duration::from_secs(5),
            max_idle: 4,
            idle_timeout: Duration::from_secs(60),
            plain: true,
            tls: None,
        };
        let (pool, target) = (Arc::new(Pool::default()), Target::post(&url, &[]).unwrap());
        let big = post(&settings, &pool, &target, b"{}").await.unwrap().body.collect().await.unwrap();
        assert_eq!(big.len(), 1024 * 1024);
        // Once the gateway has sent the big body, a buffer the pooled
        // connection still shared would be reclaimed whole for its next answer.
        drop(big);
        let small = post(&settings, &pool, &target, b"{}").await.unwrap().body.collect().await.unwrap();
        assert_eq!(&small[..], b"xxxxxxxxxx");
        let kept: Vec<usize> = pool.idle.lock().unwrap().iter().map(|i| i.buf.capacity()).collect();
        assert_eq!(kept.len(), 1, "one connection, reused");
        assert!(kept[0] <= READ_CHUNK, "the pooled connection kept a {} byte buffer", kept[0]);
    }
}
