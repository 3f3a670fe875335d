//! SSE framing of a served chat stream (RUN-14): each upstream chunk is
//! forwarded as soon as it arrives as `data: <chunk>\n\n`; a clean end adds
//! `data: [DONE]`; an upstream cut ends with an error event and no `[DONE]`,
//! so clients never mistake a truncated answer for a complete one. Dropping
//! the body (client gone) drops the upstream stream, which cancels the call.

use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Instant;

use bytes::{BufMut, Bytes, BytesMut};
use deltallm_providers::{ChatStream, StreamUsage};
use deltallm_router::UnixMs;
use futures_util::StreamExt;
use futures_util::stream::BoxStream;

use crate::Gateway;
use crate::pricing::Units;
use crate::proxy::{Endpoint, RouteDecision};
use crate::registry::ResolvedDeployment;
use crate::spend::SpendContext;

const DONE: &[u8] = b"data: [DONE]\n\n";

/// Largest body frame built from events that arrived together.
const COALESCE_LIMIT: usize = 64 * 1024;
/// Initial size of one body frame's buffer: a handful of typical chunk events.
const FRAME_BUFFER: usize = 2 * 1024;

fn put_frame(out: &mut BytesMut, payload: &[u8]) {
    out.reserve(payload.len() + 8);
    out.put_slice(b"data: ");
    out.put_slice(payload);
    out.put_slice(b"\n\n");
}

struct State {
    gateway: Gateway,
    first: Option<Bytes>,
    upstream: ChatStream,
    usage: StreamUsage,
    deployment: Arc<ResolvedDeployment>,
    /// Taken when the outcome is recorded; still present on drop = client left.
    spend: Option<SpendContext>,
    route: RouteDecision,
    started: Instant,
}

impl State {
    fn units(&self) -> Units {
        let mut u = Units::default();
        if let Some(us) = self.usage.get() {
            u.prompt_tokens = us.prompt_tokens;
            u.completion_tokens = us.completion_tokens;
            u.prompt_tokens_cached = us.prompt_tokens_cached.unwrap_or(0);
        }
        u
    }

    fn record(&mut self, status: &'static str, http_status: i32, error_type: Option<&'static str>) {
        let Some(spend) = self.spend.take() else {
            return;
        };
        let units = self.units();
        let total = units.prompt_tokens + units.completion_tokens;
        if total > 0 {
            self.deployment.state.add_usage(0, total, UnixMs::now());
        }
        let mut record = spend.served(
            &self.deployment,
            Endpoint::ChatCompletions,
            &units,
            &self.route,
            self.started,
            status,
            http_status,
            error_type,
        );
        if self.usage.get().is_none() && record.unpriced_reason.is_none() {
            // Say why a served stream costs 0 rather than record a silent zero.
            record.unpriced_reason = Some("upstream stream reported no usage");
        }
        self.gateway.record_spend(record);
    }
}

impl State {
    /// Append one upstream item to `out`, framed; `true` when the stream has
    /// ended (clean end: `[DONE]`; cut: an error event, no `[DONE]`).
    fn push(
        &mut self,
        out: &mut BytesMut,
        item: Option<deltallm_providers::Result<Bytes>>,
        map: Option<ChunkMap>,
    ) -> bool {
        match item {
            Some(Ok(chunk)) => {
                match map {
                    Some(map) => put_frame(out, &map(&chunk)),
                    None => put_frame(out, &chunk),
                }
                false
            }
            Some(Err(e)) => {
                let e = match self.deployment.connection.as_ref() {
                    Some(conn) => conn.scrub(e),
                    None => e,
                };
                // The stream was cut after bytes were sent: it cannot fail over,
                // but it does count against the deployment's health.
                self.deployment.state.record_failure(&e.message, &self.gateway.inner.cooldown, UnixMs::now());
                tracing::warn!(deployment_id = %self.route.served, error = %e.message, "upstream stream failed mid-response");
                self.record("failure", 200, Some("stream_interrupted"));
                let event = serde_json::json!({"error": {
                    "message": format!("upstream stream interrupted: {}", e.client_message()),
                    "type": "server_error",
                    "param": null,
                    "code": "stream_interrupted",
                }});
                put_frame(out, event.to_string().as_bytes());
                true
            }
            None => {
                self.record("success", 200, None);
                out.put_slice(DONE);
                true
            }
        }
    }
}

impl Drop for State {
    fn drop(&mut self) {
        if self.spend.is_some() {
            tracing::debug!(deployment_id = %self.route.served, "client disconnected mid-stream; upstream call cancelled");
            self.record("client_disconnected", 499, None);
        }
    }
}

/// Reshapes one chunk payload before framing (legacy completions).
pub(crate) type ChunkMap = fn(&[u8]) -> Bytes;

/// Frame a stream whose first chunk has already arrived.
#[allow(clippy::too_many_arguments)]
pub(crate) fn framed(
    gateway: Gateway,
    first: Bytes,
    upstream: ChatStream,
    deployment: Arc<ResolvedDeployment>,
    spend: SpendContext,
    route: RouteDecision,
    started: Instant,
    map: Option<ChunkMap>,
) -> BoxStream<'static, Bytes> {
    let usage = upstream.usage();
    let state = State { gateway, first: Some(first), upstream, usage, deployment, spend: Some(spend), route, started };
    Frames { state, map, ended: false }.boxed()
}

/// The framed body, polled in place (a stream built with `unfold` moved the
/// whole state into and out of a new future for every frame).
struct Frames {
    state: State,
    map: Option<ChunkMap>,
    ended: bool,
}

impl futures_util::Stream for Frames {
    type Item = Bytes;

    fn poll_next(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Bytes>> {
        let this = self.get_mut();
        if this.ended {
            return Poll::Ready(None);
        }
        let state = &mut this.state;
        let first = match state.first.take() {
            Some(first) => Some(Ok(first)),
            None => match state.upstream.poll_next_unpin(cx) {
                Poll::Ready(item) => item,
                Poll::Pending => return Poll::Pending,
            },
        };
        // Sized for a few events: growing from empty reallocated per frame.
        let mut out = BytesMut::with_capacity(FRAME_BUFFER);
        this.ended = state.push(&mut out, first, this.map);
        // Events the upstream already delivered go out in the same body frame:
        // one write instead of one per event, and never a wait for more.
        while !this.ended && out.len() < COALESCE_LIMIT {
            let Poll::Ready(next) = state.upstream.poll_next_unpin(cx) else { break };
            this.ended = state.push(&mut out, next, this.map);
        }
        Poll::Ready(Some(out.freeze()))
    }
}
