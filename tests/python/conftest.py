"""Fixtures: the mock upstream and a real gateway process wired to it.

On a failed test the gateway's log and the requests the mock received are
attached to the failure report.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import tempfile
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path

import openai
import pytest

import mock_upstream

REPO_ROOT = Path(__file__).resolve().parents[2]
STARTUP_TIMEOUT_S = 30.0

CHAT_MODEL = "chat-model"
EMBED_MODEL = "embed-model"
UPSTREAM_CHAT = "upstream-chat"
UPSTREAM_EMBED = "upstream-embed"
# Chat targets whose upstream misbehaves on purpose (see mock_upstream); each
# is its own deployment, so its failures never touch CHAT_MODEL's health.
REJECT_MODEL = "reject-model"
CUT_MODEL = "cut-model"


def gateway_binary() -> Path:
    explicit = os.environ.get("DELTALLM_GATEWAY_BIN")
    if explicit:
        return Path(explicit)
    target = os.environ.get("CARGO_TARGET_DIR")
    base = Path(target) if target else REPO_ROOT / "target"
    if not base.is_absolute():
        base = REPO_ROOT / base
    return base / "debug" / "deltallm-gateway"


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@dataclass
class Gateway:
    process: subprocess.Popen
    port: int
    master_key: str
    data_dir: Path
    log_path: Path

    @property
    def root(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def base_url(self) -> str:
        return f"{self.root}/v1"

    def log(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")
        except OSError as e:
            return f"<gateway log unreadable: {e}>"

    def admin(self, method: str, path: str, body: dict | None = None) -> tuple[int, dict]:
        data = json.dumps(body).encode() if body is not None else None
        req = urllib.request.Request(
            f"{self.root}{path}",
            data=data,
            method=method,
            headers={"Authorization": f"Bearer {self.master_key}", "Content-Type": "application/json"},
        )
        try:
            with urllib.request.urlopen(req, timeout=10) as resp:
                return resp.status, json.loads(resp.read() or b"null")
        except urllib.error.HTTPError as e:
            return e.code, json.loads(e.read() or b"null")


GATEWAY_KEY = pytest.StashKey[Gateway]()
UPSTREAM_KEY = pytest.StashKey[mock_upstream.MockUpstream]()
UPSTREAM_REQUESTS_LIMIT = 40


def _wait_healthy(gw: Gateway) -> None:
    deadline = time.monotonic() + STARTUP_TIMEOUT_S
    last_error: Exception | None = None
    while time.monotonic() < deadline:
        if gw.process.poll() is not None:
            raise RuntimeError(f"gateway exited with {gw.process.returncode} during startup:\n{gw.log()}")
        try:
            with urllib.request.urlopen(f"{gw.root}/health", timeout=2) as resp:
                if resp.status == 200:
                    return
        except (urllib.error.URLError, ConnectionError, TimeoutError) as e:
            last_error = e
        time.sleep(0.1)
    raise RuntimeError(f"gateway not healthy after {STARTUP_TIMEOUT_S}s ({last_error}):\n{gw.log()}")


def _stop(process: subprocess.Popen) -> None:
    if process.poll() is None:
        process.terminate()
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout=10)


@pytest.fixture(scope="session")
def upstream(request):
    mock = mock_upstream.start()
    request.config.stash[UPSTREAM_KEY] = mock
    yield mock
    mock.stop()


@pytest.fixture(scope="session")
def gateway(upstream, request):
    binary = gateway_binary()
    if not binary.is_file():
        pytest.fail(f"gateway binary not found at {binary}; build it with `cargo build -p deltallm-gateway` "
                    "or set DELTALLM_GATEWAY_BIN")
    tmp = Path(tempfile.mkdtemp(prefix="deltallm-py-"))
    data_dir = tmp / "data"
    log_path = tmp / "gateway.log"
    port = free_port()
    # Only our own settings: nothing from the caller's DELTALLM_* leaks in, so the
    # gateway generates its master key into the data dir as on a first start.
    env = {k: v for k, v in os.environ.items() if not k.startswith("DELTALLM_")}
    env.update(
        DELTALLM_HOST="127.0.0.1",
        DELTALLM_PORT=str(port),
        DELTALLM_DATA_DIR=str(data_dir),
        RUST_LOG=os.environ.get("RUST_LOG", "info,deltallm=debug"),
        NO_COLOR="1",
    )
    log_file = open(log_path, "wb")
    process = subprocess.Popen(
        [str(binary)], cwd=tmp, env=env, stdout=log_file, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL
    )
    gw = Gateway(process=process, port=port, master_key="", data_dir=data_dir, log_path=log_path)
    request.config.stash[GATEWAY_KEY] = gw
    try:
        _wait_healthy(gw)
        gw.master_key = (data_dir / "master_key").read_text().strip()
        assert gw.master_key, "generated master key file is empty"
        for name, upstream_model, mode in [
            (CHAT_MODEL, UPSTREAM_CHAT, "chat"),
            (EMBED_MODEL, UPSTREAM_EMBED, "embedding"),
            (REJECT_MODEL, mock_upstream.REJECTING_MODEL, "chat"),
            (CUT_MODEL, mock_upstream.CUTTING_MODEL, "chat"),
        ]:
            status, body = gw.admin(
                "POST",
                "/ui/api/models",
                {
                    "model_name": name,
                    "deltallm_params": {"provider": "vllm", "model": upstream_model, "api_base": upstream.base_url},
                    "model_info": {"mode": mode},
                },
            )
            assert status in (200, 201), f"registering {name}: {status} {body}"
        yield gw
    finally:
        _stop(process)
        log_file.close()
        if request.session.testsfailed:
            # The log is attached to each failure report; keep the files too.
            capman = request.config.pluginmanager.getplugin("capturemanager")
            with capman.global_and_fixture_disabled():
                print(f"\ngateway data dir and log kept in {tmp}")
        else:
            shutil.rmtree(tmp, ignore_errors=True)




@pytest.fixture
def client(gateway, upstream):
    """An SDK client on the gateway with the master key; the mock's record is cleared."""
    upstream.clear()
    with openai.OpenAI(base_url=gateway.base_url, api_key=gateway.master_key, timeout=20, max_retries=0) as c:
        yield c


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(item, call):
    report = yield
    if report.when == "call" and report.failed:
        gw = item.config.stash.get(GATEWAY_KEY, None)
        if gw is not None:
            report.sections.append(("gateway log", gw.log()))
        mock = item.config.stash.get(UPSTREAM_KEY, None)
        if mock is not None:
            lines = [
                f"{r.method} {r.path} {json.dumps(r.body)}" for r in mock.received()[-UPSTREAM_REQUESTS_LIMIT:]
            ]
            report.sections.append(("requests the mock upstream received", "\n".join(lines) or "<none>"))
    return report
