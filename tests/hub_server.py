"""A local stand-in of the Hugging Face Hub HTTP API, on 127.0.0.1, for the hub push tests.

There is no hub access on these machines (docs/design.md §8), so ``st_instruct.hub.push_to_hub`` is tested against
this server instead: the real ``huggingface_hub`` client (``HfApi(endpoint=server.url)``, ``hf_hub_download``)
talks to it over HTTP with the real payloads. It is a stdlib ``ThreadingHTTPServer`` in a daemon thread on
an ephemeral port; repositories are kept in memory, their file contents content-addressed in a temporary
folder. Only the ``main`` branch exists (a commit id is accepted as a read revision).

Endpoints (``{type}`` is ``models``, ``datasets`` or ``spaces``; model repos have no URL prefix, others have
``datasets/`` / ``spaces/``):

- ``POST /api/repos/create`` — 409 when the repo exists (``create_repo(exist_ok=True)`` relies on it);
  a new repo starts with one empty commit.
- ``POST /api/validate-yaml`` — the README front matter must be a YAML mapping (what ``upload_folder`` checks).
- ``POST /api/{type}/{repo}/preupload/{rev}`` — decides each file's upload mode (below) and returns the oid of
  the file already on the branch, so unchanged files are skipped by the client.
- ``POST /{prefix}{repo}.git/info/lfs/objects/batch``, ``PUT /__lfs__/{oid}``, ``POST /__lfs__/{oid}/verify``
  — the git-LFS "basic" transfer: batch instructions, the upload itself (sha256 checked), verification.
- ``POST /api/{type}/{repo}/commit/{rev}`` — the NDJSON commit: ``header`` (with ``parentCommit`` checked),
  ``file`` (base64 inline), ``lfsFile`` (must have been uploaded), ``deletedFile``, ``deletedFolder``.
- ``GET /api/{type}/{repo}[/revision/{rev}]`` — ``repo_info`` / ``model_info`` (sha, siblings, card data).
- ``GET /api/{type}/{repo}/tree/{rev}[/{path}]`` — ``list_repo_tree`` / ``list_repo_files`` (one page).
- ``HEAD|GET /{prefix}{repo}/resolve/{rev}/{path}`` — ``hf_hub_download``: ETag, X-Repo-Commit, Content-Length.
- ``GET /api/whoami-v2``.
Anything else answers 501 naming the request, so a client path the stand-in lacks fails loudly.

Upload modes. ``upload_mode="regular"`` (the default) makes the server answer "regular" for every file, so
the content travels base64-inline in the commit. The server decides the mode on the real hub too, and this is
the only mode usable here with ``hf_xet`` installed (a hard dependency of huggingface_hub on x86-64): for "lfs"
files such a client switches to the Xet storage protocol, whose CAS server is not stood in (its token endpoint
answers 501). ``upload_mode="lfs"`` answers "lfs" for binary or large files as the hub does; with
``huggingface_hub.constants.HF_HUB_DISABLE_XET = True`` the client then uses the git-LFS batch API above.

Authentication: every write needs ``Authorization: Bearer <token>``; a missing token is answered like the hub
does (401 "Invalid username or password."), a wrong one with 401 "Invalid credentials in Authorization header".
Reads of public repos need no token; a wrong token is rejected on any request.
"""

from __future__ import annotations

import base64
import hashlib
import json
import re
import tempfile
import threading
from dataclasses import dataclass, field
from datetime import datetime, timezone
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, unquote, urlsplit

import yaml

USER = "standin-user"
# Suffixes the hub's default .gitattributes stores with LFS; any file with a NUL byte or over 10 MB also goes LFS.
LFS_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth", ".ckpt", ".h5", ".npy", ".npz", ".gguf", ".onnx", ".arrow",
                ".parquet", ".msgpack", ".pkl", ".zip", ".gz", ".tar", ".model", ".tflite", ".ot")
LFS_SIZE = 10 * 1024 * 1024
REPO_TYPES = {"models": "model", "datasets": "dataset", "spaces": "space"}
URL_PREFIX = {"model": "", "dataset": "datasets/", "space": "spaces/"}


def git_blob_oid(data: bytes) -> str:
    """The git object id of a blob: sha1 of ``b"blob <size>\\0" + data``."""
    return hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()


@dataclass
class _Entry:
    """A file in a commit. ``git_oid`` is the git blob id: of the content, or of the LFS pointer file."""

    sha256: str
    size: int
    lfs: bool
    git_oid: str

    @classmethod
    def lfs_pointer(cls, sha256: str, size: int) -> _Entry:
        pointer = f"version https://git-lfs.github.com/spec/v1\noid sha256:{sha256}\nsize {size}\n"
        return cls(sha256, size, True, git_blob_oid(pointer.encode()))


@dataclass
class _Commit:
    oid: str
    message: str
    files: dict[str, _Entry]
    date: str = field(default_factory=lambda: datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.000Z"))


@dataclass
class _Repo:
    repo_type: str
    repo_id: str
    private: bool
    commits: list[_Commit]

    def commit_at(self, revision: str) -> _Commit | None:
        if revision == "main":
            return self.commits[-1]
        return next((c for c in self.commits if c.oid == revision), None)


class _HTTPError(Exception):
    """An HTTP error answer: status, message (also sent as ``X-Error-Message``), optional ``X-Error-Code`` and
    extra fields of the JSON body."""

    def __init__(self, status: int, message: str, code: str | None = None, **body: Any):
        super().__init__(message)
        self.status, self.message, self.code, self.body = status, message, code, body


class HubStandIn:
    """The server and its state. ``start()`` binds 127.0.0.1 on a free port; ``url`` is the endpoint to use."""

    def __init__(self, token: str = "hf_standin_write_token", upload_mode: str = "regular",
                 root: str | Path | None = None):
        if upload_mode not in ("regular", "lfs"):
            raise ValueError(f"upload_mode must be 'regular' or 'lfs', got {upload_mode!r}")
        self.token = token
        self.upload_mode = upload_mode
        self._tmp = tempfile.TemporaryDirectory(prefix="hub_standin_") if root is None else None
        self.blobs = Path(root if root is not None else self._tmp.name) / "blobs"
        self.blobs.mkdir(parents=True, exist_ok=True)
        self.repos: dict[tuple[str, str], _Repo] = {}
        self.requests: list[tuple[str, str]] = []  # (method, path) of every request received, in order
        self.lock = threading.RLock()
        self._httpd: ThreadingHTTPServer | None = None

    # ------------------------------------------------------------------ lifecycle and inspection

    def start(self) -> HubStandIn:
        handler = type("Handler", (_Handler,), {"hub": self})
        self._httpd = ThreadingHTTPServer(("127.0.0.1", 0), handler)
        self._httpd.daemon_threads = True
        self._httpd.block_on_close = False  # idle keep-alive connections must not block shutdown
        threading.Thread(target=self._httpd.serve_forever, args=(0.05,), name="hub-standin", daemon=True).start()
        return self

    def stop(self) -> None:
        if self._httpd is not None:
            self._httpd.shutdown()
            self._httpd.server_close()
            self._httpd = None
        if self._tmp is not None:
            self._tmp.cleanup()

    @property
    def url(self) -> str:
        assert self._httpd is not None, "server not started"
        return f"http://127.0.0.1:{self._httpd.server_address[1]}"

    def repo_files(self, repo_id: str, repo_type: str = "model", revision: str = "main") -> dict[str, bytes]:
        """Every file of ``repo_id`` at ``revision``, path -> bytes, as the hub now holds it."""
        commit = self._repo(repo_type, repo_id).commit_at(revision)
        if commit is None:
            raise KeyError(f"{repo_id}: no revision {revision}")
        return {path: self._read_blob(e.sha256) for path, e in sorted(commit.files.items())}

    def lfs_paths(self, repo_id: str, repo_type: str = "model") -> set[str]:
        """Paths of the head commit that were committed as LFS pointers."""
        return {p for p, e in self._repo(repo_type, repo_id).commits[-1].files.items() if e.lfs}

    def commits(self, repo_id: str, repo_type: str = "model") -> list[tuple[str, str]]:
        """(oid, message) of every commit on ``main``, oldest first."""
        return [(c.oid, c.message) for c in self._repo(repo_type, repo_id).commits]

    # ------------------------------------------------------------------ storage

    def _repo(self, repo_type: str, repo_id: str) -> _Repo:
        repo = self.repos.get((repo_type, repo_id))
        if repo is None:
            raise _HTTPError(404, "Repository not found", "RepoNotFound")
        return repo

    def _store_blob(self, data: bytes) -> str:
        sha = hashlib.sha256(data).hexdigest()
        path = self.blobs / sha
        if not path.exists():
            path.write_bytes(data)
        return sha

    def _read_blob(self, sha256: str) -> bytes:
        return (self.blobs / sha256).read_bytes()

    def _upload_mode(self, path: str, size: int, sample: bytes) -> str:
        if self.upload_mode == "regular" or size == 0:
            return "regular"
        binary = path.endswith(LFS_SUFFIXES) or b"\0" in sample or size >= LFS_SIZE
        return "lfs" if binary else "regular"

    def _commit(self, repo: _Repo, message: str, files: dict[str, _Entry]) -> _Commit:
        parent = repo.commits[-1].oid if repo.commits else ""
        listing = "\n".join(f"{p} {e.git_oid}" for p, e in sorted(files.items()))
        oid = hashlib.sha1(f"{parent}\n{message}\n{len(repo.commits)}\n{listing}".encode()).hexdigest()
        commit = _Commit(oid=oid, message=message, files=files)
        repo.commits.append(commit)
        return commit


class _Handler(BaseHTTPRequestHandler):
    hub: HubStandIn
    protocol_version = "HTTP/1.1"

    def log_message(self, format: str, *args: Any) -> None:  # keep pytest output clean
        pass

    # ------------------------------------------------------------------ plumbing

    def do_GET(self) -> None:
        self._dispatch("GET")

    def do_HEAD(self) -> None:
        self._dispatch("HEAD")

    def do_POST(self) -> None:
        self._dispatch("POST")

    def do_PUT(self) -> None:
        self._dispatch("PUT")

    def _body(self) -> bytes:
        if self.headers.get("Transfer-Encoding", "").lower() == "chunked":
            chunks = []
            while True:
                size = int(self.rfile.readline().split(b";")[0].strip(), 16)
                chunks.append(self.rfile.read(size))
                self.rfile.readline()
                if size == 0:
                    return b"".join(chunks)
        return self.rfile.read(int(self.headers.get("Content-Length") or 0))

    def _send(self, status: int, body: bytes = b"", headers: dict[str, str] | None = None,
              content_type: str = "application/json") -> None:
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        for key, value in (headers or {}).items():
            self.send_header(key, value)
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)

    def _json(self, obj: Any, status: int = 200, headers: dict[str, str] | None = None) -> None:
        self._send(status, json.dumps(obj).encode(), headers)

    def _dispatch(self, method: str) -> None:
        parts = urlsplit(self.path)
        path, query = unquote(parts.path), parse_qs(parts.query)
        body = self._body() if method in ("POST", "PUT") else b""
        with self.hub.lock:
            self.hub.requests.append((method, path))
        try:
            # validate-yaml is public; an LFS upload URL is a capability (a presigned storage URL on the hub)
            self._check_token(write=method in ("POST", "PUT") and path != "/api/validate-yaml"
                              and not (method == "PUT" and path.startswith("/__lfs__/")))
            with self.hub.lock:
                self._route(method, path, query, body)
        except _HTTPError as err:
            headers = {"X-Error-Message": err.message} | ({"X-Error-Code": err.code} if err.code else {})
            self._json({"error": err.message, **err.body}, err.status, headers)

    def _token(self) -> str | None:
        auth = self.headers.get("Authorization", "")
        return auth[len("Bearer "):] if auth.startswith("Bearer ") else None

    def _check_token(self, write: bool) -> None:
        token = self._token()
        if token is not None and token != self.hub.token:
            raise _HTTPError(401, "Invalid credentials in Authorization header")
        if token is None and write:
            raise _HTTPError(401, "Invalid username or password.")

    def _readable(self, repo_type: str, repo_id: str) -> _Repo:
        repo = self.hub._repo(repo_type, repo_id)
        if repo.private and self._token() is None:
            raise _HTTPError(404, "Repository not found", "RepoNotFound")
        return repo

    # ------------------------------------------------------------------ routes

    def _route(self, method: str, path: str, query: dict[str, list[str]], body: bytes) -> None:
        api = re.fullmatch(r"/api/(models|datasets|spaces)/([^/]+/[^/]+)(?:/(.*))?", path)
        if method == "POST" and path == "/api/repos/create":
            return self._create_repo(json.loads(body))
        if method == "POST" and path == "/api/validate-yaml":
            return self._validate_yaml(json.loads(body))
        if method == "GET" and path == "/api/whoami-v2":
            return self._json({"type": "user", "name": USER, "fullname": "Hub stand-in", "orgs": [],
                               "auth": {"type": "access_token", "accessToken": {"role": "write"}}})
        if api:
            repo_type, repo_id, rest = REPO_TYPES[api.group(1)], api.group(2), api.group(3) or ""
            if method == "GET" and (rest == "" or rest.startswith("revision/")):
                return self._info(repo_type, repo_id, rest.removeprefix("revision/") or "main")
            if method == "POST" and rest.startswith("preupload/"):
                return self._preupload(repo_type, repo_id, rest.removeprefix("preupload/"), json.loads(body))
            if method == "POST" and rest.startswith("commit/"):
                return self._commit(repo_type, repo_id, rest.removeprefix("commit/"), body)
            if method == "GET" and rest.startswith("tree/"):
                revision, _, sub = rest.removeprefix("tree/").partition("/")
                return self._tree(repo_type, repo_id, revision, sub, query.get("recursive", ["False"])[0])
        lfs = re.fullmatch(r"/(datasets/|spaces/)?([^/]+/[^/]+)\.git/info/lfs/objects/batch", path)
        if method == "POST" and lfs:
            return self._lfs_batch(REPO_TYPES[(lfs.group(1) or "models/").rstrip("/")], lfs.group(2), json.loads(body))
        upload = re.fullmatch(r"/__lfs__/([0-9a-f]{64})(/verify)?", path)
        if upload and method == "PUT" and not upload.group(2):
            return self._lfs_put(upload.group(1), body)
        if upload and method == "POST" and upload.group(2):
            return self._lfs_verify(upload.group(1), json.loads(body))
        resolve = re.fullmatch(r"/(datasets/|spaces/)?([^/]+/[^/]+)/resolve/([^/]+)/(.+)", path)
        if method in ("GET", "HEAD") and resolve:
            repo_type = REPO_TYPES[(resolve.group(1) or "models/").rstrip("/")]
            return self._resolve(repo_type, resolve.group(2), resolve.group(3), resolve.group(4))
        raise _HTTPError(501, f"the hub stand-in does not implement {method} {path}")

    def _create_repo(self, payload: dict[str, Any]) -> None:
        repo_type = payload.get("type") or "model"
        repo_id = f"{payload.get('organization') or USER}/{payload['name']}"
        url = f"{self.hub.url}/{URL_PREFIX[repo_type]}{repo_id}"
        if (repo_type, repo_id) in self.hub.repos:
            raise _HTTPError(409, f"You already created this {repo_type} repo", url=url)
        repo = _Repo(repo_type, repo_id, private=payload.get("visibility") == "private", commits=[])
        self.hub._commit(repo, "initial commit", {})
        self.hub.repos[(repo_type, repo_id)] = repo
        self._json({"url": url, "name": repo_id, "id": repo_id})

    def _validate_yaml(self, payload: dict[str, Any]) -> None:
        match = re.match(r"---\n(.*?)\n---\n", payload.get("content", ""), re.DOTALL)
        if match is None:
            return self._json({"errors": [], "warnings": [{"message": "empty or missing yaml metadata"}]})
        try:
            meta = yaml.safe_load(match.group(1))
        except yaml.YAMLError as err:
            return self._json({"errors": [{"message": f"invalid YAML: {err}"}]}, 400)
        if not isinstance(meta, dict):
            return self._json({"errors": [{"message": "metadata must be a YAML mapping"}]}, 400)
        self._json({"errors": [], "warnings": []})

    def _preupload(self, repo_type: str, repo_id: str, revision: str, payload: dict[str, Any]) -> None:
        commit = self._branch(self.hub._repo(repo_type, repo_id), revision)
        files = []
        for f in payload["files"]:
            mode = self.hub._upload_mode(f["path"], f["size"], base64.b64decode(f["sample"]))
            known = commit.files.get(f["path"])
            oid = None if known is None else (known.sha256 if known.lfs else known.git_oid)
            files.append({"path": f["path"], "uploadMode": mode, "shouldIgnore": False, "oid": oid})
        self._json({"files": files, "commitOid": commit.oid})

    def _branch(self, repo: _Repo, revision: str) -> _Commit:
        if revision != "main":
            raise _HTTPError(404, f"the stand-in only has the branch 'main', not {revision!r}", "RevisionNotFound")
        return repo.commits[-1]

    def _lfs_batch(self, repo_type: str, repo_id: str, payload: dict[str, Any]) -> None:
        self.hub._repo(repo_type, repo_id)
        objects = []
        for obj in payload["objects"]:
            entry: dict[str, Any] = {"oid": obj["oid"], "size": obj["size"], "authenticated": True}
            if not (self.hub.blobs / obj["oid"]).exists():
                href = f"{self.hub.url}/__lfs__/{obj['oid']}"
                entry["actions"] = {"upload": {"href": href}, "verify": {"href": f"{href}/verify"}}
            objects.append(entry)
        self._json({"transfer": "basic", "objects": objects}, headers={"Content-Type": "application/vnd.git-lfs+json"})

    def _lfs_put(self, oid: str, body: bytes) -> None:
        if hashlib.sha256(body).hexdigest() != oid:
            raise _HTTPError(400, f"uploaded content does not match sha256 {oid}")
        self.hub._store_blob(body)
        self._send(200)

    def _lfs_verify(self, oid: str, payload: dict[str, Any]) -> None:
        path = self.hub.blobs / oid
        if not path.exists() or path.stat().st_size != payload["size"]:
            raise _HTTPError(404, f"LFS object {oid} of size {payload['size']} was not uploaded")
        self._json({"success": True})

    def _commit(self, repo_type: str, repo_id: str, revision: str, body: bytes) -> None:
        repo = self.hub._repo(repo_type, repo_id)
        head = self._branch(repo, revision)
        files = dict(head.files)
        message = ""
        for line in body.splitlines():
            item = json.loads(line)
            key, value = item["key"], item["value"]
            if key == "header":
                message = value["summary"]
                parent = value.get("parentCommit")
                if parent is not None and not head.oid.startswith(parent):
                    raise _HTTPError(412, f"parent commit {parent} is not the head of main ({head.oid})")
            elif key == "file":
                data = base64.b64decode(value["content"])
                files[value["path"]] = _Entry(self.hub._store_blob(data), len(data), False, git_blob_oid(data))
            elif key == "lfsFile":
                blob = self.hub.blobs / value["oid"]
                if not blob.exists():
                    raise _HTTPError(422, f"LFS file {value['path']} ({value['oid']}) was never uploaded")
                files[value["path"]] = _Entry.lfs_pointer(value["oid"], blob.stat().st_size)
            elif key == "deletedFile":
                files.pop(value["path"], None)
            elif key == "deletedFolder":
                prefix = value["path"].rstrip("/") + "/"
                files = {p: e for p, e in files.items() if not p.startswith(prefix)}
            else:
                raise _HTTPError(400, f"unknown commit operation {key!r}")
        commit = self.hub._commit(repo, message, files)
        url = f"{self.hub.url}/{URL_PREFIX[repo_type]}{repo_id}/commit/{commit.oid}"
        self._json({"success": True, "commitOid": commit.oid, "commitUrl": url, "hookOutput": "",
                    "pullRequestUrl": None})

    def _info(self, repo_type: str, repo_id: str, revision: str) -> None:
        repo = self._readable(repo_type, repo_id)
        commit = repo.commit_at(revision)
        if commit is None:
            raise _HTTPError(404, f"Invalid rev id: {revision}", "RevisionNotFound")
        card: dict[str, Any] = {}
        if "README.md" in commit.files:
            match = re.match(r"---\n(.*?)\n---\n", self.hub._read_blob(commit.files["README.md"].sha256).decode(),
                             re.DOTALL)
            card = (yaml.safe_load(match.group(1)) or {}) if match else {}
        siblings = [{"rfilename": p, "size": e.size, "blobId": e.git_oid,
                     **({"lfs": {"size": e.size, "sha256": e.sha256, "pointerSize": 134}} if e.lfs else {})}
                    for p, e in sorted(commit.files.items())]
        self._json({"_id": hashlib.md5(repo_id.encode()).hexdigest()[:24], "id": repo_id,
                    "author": repo_id.split("/")[0], "sha": commit.oid, "lastModified": commit.date,
                    "createdAt": repo.commits[0].date, "private": repo.private, "disabled": False, "gated": False,
                    "tags": card.get("tags", []), "library_name": card.get("library_name"),
                    "pipeline_tag": card.get("pipeline_tag"), "cardData": card, "siblings": siblings})

    def _tree(self, repo_type: str, repo_id: str, revision: str, sub: str, recursive: str) -> None:
        commit = self._readable(repo_type, repo_id).commit_at(revision)
        if commit is None:
            raise _HTTPError(404, f"Invalid rev id: {revision}", "RevisionNotFound")
        prefix = sub.strip("/") + "/" if sub.strip("/") else ""
        entries: dict[str, dict[str, Any]] = {}
        for path, e in sorted(commit.files.items()):
            if not path.startswith(prefix):
                continue
            parts = path[len(prefix):].split("/")
            depth = len(parts) if recursive.lower() == "true" else 1
            for i in range(1, min(depth, len(parts) - 1) + 1):  # folders on the way
                folder = prefix + "/".join(parts[:i])
                entries.setdefault(folder, {"type": "directory", "oid": "0" * 40, "size": 0, "path": folder})
            if len(parts) <= depth:
                entries[path] = {"type": "file", "oid": e.git_oid, "size": e.size, "path": path,
                                 **({"lfs": {"oid": e.sha256, "size": e.size, "pointerSize": 134}} if e.lfs else {})}
        if prefix and not entries:
            raise _HTTPError(404, f"{sub} does not exist on {revision}", "EntryNotFound")
        self._json(list(entries.values()))

    def _resolve(self, repo_type: str, repo_id: str, revision: str, path: str) -> None:
        commit = self._readable(repo_type, repo_id).commit_at(revision)
        if commit is None:
            raise _HTTPError(404, f"Invalid rev id: {revision}", "RevisionNotFound")
        entry = commit.files.get(path)
        if entry is None:
            headers = {"X-Error-Code": "EntryNotFound", "X-Error-Message": "Entry not found",
                       "X-Repo-Commit": commit.oid}
            return self._json({"error": "Entry not found"}, 404, headers)
        etag = entry.sha256 if entry.lfs else entry.git_oid
        self._send(200, self.hub._read_blob(entry.sha256), {"ETag": f'"{etag}"', "X-Repo-Commit": commit.oid},
                   content_type="application/octet-stream")
