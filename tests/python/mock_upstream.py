"""A small OpenAI-compatible upstream for the SDK tests.

Serves, on 127.0.0.1 and an ephemeral port:

* ``POST /v1/chat/completions`` -- a JSON completion, or with ``"stream": true``
  an SSE stream of chunks sent with small delays and ending ``data: [DONE]``
  (plus a usage chunk when ``stream_options.include_usage`` is set);
* ``POST /v1/embeddings`` -- fixed vectors, as floats or as base64 float32
  according to ``encoding_format`` (the SDK asks for base64 by default);
* ``GET /v1/models``.

Every request it receives is recorded (method, path, headers, parsed body) so
tests can assert what the gateway forwarded.
"""

from __future__ import annotations

import base64
import json
import struct
import threading
import time
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

CHAT_TEXT = "Hello from the mock upstream!"
# Content deltas of the streamed answer, in order; they join to CHAT_TEXT.
STREAM_PIECES = ["Hello", " from", " the", " mock", " upstream", "!"]
STREAM_DELAY_S = 0.08
CHAT_USAGE = {"prompt_tokens": 11, "completion_tokens": 7, "total_tokens": 18}
# Exactly representable as float32, so base64 round trips compare equal.
EMBEDDINGS = [[0.5, -0.25, 1.0, 0.125], [-1.5, 2.0, 0.0, 0.0625]]
EMBEDDING_USAGE = {"prompt_tokens": 4, "total_tokens": 4}
CREATED = 1_700_000_000

# Upstream model ids with scripted misbehaviour.
REJECTING_MODEL = "upstream-reject"  # chat answers 400 with an OpenAI error object
CUTTING_MODEL = "upstream-cut"  # a stream closes after CUT_AFTER deltas, without [DONE]
CUT_AFTER = 2
REJECT_ERROR = {
    "message": "mock: 'temperature' must be at most 2",
    "type": "invalid_request_error",
    "param": "temperature",
    "code": "invalid_value",
}

assert "".join(STREAM_PIECES) == CHAT_TEXT


@dataclass
class Recorded:
    method: str
    path: str
    headers: dict[str, str]
    body: Any


@dataclass
class MockUpstream:
    server: ThreadingHTTPServer
    thread: threading.Thread
    requests: list[Recorded] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)

    @property
    def port(self) -> int:
        return self.server.server_address[1]

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}/v1"

    def record(self, r: Recorded) -> None:
        with self.lock:
            self.requests.append(r)

    def clear(self) -> None:
        with self.lock:
            self.requests.clear()

    def received(self, path: str | None = None) -> list[Recorded]:
        with self.lock:
            return [r for r in self.requests if path is None or r.path == path]

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()
        self.thread.join(timeout=5)


def _chunk(model: str, delta: dict, finish_reason: str | None = None) -> dict:
    return {
        "id": "chatcmpl-mock-stream",
        "object": "chat.completion.chunk",
        "created": CREATED,
        "model": model,
        "choices": [{"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish_reason}],
    }


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    mock: MockUpstream  # set on the subclass

    def log_message(self, format: str, *args: Any) -> None:  # keep test output quiet
        pass

    # -- helpers -----------------------------------------------------------

    def _read_json(self) -> Any:
        length = int(self.headers.get("Content-Length") or 0)
        raw = self.rfile.read(length) if length else b""
        try:
            return json.loads(raw) if raw else None
        except ValueError:
            return {"_unparsed": raw.decode("utf-8", "replace")}

    def _send_json(self, status: int, payload: Any) -> None:
        data = json.dumps(payload).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def _record(self, body: Any) -> None:
        self.mock.record(
            Recorded(
                method=self.command,
                path=self.path,
                headers={k.lower(): v for k, v in self.headers.items()},
                body=body,
            )
        )

    # -- routes --------------------------------------------------------------

    def do_GET(self) -> None:
        self._record(None)
        if self.path == "/v1/models":
            self._send_json(
                200,
                {
                    "object": "list",
                    "data": [
                        {"id": "upstream-chat", "object": "model", "created": CREATED, "owned_by": "mock"},
                        {"id": "upstream-embed", "object": "model", "created": CREATED, "owned_by": "mock"},
                    ],
                },
            )
        else:
            self._send_json(404, {"error": {"message": f"no route {self.path}", "type": "invalid_request_error"}})

    def do_POST(self) -> None:
        body = self._read_json()
        self._record(body)
        if not isinstance(body, dict):
            self._send_json(400, {"error": {"message": "body must be a JSON object", "type": "invalid_request_error"}})
        elif self.path == "/v1/chat/completions":
            self._chat(body)
        elif self.path == "/v1/embeddings":
            self._embeddings(body)
        else:
            self._send_json(404, {"error": {"message": f"no route {self.path}", "type": "invalid_request_error"}})

    def _chat(self, body: dict) -> None:
        model = body.get("model", "")
        if model == REJECTING_MODEL:
            self._send_json(400, {"error": REJECT_ERROR})
            return
        if not body.get("stream"):
            self._send_json(
                200,
                {
                    "id": "chatcmpl-mock-1",
                    "object": "chat.completion",
                    "created": CREATED,
                    "model": model,
                    "choices": [
                        {
                            "index": 0,
                            "message": {"role": "assistant", "content": CHAT_TEXT},
                            "logprobs": None,
                            "finish_reason": "stop",
                        }
                    ],
                    "usage": CHAT_USAGE,
                },
            )
            return

        include_usage = bool((body.get("stream_options") or {}).get("include_usage"))
        events = [_chunk(model, {"role": "assistant", "content": ""})]
        pieces = STREAM_PIECES[:CUT_AFTER] if model == CUTTING_MODEL else STREAM_PIECES
        events += [_chunk(model, {"content": piece}) for piece in pieces]
        if model != CUTTING_MODEL:
            events.append(_chunk(model, {}, finish_reason="stop"))
        if include_usage and model != CUTTING_MODEL:
            events.append({**_chunk(model, {}), "choices": [], "usage": CHAT_USAGE})

        self.send_response(200)
        self.send_header("Content-Type", "text/event-stream")
        self.send_header("Cache-Control", "no-cache")
        self.send_header("Connection", "close")
        self.end_headers()
        self.close_connection = True
        try:
            for event in events:
                self.wfile.write(f"data: {json.dumps(event)}\n\n".encode())
                self.wfile.flush()
                time.sleep(STREAM_DELAY_S)
            if model == CUTTING_MODEL:
                return  # connection closes mid-answer
            self.wfile.write(b"data: [DONE]\n\n")
            self.wfile.flush()
        except (BrokenPipeError, ConnectionResetError):
            pass

    def _embeddings(self, body: dict) -> None:
        inputs = body.get("input")
        n = len(inputs) if isinstance(inputs, list) else 1
        as_base64 = body.get("encoding_format") == "base64"
        data = []
        for i in range(n):
            vector = EMBEDDINGS[i % len(EMBEDDINGS)]
            if as_base64:
                value: Any = base64.b64encode(struct.pack(f"<{len(vector)}f", *vector)).decode()
            else:
                value = vector
            data.append({"object": "embedding", "index": i, "embedding": value})
        self._send_json(
            200, {"object": "list", "data": data, "model": body.get("model", ""), "usage": EMBEDDING_USAGE}
        )


def start() -> MockUpstream:
    handler = type("Handler", (_Handler,), {})
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    server.daemon_threads = True
    thread = threading.Thread(target=server.serve_forever, name="mock-upstream", daemon=True)
    mock = MockUpstream(server=server, thread=thread)
    handler.mock = mock
    thread.start()
    return mock
