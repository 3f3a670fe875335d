//! Server-sent events from the upstream, re-emitted as OpenAI chunk payloads.
//!
//! The byte stream is split into lines incrementally; a line that arrives
//! whole inside one network chunk is a zero-copy slice of it. Each payload is
//! yielded as soon as its line is complete. The stream owns the reqwest
//! response, so dropping it cancels the upstream request.

use std::pin::Pin;
use std::sync::{Arc, OnceLock};
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::{Buf, Bytes, BytesMut};
use futures_util::FutureExt;
use futures_util::stream::{BoxStream, Stream, StreamExt};

use crate::error::{Error, Result};
use crate::usage::{self, Usage};

/// Splits a byte stream into lines (`\n` or `\r\n`), across chunk borders.
#[derive(Default)]
pub(crate) struct LineSplitter {
    /// Start of a line whose end has not arrived yet.
    partial: BytesMut,
    /// Unconsumed rest of the current network chunk.
    chunk: Bytes,
}

impl LineSplitter {
    pub(crate) fn push(&mut self, chunk: Bytes) {
        if !self.chunk.is_empty() {
            // Only happens if the caller pushes before draining; keep order.
            self.partial.extend_from_slice(&self.chunk);
        }
        self.chunk = chunk;
    }

    /// The next complete non-empty line without its terminator. Empty
    /// lines (the blank line after every event) are passed over: no
    /// translator needs them, and each would cost a slice of the chunk.
    pub(crate) fn next_line(&mut self) -> Option<Bytes> {
        loop {
            let i = memchr::memchr(b'\n', &self.chunk);
            if let Some(i) = i
                && self.partial.is_empty()
                && (i == 0 || (i == 1 && self.chunk[0] == b'\r'))
            {
                self.chunk.advance(i + 1);
                continue;
            }
            return self.take_line(i);
        }
    }

    fn take_line(&mut self, end: Option<usize>) -> Option<Bytes> {
        match end {
            Some(i) => {
                let piece = self.chunk.split_to(i + 1);
                let line = if self.partial.is_empty() {
                    piece
                } else {
                    self.partial.extend_from_slice(&piece);
                    self.partial.split().freeze()
                };
                Some(trim_eol(line))
            }
            None => {
                if !self.chunk.is_empty() {
                    self.partial.extend_from_slice(&self.chunk);
                    self.chunk = Bytes::new();
                }
                None
            }
        }
    }

    /// At end of input: a last line that had no terminator.
    pub(crate) fn finish(&mut self) -> Option<Bytes> {
        if !self.chunk.is_empty() {
            self.partial.extend_from_slice(&self.chunk);
            self.chunk = Bytes::new();
        }
        (!self.partial.is_empty()).then(|| trim_eol(self.partial.split().freeze()))
    }
}

fn trim_eol(mut line: Bytes) -> Bytes {
    if line.last() == Some(&b'\n') {
        line.truncate(line.len() - 1);
    }
    if line.last() == Some(&b'\r') {
        line.truncate(line.len() - 1);
    }
    line
}

/// One SSE line, classified.
pub(crate) enum Field {
    /// `data:` payload (one leading space removed), sliced from the line.
    Data(Bytes),
    /// Blank line, comment, `event:`, `id:`, `retry:` or anything else.
    /// Event names are not needed: OpenAI sends none and Anthropic repeats
    /// the event type inside the data.
    Other,
}

pub(crate) fn field(line: &Bytes) -> Field {
    const PREFIX: &[u8] = b"data:";
    if line.starts_with(PREFIX) {
        let start = PREFIX.len() + usize::from(line.get(PREFIX.len()) == Some(&b' '));
        Field::Data(line.slice(start..))
    } else {
        Field::Other
    }
}

/// What a translator makes of one line.
pub(crate) enum Step {
    /// Nothing to forward.
    Skip,
    /// Forward this OpenAI chunk payload.
    Emit(Bytes),
    /// The upstream's terminal marker: end the stream successfully.
    Done,
    /// The upstream reported an error inside the stream.
    Fail(Error),
}

/// Turns upstream SSE lines into OpenAI chunk payloads.
pub(crate) trait Translate: Send + Unpin + 'static {
    fn line(&mut self, line: Bytes) -> Step;
    /// Usage seen so far (the last one reported wins).
    fn usage(&self) -> Option<Usage>;
}

/// OpenAI-compatible upstreams already send chunk payloads: forward `data:`
/// lines verbatim and watch for `[DONE]`, in-stream errors and usage.
#[derive(Default)]
pub(crate) struct OpenAiSse {
    usage: Option<Usage>,
    /// Drop the usage-only chunk (empty `choices`): the gateway requested it
    /// for pricing, and a client that did not ask may not expect it.
    hide_usage_chunk: bool,
}

impl OpenAiSse {
    pub(crate) fn new(hide_usage_chunk: bool) -> Self {
        Self { usage: None, hide_usage_chunk }
    }
}

/// The usual layout of the usage-only chunk, decided without a scan:
/// `..."choices":[],"usage":...` where `"usage"` at `usage_key` is the body's
/// last top-level member. The member right before it is then top-level too,
/// so `Some(true)` when it is `"choices"` with `[]`; `None` (ask
/// [`has_no_choices`]) for any other layout.
fn empty_choices_before(payload: &[u8], usage_key: usize) -> Option<bool> {
    let rest = payload[..usage_key].trim_ascii_end().strip_suffix(b",")?;
    let rest = rest.trim_ascii_end().strip_suffix(b"]")?.trim_ascii_end().strip_suffix(b"[")?;
    let rest = rest.trim_ascii_end().strip_suffix(b":")?.trim_ascii_end().strip_suffix(b"\"choices\"")?;
    // An escaped quote would make `"choices"` the end of a longer string.
    (!usage::quote_is_escaped(rest)).then_some(true)
}

/// Is this chunk the usage-only one (`"choices": []`)?
/// Only asked of chunks whose usage already parsed, so a top-level scan is
/// enough: absent, `null` and `[]` all mean no choices.
fn has_no_choices(payload: &[u8]) -> bool {
    let Some(value) = usage::top_level_value(payload, b"choices") else {
        return true;
    };
    if value.starts_with(b"null") {
        return true;
    }
    value.strip_prefix(b"[").is_some_and(|rest| rest.trim_ascii_start().starts_with(b"]"))
}

impl Translate for OpenAiSse {
    fn line(&mut self, line: Bytes) -> Step {
        let Field::Data(payload) = field(&line) else {
            return Step::Skip;
        };
        let trimmed = payload.trim_ascii();
        if trimmed == b"[DONE]" {
            return Step::Done;
        }
        if trimmed.is_empty() {
            return Step::Skip;
        }
        if trimmed.starts_with(b"{\"error\"") {
            return Step::Fail(stream_error(trimmed));
        }
        if usage::mentions_usage(&payload)
            && let Some((u, usage_key)) = usage::from_chunk(&payload)
        {
            self.usage = Some(u);
            if self.hide_usage_chunk
                && usage_key
                    .and_then(|at| empty_choices_before(&payload, at))
                    .unwrap_or_else(|| has_no_choices(&payload))
            {
                return Step::Skip;
            }
        }
        Step::Emit(payload)
    }

    fn usage(&self) -> Option<Usage> {
        self.usage.clone()
    }
}

/// An `{"error": ...}` payload sent mid-stream. No status line exists any
/// more, so it is classified as a 5xx-like upstream failure unless its text
/// says otherwise.
pub(crate) fn stream_error(payload: &[u8]) -> Error {
    let mut err = Error::from_response(500, &http::HeaderMap::new(), payload);
    err.status = None;
    err
}

/// Usage of a finished stream, readable after the stream ends or is dropped.
#[derive(Debug, Clone, Default)]
pub struct StreamUsage(Arc<OnceLock<Option<Usage>>>);

impl StreamUsage {
    /// The last usage the upstream reported; `None` while the stream is
    /// still running or if the upstream never reported usage.
    pub fn get(&self) -> Option<Usage> {
        self.0.get().cloned().flatten()
    }

    /// Has the stream finished (completed, failed or been dropped)?
    pub fn is_final(&self) -> bool {
        self.0.get().is_some()
    }

    fn set(&self, usage: Option<Usage>) {
        // First writer wins: the end of the stream or its drop, whichever is first.
        let _ = self.0.set(usage);
    }
}

/// A stream of OpenAI `chat.completion.chunk` payloads (without `data: `
/// framing). It yields `Err` and ends if the upstream fails or closes before
/// its terminal marker.
pub struct ChatStream {
    inner: BoxStream<'static, Result<Bytes>>,
    usage: StreamUsage,
}

impl ChatStream {
    /// A handle to read usage once the stream has ended.
    pub fn usage(&self) -> StreamUsage {
        self.usage.clone()
    }

    pub(crate) fn new<T: Translate>(
        body: BoxStream<'static, Result<Bytes>>,
        translator: T,
        idle_timeout: Duration,
    ) -> Self {
        let usage = StreamUsage::default();
        let events = Events {
            body,
            translator,
            splitter: LineSplitter::default(),
            idle_timeout,
            idle: None,
            waiting: false,
            done: false,
            usage: usage.clone(),
        };
        Self { inner: events.boxed(), usage }
    }
}

impl std::fmt::Debug for ChatStream {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ChatStream").field("usage", &self.usage).finish_non_exhaustive()
    }
}

impl Stream for ChatStream {
    type Item = Result<Bytes>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        self.inner.poll_next_unpin(cx)
    }
}

/// Stands in for an idle limit too large to add to the clock.
const FOREVER: Duration = Duration::from_secs(30 * 365 * 24 * 3600);

/// The upstream body's lines, translated. Polled in place: a stream built
/// with `unfold` moved this whole state into and out of a new future for
/// every event.
struct Events<T: Translate> {
    body: BoxStream<'static, Result<Bytes>>,
    translator: T,
    splitter: LineSplitter,
    /// RUN-17 read timeout, applied to the gap between network chunks so a
    /// long but live stream is never cut.
    idle_timeout: Duration,
    /// The idle timer, made the first time the body has nothing ready.
    idle: Option<Pin<Box<tokio::time::Sleep>>>,
    /// The timer is armed for the current wait for a network chunk.
    waiting: bool,
    done: bool,
    usage: StreamUsage,
}

impl<T: Translate> Drop for Events<T> {
    fn drop(&mut self) {
        self.usage.set(self.translator.usage());
    }
}

impl<T: Translate> Stream for Events<T> {
    type Item = Result<Bytes>;

    fn poll_next(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Bytes>>> {
        let this = self.get_mut();
        if this.done {
            return Poll::Ready(None);
        }
        loop {
            if let Some(line) = this.splitter.next_line() {
                match this.translator.line(line) {
                    Step::Skip => continue,
                    Step::Emit(payload) => return Poll::Ready(Some(Ok(payload))),
                    Step::Done => {
                        this.finish();
                        this.read_what_arrived();
                        return Poll::Ready(None);
                    }
                    Step::Fail(err) => return this.failed(err),
                }
            }
            match this.body.poll_next_unpin(cx) {
                Poll::Ready(Some(Ok(chunk))) => {
                    this.waiting = false;
                    this.splitter.push(chunk);
                }
                Poll::Ready(Some(Err(err))) => return this.failed(err),
                Poll::Ready(None) => {
                    // A final line without a terminator may still be the marker.
                    if let Some(line) = this.splitter.finish() {
                        match this.translator.line(line) {
                            Step::Done => {
                                this.finish();
                                return Poll::Ready(None);
                            }
                            Step::Emit(payload) => {
                                // Emitted now; the end without a marker is reported next.
                                return Poll::Ready(Some(Ok(payload)));
                            }
                            Step::Fail(err) => return this.failed(err),
                            Step::Skip => {}
                        }
                    }
                    return this.failed(Error::transport("upstream stream ended before completion"));
                }
                Poll::Pending => {
                    // The deadline is set when a wait starts, not per poll.
                    if !this.waiting {
                        let now = tokio::time::Instant::now();
                        // A limit too large to add is as good as none (as `tokio::time::timeout` treats it).
                        let deadline = now.checked_add(this.idle_timeout).unwrap_or(now + FOREVER);
                        match this.idle.as_mut() {
                            Some(sleep) => sleep.as_mut().reset(deadline),
                            None => this.idle = Some(Box::pin(tokio::time::sleep_until(deadline))),
                        }
                        this.waiting = true;
                    }
                    if let Some(sleep) = this.idle.as_mut()
                        && sleep.as_mut().poll(cx).is_ready()
                    {
                        let secs = this.idle_timeout.as_secs_f64();
                        return this.failed(Error::timeout(format!("upstream stream sent nothing for {secs} s")));
                    }
                    return Poll::Pending;
                }
            }
        }
    }
}

impl<T: Translate> Events<T> {
    /// After the terminal marker a body usually has only its framing left
    /// (the last chunk of a chunked body). Read what has already arrived, so
    /// a body that has ended can give its connection back to the pool;
    /// nothing still in flight is waited for.
    fn read_what_arrived(&mut self) {
        for _ in 0..4 {
            match self.body.next().now_or_never() {
                Some(Some(Ok(_))) => continue,
                _ => break,
            }
        }
    }

    fn finish(&mut self) {
        self.done = true;
        self.usage.set(self.translator.usage());
    }

    /// Yield `err` and end: nothing follows an error.
    fn failed(&mut self, err: Error) -> Poll<Option<Result<Bytes>>> {
        self.finish();
        // Release the upstream connection now rather than when the consumer
        // gets around to dropping the stream.
        self.body = futures_util::stream::empty().boxed();
        self.idle = None;
        Poll::Ready(Some(Err(err)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn usage_only_chunks_are_told_apart_from_content_chunks() {
        assert!(has_no_choices(br#"{"id":"c","choices":[],"usage":{"prompt_tokens":1}}"#));
        assert!(has_no_choices(br#"{"id":"c","choices": [ ],"usage":{}}"#));
        assert!(has_no_choices(br#"{"id":"c","choices":null,"usage":{}}"#));
        assert!(has_no_choices(br#"{"id":"c","usage":{}}"#));
        assert!(!has_no_choices(br#"{"choices":[{"index":0,"delta":{"content":"[]"}}],"usage":{}}"#));
        // A nested "choices" key does not count as the top-level one.
        assert!(!has_no_choices(br#"{"x":{"choices":[]},"choices":[{"index":0}],"usage":{}}"#));
    }

    #[test]
    fn the_usual_usage_chunk_is_recognized_from_its_end() {
        let usage_key = |p: &[u8]| usage::from_chunk(p).and_then(|(_, at)| at);
        let usual = br#"{"id":"c","object":"chat.completion.chunk","choices":[],"usage":{"prompt_tokens":1,"completion_tokens":2,"total_tokens":3}}"#;
        let at = usage_key(usual).expect("trailing usage");
        assert_eq!(empty_choices_before(usual, at), Some(true));
        let spaced = br#"{"id":"c","choices" : [ ] , "usage":{"prompt_tokens":1}}"#;
        assert_eq!(empty_choices_before(spaced, usage_key(spaced).unwrap()), Some(true));
        // Other layouts are left to the scan, which still answers right.
        for (payload, hidden) in [
            (&br#"{"choices":[{"index":0,"delta":{}}],"usage":{"prompt_tokens":1}}"#[..], false),
            (br#"{"usage_note":"\"choices\":[]","choices":[{"index":0}],"usage":{"prompt_tokens":1}}"#, false),
            (br#"{"x":"a\"choices\":[],","usage":{"prompt_tokens":1}}"#, true),
        ] {
            let at = usage_key(payload).unwrap();
            assert_eq!(empty_choices_before(payload, at), None, "{}", String::from_utf8_lossy(payload));
            assert_eq!(has_no_choices(payload), hidden, "{}", String::from_utf8_lossy(payload));
        }
        // `"choices"` whose opening quote is escaped ends a longer string.
        let escaped = br#"{"x":"a\"choices":[],"usage":{"prompt_tokens":1}}"#;
        assert_eq!(empty_choices_before(escaped, usage_key(escaped).unwrap()), None);
        let mut t = OpenAiSse::new(true);
        let line = [&b"data: "[..], usual].concat();
        assert!(matches!(t.line(Bytes::from(line)), Step::Skip), "the usual usage chunk is hidden");
        assert_eq!(t.usage().map(|u| u.total_tokens), Some(3));
    }

    fn lines(splitter: &mut LineSplitter) -> Vec<String> {
        std::iter::from_fn(|| splitter.next_line()).map(|l| String::from_utf8(l.to_vec()).unwrap()).collect()
    }

    #[test]
    fn splits_across_chunks_and_crlf() {
        let mut s = LineSplitter::default();
        s.push(Bytes::from_static(b"data: a\r\n\r\nda"));
        assert_eq!(lines(&mut s), ["data: a"], "blank lines are passed over");
        s.push(Bytes::from_static(b"ta: b"));
        assert!(lines(&mut s).is_empty());
        s.push(Bytes::from_static(b"c\n: comment\ndata: [DONE]"));
        assert_eq!(lines(&mut s), ["data: bc", ": comment"]);
        assert_eq!(s.finish().as_deref(), Some(&b"data: [DONE]"[..]));
        assert!(s.finish().is_none());
    }

    #[test]
    fn whole_lines_are_slices_of_the_chunk() {
        let chunk = Bytes::from_static(b"data: {\"x\":1}\n");
        let mut s = LineSplitter::default();
        s.push(chunk.clone());
        let line = s.next_line().unwrap();
        let Field::Data(payload) = field(&line) else { panic!("not data") };
        assert_eq!(&payload[..], b"{\"x\":1}");
        // Same allocation: the payload points into the network chunk.
        assert_eq!(payload.as_ptr(), chunk[6..].as_ptr());
    }

    #[test]
    fn openai_translator_forwards_data_only() {
        let mut t = OpenAiSse::default();
        assert!(matches!(t.line(Bytes::from_static(b": keepalive")), Step::Skip));
        assert!(matches!(t.line(Bytes::from_static(b"event: message")), Step::Skip));
        assert!(matches!(t.line(Bytes::from_static(b"")), Step::Skip));
        let Step::Emit(p) = t.line(Bytes::from_static(b"data:{\"a\":1}")) else { panic!("emit") };
        assert_eq!(&p[..], b"{\"a\":1}");
        let with_usage =
            b"data: {\"choices\":[],\"usage\":{\"prompt_tokens\":2,\"completion_tokens\":3,\"total_tokens\":5}}";
        assert!(matches!(t.line(Bytes::from_static(with_usage)), Step::Emit(_)));
        assert_eq!(t.usage().map(|u| u.total_tokens), Some(5));
        assert!(matches!(t.line(Bytes::from_static(b"data: [DONE]")), Step::Done));
        let Step::Fail(e) = t.line(Bytes::from_static(b"data: {\"error\":{\"message\":\"overloaded\"}}")) else {
            panic!("fail")
        };
        assert_eq!(e.message, "overloaded");
    }
}
