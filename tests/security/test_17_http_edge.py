"""The HTTP edge (issue 9: unsafe 7 and 8, addresses, disk full, scratch after a crash, 405).

The documentation needs a key unless opened by a setting, and its pages load nothing from a
CDN; every malformed multipart body is a 400 that says how to upload; a full disk is a 507; a
start removes the temp files of dead processes but not a live one's; a 405 says which
methods the path takes; and `X-Forwarded-For` moves neither the audit log's address nor the
failure throttle unless it comes from a configured proxy.
"""

from __future__ import annotations

import errno
import os
import random
import re
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import anyio
import httpx
import pytest
from fastapi import FastAPI

import modelworks.store
from modelworks.api.app import create_app
from modelworks.api.services import Services
from modelworks.db import upgrade
from modelworks.settings import Settings
from tests.asgi import SyncASGITransport
from tests.conftest import free_port
from tests.models import linear_onnx

MODEL = "edge"
VERSIONS = f"/api/v1/models/{MODEL}/versions"
BOUNDARY = "mw-edge-7d1e"
HOW = "curl -F file=@model.onnx"


# helpers --------------------------------------------------------------------------------------
def part(name: bytes, content: bytes, filename: bytes | None = None) -> bytes:
    disposition = b'form-data; name="' + name + b'"'
    if filename is not None:
        disposition += b'; filename="' + filename + b'"'
    return b"Content-Disposition: " + disposition + b"\r\n\r\n" + content


def body(parts: list[bytes], boundary: str = BOUNDARY, close: bool = True) -> bytes:
    b = boundary.encode()
    out = b"".join(b"--" + b + b"\r\n" + p + b"\r\n" for p in parts)
    return out + (b"--" + b + b"--\r\n" if close else b"")


def post(http: httpx.Client, content: bytes, ctype: str | None = None) -> httpx.Response:
    ctype = ctype or f"multipart/form-data; boundary={BOUNDARY}"
    return http.post(VERSIONS, content=content, headers={"Content-Type": ctype})


def temp_entries(services: Services) -> list[Path]:
    return sorted(services.store.scratch.rglob("*"))


def assert_nothing_stored(http: httpx.Client, services: Services) -> None:
    assert http.get(VERSIONS).json() == []
    assert temp_entries(services) == []
    assert http.get("/livez").status_code == 200


@pytest.fixture
def onnx(tmp_path: Path) -> bytes:
    return linear_onnx(tmp_path / "m.onnx").read_bytes()


@pytest.fixture
def model(http: httpx.Client) -> None:
    assert http.post("/api/v1/models", json={"name": MODEL}).status_code == 201


# 1. the documentation ---------------------------------------------------------------------------
DOC_PATHS = ["/docs", "/redoc", "/openapi.json", "/docs/static/swagger-ui-bundle.js"]


def docs_client(tmp_path: Path, public: bool) -> Iterator[tuple[httpx.Client, str]]:
    s = Settings(home=tmp_path / "home", allowed_hosts="testserver", docs_public=public)
    s.home.mkdir()
    upgrade(s.resolved_database_url)
    svc = Services.build(s)
    key = svc.keys.bootstrap_admin()
    assert key is not None
    t = SyncASGITransport(create_app(s, svc))
    try:
        with httpx.Client(transport=t, base_url="http://testserver") as c:
            yield c, key
    finally:
        t.close()
        svc.close()


@pytest.fixture
def keyed_docs(tmp_path: Path) -> Iterator[tuple[httpx.Client, str]]:
    yield from docs_client(tmp_path, public=False)


@pytest.fixture
def public_docs(tmp_path: Path) -> Iterator[tuple[httpx.Client, str]]:
    yield from docs_client(tmp_path, public=True)


@pytest.mark.parametrize("path", DOC_PATHS)
@pytest.mark.parametrize("credential", [None, "Bearer mw_" + "B" * 43, "Basic YTpi"])
def test_docs_need_a_key(
    keyed_docs: tuple[httpx.Client, str], path: str, credential: str | None
) -> None:
    c, _key = keyed_docs
    headers = {"Authorization": credential} if credential else {}

    r = c.get(path, headers=headers)

    assert r.status_code == 401, r.text[:200]
    assert r.headers["www-authenticate"] == "Bearer"
    message = r.json()["error"]["message"]
    # what a user opening /docs in a browser can do about it
    assert "MODELWORKS_DOCS_PUBLIC=true" in message and "/openapi.json" in message
    assert "swagger" not in r.text.lower() and "paths" not in r.text


def test_docs_answer_a_read_key(keyed_docs: tuple[httpx.Client, str]) -> None:
    c, key = keyed_docs
    made = c.post(
        "/api/v1/keys", json={"role": "viewer", "name": "reader"}, headers=bearer(key)
    ).json()
    reader = bearer(made["key"])

    document = c.get("/openapi.json", headers=reader)

    assert document.status_code == 200
    assert "/api/v1/models" in document.json()["paths"]
    for path in DOC_PATHS:
        assert c.get(path, headers=reader).status_code == 200, path


def test_public_docs_answer_without_a_key(public_docs: tuple[httpx.Client, str]) -> None:
    c, _key = public_docs
    for path in DOC_PATHS:
        assert c.get(path).status_code == 200, path
    assert c.get("/api/v1/models").status_code == 401  # only the docs are opened


ASSET = re.compile(r"""(?:src|href|url)\s*[=:(]\s*['"]?([^'" >)]+)""")


@pytest.mark.parametrize("page", ["/docs", "/redoc"])
def test_docs_pages_load_nothing_from_outside(
    public_docs: tuple[httpx.Client, str], page: str
) -> None:
    c, _key = public_docs
    r = c.get(page)
    assert r.status_code == 200

    html = r.text
    assert "http://" not in html and "https://" not in html and "//cdn" not in html
    refs = [u for u in ASSET.findall(html) if not u.startswith(("#", "data:"))]
    assert refs, html
    for ref in refs:  # each asset comes from this server, with a real body
        asset = c.get(ref)
        assert asset.status_code == 200, ref
        assert len(asset.content) > 1000, ref
    # and the browser is told to load nothing from anywhere else
    policy = r.headers["content-security-policy"]
    assert "default-src 'none'" in policy and "http" not in policy and "*" not in policy
    assert "validatorUrl" not in html or '"validatorUrl": null' in html
    # only the packaged files are served, nothing else of the package or the server
    for name in ("../../settings.py", "core.py", "swagger-ui-bundle.js.map", "%2e%2e%2fLICENSE"):
        r = c.get(f"/docs/static/{name}")
        assert r.status_code == 404, (name, r.text)


def bearer(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


# 2. malformed multipart -------------------------------------------------------------------------
def malformed_bodies(onnx: bytes) -> dict[str, tuple[str, bytes]]:
    """(Content-Type, body) of multipart bodies that break the grammar in one way each."""
    ok = f"multipart/form-data; boundary={BOUNDARY}"
    file = part(b"file", onnx, b"m.onnx")

    def with_boundary(boundary: str) -> tuple[str, bytes]:
        return f"multipart/form-data; boundary={boundary}", body([file], boundary)

    return {
        "boundary-10000": with_boundary("b" * 10_000),
        "boundary-71": with_boundary("b" * 71),
        "boundary-300": with_boundary("-" * 300),
        "boundary-empty": ("multipart/form-data; boundary=", body([file])),
        "boundary-empty-quoted": ('multipart/form-data; boundary=""', body([file])),
        "boundary-missing": ("multipart/form-data", body([file])),
        "boundary-missing-charset": ("multipart/form-data; charset=utf-8", body([file])),
        "boundary-bad-char": ('multipart/form-data; boundary="a<b>c"', body([file], "a<b>c")),
        "boundary-trailing-space": ('multipart/form-data; boundary="abc "', body([file], "abc ")),
        "boundary-semicolon": ('multipart/form-data; boundary="a;b"', body([file], "a;b")),
        "other-boundary-in-body": (ok, body([file], "someone-else")),
        "no-closing-delimiter": (ok, body([file], close=False)),
        "cut-in-closing-delimiter": (ok, body([file])[:-6]),
        "cut-in-part-headers": (ok, f"--{BOUNDARY}\r\nContent-Disp".encode()),
        "only-opening-boundary": (ok, f"--{BOUNDARY}\r\n".encode()),
        "empty-body": (ok, b""),
        "garbage": (ok, b"hello, this is not multipart at all"),
        "lf-line-endings": (ok, body([file]).replace(b"\r\n", b"\n")),
        "header-too-long": (ok, body([b"X-Pad: " + b"p" * 9000 + b"\r\n" + file])),
        "header-name-too-long": (ok, body([b"X" * 9000 + b": 1\r\n" + file])),
        "too-many-headers": (ok, body([b"".join(b"X-H%d: 1\r\n" % i for i in range(20)) + file])),
        "header-without-colon": (ok, body([b"Garbage line\r\n" + file])),
        "too-many-parts": (ok, body([part(b"d%d" % i, b"x") for i in range(17)] + [file])),
        "thousand-parts": (ok, body([part(b"d", b"x")] * 1000 + [file])),
        "no-disposition": (ok, body([b"Content-Type: text/plain\r\n\r\nx", file])),
        "disposition-attachment": (
            ok,
            body([b'Content-Disposition: attachment; name="file"\r\n\r\n' + onnx]),
        ),
        "disposition-without-name": (ok, body([b"Content-Disposition: form-data\r\n\r\nx", file])),
        "disposition-empty-name": (ok, body([part(b"", b"x"), file])),
        "disposition-twice": (
            ok,
            body([b'Content-Disposition: form-data; name="a"\r\n' + file]),
        ),
        "name-not-utf8": (ok, body([part(b"\xff\xfe", b"x"), file])),
        "name-with-nul": (ok, body([part(b"a\x00b", b"x"), file])),
        "filename-not-utf8": (ok, body([part(b"file", onnx, b"m\xff.onnx")])),
        "filename-with-control": (ok, body([part(b"file", onnx, b"m\x01.onnx")])),
        "field-not-utf8": (ok, body([part(b"description", b"\xc3\x28"), file])),
        "field-with-nul": (ok, body([part(b"description", b"a\x00b"), file])),
    }


def test_malformed_multipart_is_400_with_a_fix(
    http: httpx.Client, services: Services, model: None, onnx: bytes, tmp_path: Path
) -> None:
    wrong = []
    for case, (ctype, content) in malformed_bodies(onnx).items():
        r = post(http, content, ctype)
        text = r.text
        if r.status_code != 400 or HOW not in text or str(tmp_path) in text:
            wrong.append((case, r.status_code, text[:160]))
    assert wrong == []
    assert_nothing_stored(http, services)


BCHARS = "0123456789abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ'()+_,-./:=?"


def test_mutated_multipart_never_fails_the_server(
    http: httpx.Client, services: Services, model: None, onnx: bytes
) -> None:
    """Seeded random damage to a good body: boundaries of random length, and cuts, flipped,
    dropped and doubled bytes in its framing. Each answer is a 4xx or a stored version,
    never a 5xx or a stray temp file; a boundary past RFC 2046's 70 characters is a 400."""
    rng = random.Random(9)
    statuses = set()
    for _ in range(60):
        boundary = "".join(rng.choice(BCHARS) for _ in range(rng.choice([1, 40, 70, 71, 300])))
        good = body([part(b"description", b"press 4"), part(b"file", onnx, b"m.onnx")], boundary)
        damaged = bytearray(good)
        i = rng.choice([i for i in range(len(good)) if i < 160 or i > len(good) - 60])
        kind = rng.randrange(5)
        if kind == 1:
            damaged = damaged[:i]
        elif kind == 2:
            damaged[i] = rng.randrange(256)
        elif kind == 3:
            del damaged[i]
        elif kind == 4:
            damaged[i:i] = damaged[i : i + rng.randrange(1, 40)]
        r = post(http, bytes(damaged), f'multipart/form-data; boundary="{boundary}"')
        statuses.add(r.status_code)
        assert r.status_code in (201, 400, 413, 415, 422), (kind, i, len(boundary), r.text)
        if len(boundary) > 70:
            assert r.status_code == 400 and "70" in r.text, r.text
        assert temp_entries(services) == []
    assert {201, 400} <= statuses
    # names and fields in UTF-8 beyond ASCII are welcome
    r = post(
        http,
        body(
            [
                part(b"description", "Presse 4 — ok".encode()),
                part(b"file", onnx, "modèle.onnx".encode()),
            ]
        ),
    )
    assert r.status_code == 201, r.text
    assert r.json()["description"] == "Presse 4 — ok"


# 3. a full disk ---------------------------------------------------------------------------------
class FullDisk:
    """A file whose writes fail with ENOSPC once `room` bytes were written."""

    def __init__(self, inner: Any, room: int) -> None:
        self.inner = inner
        self.room = room

    def write(self, data: Any) -> int:
        self.room -= len(data)
        if self.room < 0:
            raise OSError(errno.ENOSPC, "No space left on device")
        n: int = self.inner.write(data)
        return n

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)


@pytest.mark.parametrize("room", [0, 4096])
def test_disk_full_during_an_upload_is_507(
    http: httpx.Client,
    services: Services,
    model: None,
    onnx: bytes,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    room: int,
) -> None:
    real_open = open

    def full_open(path: Any, mode: str = "r", *args: Any, **kw: Any) -> Any:
        fh = real_open(path, mode, *args, **kw)
        return FullDisk(fh, room) if "b" in mode and ("x" in mode or "w" in mode) else fh

    monkeypatch.setattr(modelworks.store, "open", full_open, raising=False)
    r = post(http, body([part(b"file", onnx * 40, b"m.onnx")]))  # past `room` either way

    assert r.status_code == 507, r.text
    error = r.json()["error"]
    assert error["code"] == "insufficient_storage"
    assert "disk is full" in error["message"] and "MODELWORKS_HOME" in error["message"]
    assert "malformed" not in error["message"] and str(tmp_path) not in r.text
    assert temp_entries(services) == []  # the partial file is gone, its space given back

    monkeypatch.undo()  # space again: the same upload goes through
    assert post(http, body([part(b"file", onnx, b"m.onnx")])).status_code == 201


def test_disk_full_at_fsync_is_507(
    http: httpx.Client,
    services: Services,
    model: None,
    onnx: bytes,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    def no_room(fd: int) -> None:
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(os, "fsync", no_room)
    r = post(http, body([part(b"file", onnx, b"m.onnx")]))
    monkeypatch.undo()

    assert r.status_code == 507, r.text
    assert "disk is full" in r.json()["error"]["message"]
    assert_nothing_stored(http, services)


# 4. temp files of a crashed process -------------------------------------------------------------
WRITER = """
import os, signal, sys
from modelworks.store import ArtifactStore
store = ArtifactStore(sys.argv[1])
uploads = [store.begin_upload(1 << 20) for _ in range(2)]
for up in uploads:
    up.write(b"half a model")
    up.sync()
print(*(up.path for up in uploads), flush=True)
if sys.argv[2] == "crash":
    os.kill(os.getpid(), signal.SIGKILL)
sys.stdin.read()  # a live upload: wait until the test lets go
"""


def writer(root: Path, how: str) -> tuple[subprocess.Popen[str], list[Path]]:
    proc = subprocess.Popen(
        [sys.executable, "-c", WRITER, str(root), how],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    assert proc.stdout is not None
    line = proc.stdout.readline().split()
    proc.stdout.close()
    assert len(line) == 2, "the writer did not start"
    return proc, [Path(p) for p in line]


def start_and_stop(app: FastAPI) -> None:
    async def lifespan() -> None:
        async with app.router.lifespan_context(app):
            pass

    anyio.run(lifespan)


@pytest.mark.socket
def test_a_start_removes_what_a_crashed_process_left(
    settings: Settings, services: Services
) -> None:
    crashed, left = writer(services.store.root, "crash")
    assert crashed.wait(20) == -signal.SIGKILL
    assert crashed.stdin is not None
    crashed.stdin.close()
    live, in_flight = writer(services.store.root, "live")
    try:
        assert all(p.exists() for p in left + in_flight)

        start_and_stop(create_app(settings, services))  # a new server starts

        assert not any(p.exists() for p in left)  # fresh, but their process is gone
        assert all(p.exists() for p in in_flight)  # another live process's upload stays
    finally:
        assert live.stdin is not None
        live.stdin.close()
        live.wait(20)
    assert services.store.clean_scratch() == 2  # now that one is gone too
    assert temp_entries(services) == []


# 5. 405 says what the path takes ----------------------------------------------------------------
METHODS = ("GET", "POST", "PUT", "PATCH", "DELETE")
WRONG_METHOD = [
    ("PUT", "/api/v1/models"),
    ("POST", f"/api/v1/models/{MODEL}"),
    ("GET", f"/v2/models/{MODEL}/infer"),
    ("PUT", f"/v2/models/{MODEL}/versions/1/infer"),
    ("GET", "/v1/embeddings"),
    ("POST", "/livez"),
    ("DELETE", "/v2/health/ready"),
    ("POST", "/metrics"),
    ("POST", "/docs"),
    ("PATCH", f"/models/{MODEL}"),
    ("DELETE", "/api/v1/keys"),
]


@pytest.mark.parametrize(("method", "path"), WRONG_METHOD)
def test_405_lists_the_allowed_methods(
    http: httpx.Client, model: None, method: str, path: str
) -> None:
    r = http.request(method, path)

    assert r.status_code == 405, r.text
    allow = {m.strip() for m in r.headers.get("allow", "").split(",") if m.strip()}
    assert allow, r.headers
    assert method not in allow
    for other in METHODS:  # exactly the methods that are not a 405 themselves
        answered = http.request(other, path, json={}).status_code
        assert (answered != 405) == (other in allow), (other, answered, allow)
    assert method in r.text


def test_405_envelope_has_its_own_code(http: httpx.Client) -> None:
    r = http.put("/api/v1/models")
    assert r.json()["error"]["code"] == "method_not_allowed"


# 6. addresses: forwarded headers only from configured proxies ----------------------------------
def test_uvicorn_believes_forwarded_headers_only_from_configured_proxies(
    settings: Settings, app: FastAPI
) -> None:
    from modelworks.cli import server_config

    config = server_config(app, settings)
    assert config.proxy_headers is False
    assert config.forwarded_allow_ips == []

    proxied = settings.model_copy(update={"trusted_proxies": "10.0.0.7, 10.0.0.8"})
    config = server_config(app, proxied)
    assert config.proxy_headers is True
    assert config.forwarded_allow_ips == ["10.0.0.7", "10.0.0.8"]


class Served:
    """`modelworks serve` in a child process, as an operator starts it."""

    def __init__(self, home: Path, env: dict[str, str]) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        clean = {k: v for k, v in os.environ.items() if not k.startswith("MODELWORKS_")}
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "modelworks", "serve", "--port", str(self.port)],
            env={**clean, "MODELWORKS_HOME": str(home), **env},
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
            text=True,
        )
        assert self.proc.stdout is not None
        self.key = self.proc.stdout.readline().strip()  # printed once requests are accepted
        assert self.key.startswith("mw_"), "the server did not start"

    def stop(self) -> None:
        self.proc.send_signal(signal.SIGINT)
        try:
            self.proc.communicate(timeout=20)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.communicate()


@pytest.fixture
def served(tmp_path: Path) -> Iterator[Served]:
    s = Served(tmp_path / "served", {"MODELWORKS_AUTH_FAILURES_PER_MINUTE": "3"})
    yield s
    s.stop()


@pytest.mark.socket
def test_forwarded_for_from_a_local_process_is_not_believed(served: Served) -> None:
    with httpx.Client(base_url=served.url, timeout=10) as c:
        statuses = []
        for i in range(5):  # a guesser that claims a new address on every try
            r = c.get(
                "/api/v1/models",
                headers={
                    "Authorization": f"Bearer mw_{i:043d}",
                    "X-Forwarded-For": f"203.0.113.{i + 1}",
                    "X-Real-IP": f"198.51.100.{i + 1}",
                    "Forwarded": f"for=192.0.2.{i + 1}",
                },
            )
            statuses.append(r.status_code)
        assert statuses == [401, 401, 401, 429, 429]  # throttled as the one address it is

        events = c.get(
            "/api/v1/audit", params={"action": "auth.failure"}, headers=bearer(served.key)
        ).json()
    assert len(events) >= 3
    assert {e["client"] for e in events} == {"127.0.0.1"}
