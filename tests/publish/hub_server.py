"""A loopback stand-in for the part of the Hugging Face Hub API that an upload uses.

The tests run the real huggingface_hub client against it (HF_ENDPOINT pointed here), so what is
checked is what the client really sends: repo creation, the README metadata check, preupload
(which file goes to LFS and what the remote already holds), the LFS batch API with the basic
transfer (upload URLs served by this same server), LFS verify, branch creation and the NDJSON
commit. Every request is recorded with its headers, so a test can see where the token went.

The ``hub`` fixture sets HF_HUB_DISABLE_XET=1: with hf_xet installed the client would upload
large files through the Xet protocol (a separate storage service this server does not speak);
with Xet off it uses the classic LFS batch API, whose answers ("already stored: no upload
action") are what make a re-run skip finished files.

Failure knobs (``fail_commits``, ``fail_puts_after``, ``echo_auth_in_errors``) let a test cut
an upload halfway and look at the resume.
"""

from __future__ import annotations

import base64
import hashlib
import json
import re
import shutil
import tempfile
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import unquote, urlsplit

import pytest

FAKE_TOKEN = "hf_FAKEtokenForLoopbackTests0123456789"


def git_blob_oid(data: bytes) -> str:
    """The git blob SHA-1 the Hub reports as a regular file's oid (the client compares it)."""
    return hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()


@dataclass
class Seen:
    """One request as it arrived."""

    method: str
    path: str
    headers: dict[str, str]
    status: int = 0


@dataclass
class Commit:
    repo_id: str
    revision: str
    summary: str
    description: str
    paths: list[str]
    oid: str


@dataclass
class Repo:
    repo_id: str
    private: bool
    branches: dict[str, dict[str, bytes | Path]] = field(default_factory=lambda: {"main": {}})


@dataclass
class HubState:
    """What the server holds and how it misbehaves; guarded by ``lock``."""

    base: str = ""
    tokens: set[str] = field(default_factory=lambda: {FAKE_TOKEN})
    namespaces: set[str] = field(default_factory=lambda: {"tester"})  # where the token may create repos
    lfs_threshold: int = 1024  # bytes; the Hub's rule is 10 MB or binary, kept small for tests
    repos: dict[str, Repo] = field(default_factory=dict)
    lfs_dir: Path = Path()  # LFS objects are streamed to files here, never held in memory
    lfs: dict[str, Path] = field(default_factory=dict)  # oid (sha256) -> its file under lfs_dir
    requests: list[Seen] = field(default_factory=list)
    puts: list[str] = field(default_factory=list)  # oid of each completed LFS PUT
    commits: list[Commit] = field(default_factory=list)
    unknown: list[str] = field(default_factory=list)
    fail_commits: int = 0  # the next N commits answer 500
    fail_puts_after: int | None = None  # LFS PUTs beyond this many are refused (403)
    echo_auth_in_errors: bool = False  # a hostile server quoting the Authorization header back
    lock: threading.Lock = field(default_factory=threading.Lock)

    def files(self, repo_id: str, revision: str = "main") -> dict[str, bytes]:
        """What a revision holds, LFS files read back from their storage."""
        held = self.repos[repo_id].branches[revision]
        return {p: v.read_bytes() if isinstance(v, Path) else v for p, v in held.items()}


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server: _Server

    def log_message(self, format: str, *args: object) -> None:  # quiet: the tests read ``requests``
        pass

    # -- plumbing -------------------------------------------------------------------------------

    @property
    def state(self) -> HubState:
        return self.server.state

    def _stream_body(self, sink: Callable[[bytes], object], block: int = 1 << 20) -> None:
        """Hand the request body to ``sink`` in blocks (Content-Length or chunked encoding)."""
        if self.headers.get("Transfer-Encoding", "").lower() == "chunked":
            while size := int(self.rfile.readline().split(b";")[0].strip() or b"0", 16):
                while size:
                    data = self.rfile.read(min(size, block))
                    if not data:
                        return
                    sink(data)
                    size -= len(data)
                self.rfile.readline()
            while self.rfile.readline() not in (b"\r\n", b"\n", b""):
                pass
            return
        left = int(self.headers.get("Content-Length") or 0)
        while left > 0 and (data := self.rfile.read(min(left, block))):
            sink(data)
            left -= len(data)

    def _body(self) -> bytes:
        out = bytearray()
        self._stream_body(out.extend)
        return bytes(out)

    def _send(self, status: int, payload: object = None, headers: dict[str, str] | None = None) -> None:
        data = b"" if payload is None else json.dumps(payload).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        for k, v in (headers or {}).items():
            self.send_header(k, v)
        self.end_headers()
        self.wfile.write(data)
        self._seen.status = status

    def _error(self, status: int, message: str, code: str | None = None) -> None:
        if self.state.echo_auth_in_errors:
            message += f" (you sent authorization: {self.headers.get('Authorization')})"
        self._send(status, {"error": message}, {"X-Error-Code": code} if code else None)

    def _authorized(self) -> bool:
        auth = self.headers.get("Authorization") or ""
        if auth.startswith("Bearer ") and auth[len("Bearer ") :] in self.state.tokens:
            return True
        self._error(401, "Invalid credentials in Authorization header")
        return False

    def _repo(self, repo_id: str) -> Repo | None:
        repo = self.state.repos.get(repo_id)
        if repo is None:
            self._error(404, "Repository not found", "RepoNotFound")
        return repo

    def _dispatch(self, method: str) -> None:
        path = urlsplit(self.path).path
        self._seen = Seen(method, path, {k.lower(): v for k, v in self.headers.items()})
        with self.state.lock:
            self.state.requests.append(self._seen)
        body = b"" if method == "PUT" else self._body()  # LFS PUTs stream their own body
        for verb, pattern, handler in _ROUTES:
            m = re.fullmatch(pattern, path)
            if verb == method and m:
                groups = [unquote(g) for g in m.groups()]
                handler(self, body, *groups)
                return
        with self.state.lock:
            self.state.unknown.append(f"{method} {path}")
        self._error(404, f"not served by the loopback hub: {method} {path}")

    def do_GET(self) -> None:
        self._dispatch("GET")

    def do_POST(self) -> None:
        self._dispatch("POST")

    def do_PUT(self) -> None:
        self._dispatch("PUT")

    # -- endpoints ------------------------------------------------------------------------------

    def create_repo(self, body: bytes) -> None:
        if not self._authorized():
            return
        req = json.loads(body)
        name, org = req.get("name", ""), req.get("organization")
        if not re.fullmatch(r"[\w.-]{1,96}", name) or req.get("type", "model") != "model":
            self._error(400, "Invalid repo name or type")
            return
        if org is not None and org not in self.state.namespaces:
            self._error(403, f'You don\'t have the rights to create a model under the namespace "{org}"')
            return
        repo_id = f"{org}/{name}" if org else f"tester/{name}"
        url = f"{self.state.base}/{repo_id}"
        with self.state.lock:
            if repo_id in self.state.repos:
                self._send(409, {"error": "You already created this model repo", "url": url})
                return
            self.state.repos[repo_id] = Repo(repo_id, private=req.get("visibility") == "private")
        self._send(200, {"url": url, "name": repo_id, "id": repo_id})

    def validate_yaml(self, body: bytes) -> None:
        if self._authorized():
            self._send(200, {"errors": [], "warnings": []})

    def create_branch(self, body: bytes, repo_id: str, branch: str) -> None:
        if not self._authorized() or (repo := self._repo(repo_id)) is None:
            return
        with self.state.lock:
            if branch in repo.branches:
                self._error(409, "Branch already exists")
                return
            repo.branches[branch] = dict(repo.branches["main"])
        self._send(200, {})

    def preupload(self, body: bytes, repo_id: str, revision: str) -> None:
        if not self._authorized() or (repo := self._repo(repo_id)) is None:
            return
        if revision not in repo.branches:
            self._error(404, "Invalid rev id", "RevisionNotFound")
            return
        out = []
        for f in json.loads(body)["files"]:
            sample = base64.b64decode(f["sample"])
            lfs = f["size"] > self.state.lfs_threshold or b"\0" in sample
            held = repo.branches[revision].get(f["path"])
            oid = None
            if held is not None:
                oid = held.name if isinstance(held, Path) else git_blob_oid(held)  # LFS: sha256
            out.append(
                {
                    "path": f["path"],
                    "uploadMode": "lfs" if lfs else "regular",
                    "shouldIgnore": False,
                    "oid": oid,
                }
            )
        self._send(200, {"files": out, "commitOid": "0" * 40})

    def lfs_batch(self, body: bytes, repo_id: str) -> None:
        if not self._authorized() or self._repo(repo_id) is None:
            return
        req = json.loads(body)
        objects = []
        for obj in req["objects"]:
            oid, size = obj["oid"], obj["size"]
            entry: dict[str, object] = {"oid": oid, "size": size}
            with self.state.lock:
                stored = oid in self.state.lfs
            if not stored:  # no actions = "already there": the client skips the upload
                entry["actions"] = {
                    "upload": {"href": f"{self.state.base}/_lfs/{oid}"},
                    "verify": {"href": f"{self.state.base}/{repo_id}.git/info/lfs/objects/verify"},
                }
            objects.append(entry)
        self._send(200, {"transfer": "basic", "objects": objects})

    def lfs_put(self, body: bytes, oid: str) -> None:
        digest = hashlib.sha256()
        part = self.state.lfs_dir / f"{oid}.{threading.get_ident()}.part"
        with part.open("wb") as f:

            def sink(data: bytes) -> None:
                digest.update(data)
                f.write(data)

            self._stream_body(sink)
        with self.state.lock:  # decided once the body is in, so concurrent PUTs count exactly
            limit = self.state.fail_puts_after
            refuse = limit is not None and len(self.state.puts) >= limit
            good = digest.hexdigest() == oid
            if good and not refuse:
                self.state.lfs[oid] = part.replace(self.state.lfs_dir / oid)
                self.state.puts.append(oid)
        if refuse or not good:
            part.unlink()
            if refuse:
                self._error(403, "upload refused by the test (simulated interruption)")
            else:
                self._error(400, "content does not match its oid")
            return
        self._send(200, {})

    def lfs_verify(self, body: bytes, repo_id: str) -> None:
        if not self._authorized():
            return
        req = json.loads(body)
        with self.state.lock:
            held = self.state.lfs.get(req["oid"])
            ok = held is not None and held.stat().st_size == req["size"]
        self._send(200, {}) if ok else self._error(404, "object not stored")

    def commit(self, body: bytes, repo_id: str, revision: str) -> None:
        if not self._authorized() or (repo := self._repo(repo_id)) is None:
            return
        if revision not in repo.branches:
            self._error(404, "Invalid rev id", "RevisionNotFound")
            return
        with self.state.lock:
            if self.state.fail_commits > 0:
                self.state.fail_commits -= 1
                fail = True
            else:
                fail = False
        if fail:
            self._error(500, "commit failed (simulated by the test)")
            return
        lines = [json.loads(line) for line in body.decode().splitlines() if line.strip()]
        header = next(x["value"] for x in lines if x["key"] == "header")
        files: dict[str, bytes | Path] = {}
        for item in lines:
            value = item["value"]
            if item["key"] == "file":
                files[value["path"]] = base64.b64decode(value["content"])
            elif item["key"] == "lfsFile":
                with self.state.lock:
                    data = self.state.lfs.get(value["oid"])
                if data is None:
                    self._error(400, f"LFS object of {value['path']} was never uploaded")
                    return
                files[value["path"]] = data
        oid = hashlib.sha1(body).hexdigest()
        with self.state.lock:
            repo.branches[revision].update(files)
            self.state.commits.append(
                Commit(
                    repo_id, revision, header["summary"], header.get("description", ""), sorted(files), oid
                )
            )
        url = f"{self.state.base}/{repo_id}/commit/{oid}"
        self._send(200, {"success": True, "commitOid": oid, "commitUrl": url})

    def agent_harnesses(self, body: bytes) -> None:
        # The client's best-effort user-agent lookup (once per process): an empty registry.
        self._send(200, {"standardEnvVars": [], "harnesses": {}})

    def repo_info(self, body: bytes, repo_id: str, revision: str | None = None) -> None:
        if not self._authorized() or (repo := self._repo(repo_id)) is None:
            return
        with self.state.lock:
            head = next((c.oid for c in reversed(self.state.commits) if c.repo_id == repo_id), "0" * 40)
            siblings = [{"rfilename": p} for p in sorted(repo.branches.get(revision or "main", {}))]
        self._send(200, {"id": repo_id, "sha": head, "private": repo.private, "siblings": siblings})


_REPO = r"/((?:[\w.-]+/)?[\w.-]+)"
_ROUTES = [
    ("POST", r"/api/repos/create", _Handler.create_repo),
    ("POST", r"/api/validate-yaml", _Handler.validate_yaml),
    ("POST", rf"/api/models{_REPO}/branch/(.+)", _Handler.create_branch),
    ("POST", rf"/api/models{_REPO}/preupload/(.+)", _Handler.preupload),
    ("POST", rf"/api/models{_REPO}/commit/(.+)", _Handler.commit),
    ("POST", rf"{_REPO}\.git/info/lfs/objects/batch", _Handler.lfs_batch),
    ("POST", rf"{_REPO}\.git/info/lfs/objects/verify", _Handler.lfs_verify),
    ("PUT", r"/_lfs/([0-9a-f]{64})", _Handler.lfs_put),
    ("GET", r"/api/agent-harnesses", _Handler.agent_harnesses),
    ("GET", rf"/api/models{_REPO}/revision/(.+)", _Handler.repo_info),
    ("GET", rf"/api/models{_REPO}", _Handler.repo_info),
]


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    state: HubState


class LoopbackHub:
    """The server on 127.0.0.1 (an ephemeral port) in a background thread."""

    def __init__(self) -> None:
        self.server = _Server(("127.0.0.1", 0), _Handler)
        self.state = HubState(lfs_dir=Path(tempfile.mkdtemp(prefix="loopback-hub-lfs-")))
        self.server.state = self.state
        host, port = self.server.server_address[:2]
        self.url = self.state.base = f"http://{host}:{port}"
        self._thread = threading.Thread(
            target=self.server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True
        )

    def __enter__(self) -> LoopbackHub:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.shutdown()
        self.server.server_close()
        self._thread.join(timeout=5)
        shutil.rmtree(self.state.lfs_dir, ignore_errors=True)


@pytest.fixture
def hub(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[LoopbackHub]:
    """A loopback Hub with the client pointed at it: HF_ENDPOINT, Xet off (classic LFS), a
    throw-away HF_HOME (never the user's login) and the fake token in HF_TOKEN."""
    from huggingface_hub import constants

    home = tmp_path / "hf_home"
    home.mkdir()
    with LoopbackHub() as server:
        env = {
            "HF_ENDPOINT": server.url,
            "HF_HUB_DISABLE_XET": "1",
            "HF_HOME": str(home),
            "HF_TOKEN": FAKE_TOKEN,
            "HF_HUB_DISABLE_TELEMETRY": "1",
            "NO_PROXY": "127.0.0.1,localhost",
            "no_proxy": "127.0.0.1,localhost",
        }
        for k, v in env.items():
            monkeypatch.setenv(k, v)
        monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
        # huggingface_hub reads these at import time, so the environment alone is too late.
        monkeypatch.setattr(constants, "ENDPOINT", server.url)
        monkeypatch.setattr(constants, "HF_HUB_DISABLE_XET", True)
        monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
        # Every path under the user's HF_HOME (token, stored tokens, caches, the agent-registry
        # cache the client writes) moves to the throw-away home.
        old_home = constants.HF_HOME
        for name, value in vars(constants).items():
            if name.isupper() and isinstance(value, str) and value.startswith(old_home):
                monkeypatch.setattr(constants, name, str(home) + value[len(old_home) :])
        monkeypatch.setattr(constants, "HF_TOKEN_PATH", str(home / "token"))
        monkeypatch.setattr(constants, "HF_STORED_TOKENS_PATH", str(home / "stored_tokens"))
        yield server
