"""The gateway driven by the official `openai` Python SDK, end to end:
SDK -> gateway binary (real process, embedded SQLite) -> mock upstream.
"""

from __future__ import annotations

import asyncio
import json
import time
import urllib.request

import openai
import pytest

import mock_upstream
from conftest import CHAT_MODEL, CUT_MODEL, EMBED_MODEL, REJECT_MODEL, UPSTREAM_CHAT, UPSTREAM_EMBED

MESSAGES = [
    {"role": "system", "content": "You are terse."},
    {"role": "user", "content": "Say hello."},
]


def only_request(upstream, path):
    got = upstream.received(path)
    assert len(got) == 1, f"expected one upstream request to {path}, got {len(got)}: {got}"
    return got[0]


def test_models_list(client, upstream):
    ids = [m.id for m in client.models.list()]
    assert set(ids) == {CHAT_MODEL, EMBED_MODEL, REJECT_MODEL, CUT_MODEL}
    assert ids == sorted(ids)
    # The list comes from the gateway's registry, not from the upstream.
    assert upstream.received() == []


def test_models_retrieve(client):
    model = client.models.retrieve(CHAT_MODEL)
    assert (model.id, model.object, model.owned_by) == (CHAT_MODEL, "model", "deltallm")
    with pytest.raises(openai.NotFoundError):
        client.models.retrieve("no-such-model")


def test_chat_completion(client, upstream, gateway):
    raw = client.chat.completions.with_raw_response.create(
        model=CHAT_MODEL,
        messages=MESSAGES,
        temperature=0.2,
        metadata={"trace_id": "abc-123"},
    )
    assert raw.status_code == 200
    assert raw.headers.get("x-deltallm-route-group") == CHAT_MODEL
    assert raw.headers.get("x-deltallm-request-id")
    completion = raw.parse()

    assert isinstance(completion, openai.types.chat.ChatCompletion)
    assert completion.id == "chatcmpl-mock-1"
    assert completion.choices[0].message.role == "assistant"
    assert completion.choices[0].message.content == mock_upstream.CHAT_TEXT
    assert completion.choices[0].finish_reason == "stop"
    assert completion.usage is not None
    assert completion.usage.prompt_tokens == mock_upstream.CHAT_USAGE["prompt_tokens"]
    assert completion.usage.completion_tokens == mock_upstream.CHAT_USAGE["completion_tokens"]
    assert completion.usage.total_tokens == mock_upstream.CHAT_USAGE["total_tokens"]

    sent = only_request(upstream, "/v1/chat/completions")
    assert sent.body["model"] == UPSTREAM_CHAT
    assert sent.body["messages"] == MESSAGES
    assert sent.body["temperature"] == 0.2
    assert "metadata" not in sent.body
    assert "stream" not in sent.body or sent.body["stream"] is False
    # The caller's master key never reaches the upstream.
    assert gateway.master_key not in json.dumps(sent.headers)


def test_chat_streaming(client, upstream):
    started = time.monotonic()
    stream = client.chat.completions.create(
        model=CHAT_MODEL,
        messages=MESSAGES,
        stream=True,
        stream_options={"include_usage": True},
    )
    deltas: list[str] = []
    arrivals: list[float] = []
    finish_reasons: list[str] = []
    roles: list[str] = []
    usage = None
    chunks = 0
    with stream:
        for chunk in stream:
            chunks += 1
            assert isinstance(chunk, openai.types.chat.ChatCompletionChunk)
            assert chunk.id == "chatcmpl-mock-stream"
            if chunk.usage is not None:
                usage = chunk.usage
            for choice in chunk.choices:
                if choice.delta.role:
                    roles.append(choice.delta.role)
                if choice.delta.content:
                    deltas.append(choice.delta.content)
                    arrivals.append(time.monotonic() - started)
                if choice.finish_reason:
                    finish_reasons.append(choice.finish_reason)

    assert deltas == mock_upstream.STREAM_PIECES
    assert "".join(deltas) == mock_upstream.CHAT_TEXT
    assert roles == ["assistant"]
    assert finish_reasons == ["stop"]
    # role chunk + content chunks + finish chunk + usage chunk
    assert chunks == len(mock_upstream.STREAM_PIECES) + 3
    assert usage is not None
    assert usage.total_tokens == mock_upstream.CHAT_USAGE["total_tokens"]
    # Deltas are forwarded as they arrive, not buffered until the end.
    spread = arrivals[-1] - arrivals[0]
    expected = mock_upstream.STREAM_DELAY_S * (len(mock_upstream.STREAM_PIECES) - 1)
    assert spread >= expected * 0.5, f"deltas arrived within {spread:.3f}s; expected about {expected:.3f}s"

    sent = only_request(upstream, "/v1/chat/completions")
    assert sent.body["model"] == UPSTREAM_CHAT
    assert sent.body["stream"] is True
    assert sent.body["stream_options"] == {"include_usage": True}


def test_streams_without_usage_option_see_no_usage_chunk(client, upstream):
    """The gateway asks the upstream for usage (to price the stream) but a
    client that did not ask gets the plain chunk sequence."""
    upstream.clear()
    stream = client.chat.completions.create(model=CHAT_MODEL, messages=MESSAGES, stream=True)
    with stream:
        chunks = list(stream)
    assert all(c.usage is None for c in chunks)
    assert all(c.choices for c in chunks), "no choices-less usage chunk reaches the client"
    assert "".join(c.choices[0].delta.content or "" for c in chunks) == mock_upstream.CHAT_TEXT
    sent = only_request(upstream, "/v1/chat/completions")
    assert sent.body["stream_options"] == {"include_usage": True}


def test_legacy_completions(client, upstream):
    upstream.clear()
    completion = client.completions.create(model=CHAT_MODEL, prompt="Say hello.", max_tokens=16)
    assert isinstance(completion, openai.types.Completion)
    assert completion.object == "text_completion"
    assert completion.choices[0].text == mock_upstream.CHAT_TEXT
    assert completion.usage.total_tokens == mock_upstream.CHAT_USAGE["total_tokens"]
    sent = only_request(upstream, "/v1/chat/completions")
    assert sent.body["messages"] == [{"role": "user", "content": "Say hello."}]

    upstream.clear()
    stream = client.completions.create(model=CHAT_MODEL, prompt="Say hello.", stream=True)
    with stream:
        text = "".join(c.choices[0].text for c in stream if c.choices)
    assert text == mock_upstream.CHAT_TEXT

    with pytest.raises(openai.BadRequestError) as err:
        client.completions.create(model=CHAT_MODEL, prompt="x", echo=True)
    assert err.value.body["param"] == "echo"


def test_chat_stream_ends_with_done_on_the_wire(gateway, upstream):
    """The SDK stops quietly at [DONE]; check the raw SSE framing as well."""
    upstream.clear()
    req = urllib.request.Request(
        f"{gateway.base_url}/chat/completions",
        data=json.dumps({"model": CHAT_MODEL, "messages": MESSAGES, "stream": True}).encode(),
        headers={"Authorization": f"Bearer {gateway.master_key}", "Content-Type": "application/json"},
    )
    with urllib.request.urlopen(req, timeout=20) as resp:
        assert resp.status == 200
        assert resp.headers.get("Content-Type", "").startswith("text/event-stream")
        text = resp.read().decode()
    events = [e for e in text.split("\n\n") if e.strip()]
    assert all(e.startswith("data: ") for e in events), events
    assert events[-1] == "data: [DONE]"
    assert text.endswith("data: [DONE]\n\n")
    assert text.count("[DONE]") == 1
    payloads = [json.loads(e[len("data: ") :]) for e in events[:-1]]
    assert not any("error" in p for p in payloads)
    text_out = "".join(c["choices"][0]["delta"].get("content") or "" for c in payloads if c["choices"])
    assert text_out == mock_upstream.CHAT_TEXT


def test_async_client_streaming(gateway, upstream):
    upstream.clear()

    async def run() -> str:
        async with openai.AsyncOpenAI(
            base_url=gateway.base_url, api_key=gateway.master_key, timeout=20, max_retries=0
        ) as c:
            stream = await c.chat.completions.create(model=CHAT_MODEL, messages=MESSAGES, stream=True)
            parts = []
            async for chunk in stream:
                for choice in chunk.choices:
                    if choice.delta.content:
                        parts.append(choice.delta.content)
            return "".join(parts)

    assert asyncio.run(run()) == mock_upstream.CHAT_TEXT


def test_embeddings_default_encoding(client, upstream):
    # The SDK asks for base64 unless told otherwise and decodes it itself.
    result = client.embeddings.create(model=EMBED_MODEL, input=["first", "second"])
    assert [d.index for d in result.data] == [0, 1]
    assert [d.embedding for d in result.data] == mock_upstream.EMBEDDINGS
    assert result.usage.prompt_tokens == mock_upstream.EMBEDDING_USAGE["prompt_tokens"]
    assert result.usage.total_tokens == mock_upstream.EMBEDDING_USAGE["total_tokens"]

    sent = only_request(upstream, "/v1/embeddings")
    assert sent.body["model"] == UPSTREAM_EMBED
    assert sent.body["input"] == ["first", "second"]
    assert sent.body.get("encoding_format") == "base64"


def test_embeddings_float_encoding(client, upstream):
    result = client.embeddings.create(model=EMBED_MODEL, input="only one", encoding_format="float")
    assert len(result.data) == 1
    assert result.data[0].embedding == mock_upstream.EMBEDDINGS[0]

    sent = only_request(upstream, "/v1/embeddings")
    assert sent.body["model"] == UPSTREAM_EMBED
    assert sent.body["input"] == "only one"
    assert sent.body["encoding_format"] == "float"


def test_unknown_model_is_not_found(client, upstream):
    with pytest.raises(openai.NotFoundError) as caught:
        client.chat.completions.create(model="no-such-model", messages=MESSAGES)
    err = caught.value
    assert err.status_code == 404
    assert err.code == "model_not_found"
    assert err.type == "model_not_found"
    assert "Model 'no-such-model' is not configured" in err.message

    with pytest.raises(openai.NotFoundError):
        client.embeddings.create(model="no-such-model", input="x")
    with pytest.raises(openai.NotFoundError):
        # Streaming requests fail before the stream starts, with the same error.
        client.chat.completions.create(model="no-such-model", messages=MESSAGES, stream=True)
    assert upstream.received() == []


def test_wrong_model_type_is_bad_request(client, upstream):
    with pytest.raises(openai.BadRequestError) as caught:
        client.chat.completions.create(model=EMBED_MODEL, messages=MESSAGES)
    err = caught.value
    assert err.status_code == 400
    assert err.param == "model"
    assert err.type == "invalid_request_error"
    assert "/v1/chat/completions" in err.message

    with pytest.raises(openai.BadRequestError):
        client.embeddings.create(model=CHAT_MODEL, input="x")
    assert upstream.received() == []


def test_invalid_metadata_is_bad_request(client, upstream):
    with pytest.raises(openai.BadRequestError) as caught:
        client.chat.completions.create(model=CHAT_MODEL, messages=MESSAGES, extra_body={"metadata": "not-an-object"})
    assert caught.value.param == "metadata"
    assert upstream.received() == []


def test_upstream_client_error_is_bad_request(client, upstream):
    with pytest.raises(openai.BadRequestError) as caught:
        client.chat.completions.create(model=REJECT_MODEL, messages=MESSAGES, temperature=5)
    err = caught.value
    assert err.status_code == 400
    assert err.type == "invalid_request_error"
    assert isinstance(err.body, dict)
    assert err.body["message"] == mock_upstream.REJECT_ERROR["message"]
    # An upstream 4xx is answered at once: no retry, no failover.
    assert len(upstream.received("/v1/chat/completions")) == 1


def test_stream_cut_upstream_raises_in_sdk(client, upstream):
    """A stream the upstream cuts must not look complete to the SDK."""
    stream = client.chat.completions.create(model=CUT_MODEL, messages=MESSAGES, stream=True)
    deltas: list[str] = []
    with stream, pytest.raises(openai.APIError) as caught:
        for chunk in stream:
            for choice in chunk.choices:
                if choice.delta.content:
                    deltas.append(choice.delta.content)
    assert deltas == mock_upstream.STREAM_PIECES[: mock_upstream.CUT_AFTER]
    assert "interrupted" in caught.value.message
    assert isinstance(caught.value.body, dict) and caught.value.body.get("code") == "stream_interrupted"


def test_wrong_master_key_is_authentication_error(gateway, upstream):
    upstream.clear()
    with openai.OpenAI(base_url=gateway.base_url, api_key="sk-wrong-key-0000000000", max_retries=0) as bad:
        with pytest.raises(openai.AuthenticationError) as caught:
            bad.models.list()
        assert caught.value.status_code == 401
        with pytest.raises(openai.AuthenticationError):
            bad.chat.completions.create(model=CHAT_MODEL, messages=MESSAGES)
        with pytest.raises(openai.AuthenticationError):
            bad.chat.completions.create(model=CHAT_MODEL, messages=MESSAGES, stream=True)
        with pytest.raises(openai.AuthenticationError):
            bad.embeddings.create(model=EMBED_MODEL, input="x")
    assert upstream.received() == []
