"""A small Hugging Face Hub on 127.0.0.1 for tests: the HTTP routes `huggingface_hub` calls to fetch a
snapshot and to push a folder, served from memory. Point `HF_ENDPOINT` at `hub.url`.

Fetching (`snapshot_download`, `hf_hub_download`, `HfApi.model_info`):
- GET  /api/models/{org}/{name}[/revision/{rev}]  → `{"id", "sha", "siblings": [{"rfilename"}]}`
- GET  /api/models/{org}/{name}/tree/{rev}         → `[{"type": "file", "path", "size", "oid"}]`
- HEAD, GET /{org}/{name}/resolve/{rev}/{path}     → the file, with `X-Repo-Commit` and `ETag`

Pushing (`HfApi.create_repo`, `create_branch`, `upload_folder`):
- POST /api/repos/create, /api/validate-yaml, /api/models/{org}/{name}/branch/{branch},
  /api/models/{org}/{name}/preupload/{rev} (every file "regular"), /api/models/{org}/{name}/commit/{rev}
  (the NDJSON commit: base64 file contents).

A repository or revision it does not hold is a 404 with the `X-Error-Code` the Hub sends, so
huggingface_hub raises its own `RepositoryNotFoundError` / `RevisionNotFoundError`.
"""

from __future__ import annotations

import base64
import hashlib
import json
import re
import threading
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import unquote, urlsplit

REPO = r"(?P<repo>[^/]+/[^/]+)"


@dataclass
class Repo:
    branches: dict[str, str] = field(default_factory=dict)  # branch → commit
    commits: dict[str, dict[str, bytes]] = field(default_factory=dict)  # commit → {path: content}
    private: bool = False


class HubServer:
    """`with HubServer() as hub:` serves on `hub.url` until the block ends; `hub.requests` lists
    every `(method, path)` it answered."""

    def __init__(self) -> None:
        self.repos: dict[str, Repo] = {}
        self.requests: list[tuple[str, str]] = []
        self._lock = threading.Lock()
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), _handler(self))
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)

    @property
    def url(self) -> str:
        host, port = self._server.server_address[:2]
        return f"http://{host}:{port}"

    def __enter__(self) -> "HubServer":
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.stop()

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()

    # ------------------------------------------------------------ content

    def commit(self, repo_id: str, files: dict[str, bytes], branch: str = "main", replace: bool = False) -> str:
        """A new commit on `branch` (created from main if new) with `files` added; returns its sha."""
        with self._lock:
            repo = self.repos.setdefault(repo_id, Repo())
            parent = repo.branches.get(branch) or repo.branches.get("main")
            content = {} if replace or parent is None else dict(repo.commits[parent])
            content.update(files)
            listing = "".join(f"{p}\0{hashlib.sha256(c).hexdigest()}\n" for p, c in sorted(content.items()))
            sha = hashlib.sha1(f"{parent}\n{listing}".encode()).hexdigest()
            repo.commits[sha] = content
            repo.branches[branch] = sha
            return sha

    def publish_folder(self, repo_id: str, folder: Path, skip: tuple[str, ...] = ()) -> str:
        """Commits every file of a local folder (those named in `skip` left out)."""
        files = {p.relative_to(folder).as_posix(): p.read_bytes() for p in sorted(folder.rglob("*"))
                 if p.is_file() and p.name not in skip}
        return self.commit(repo_id, files, replace=True)

    def fetched_model(self, repo_id: str, folder: Path, cache_dir: Path) -> Path:
        """Publishes a model folder as `repo_id` and fetches it with `snapshot_download` into
        `cache_dir`: its snapshot folder, as a user of the Hub's cache has it."""
        from huggingface_hub import snapshot_download

        self.publish_folder(repo_id, folder)
        return Path(snapshot_download(repo_id, cache_dir=str(cache_dir), endpoint=self.url))

    def files(self, repo_id: str, revision: str = "main") -> dict[str, bytes]:
        repo = self.repos[repo_id]
        return repo.commits[repo.branches.get(revision, revision)]

    def _resolve(self, repo_id: str, revision: str) -> tuple[Repo, str] | str:
        repo = self.repos.get(repo_id)
        if repo is None:
            return "RepoNotFound"
        sha = repo.branches.get(revision, revision if revision in repo.commits else None)
        return "RevisionNotFound" if sha is None else (repo, sha)


def _handler(hub: HubServer):
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, *args) -> None:  # quiet
            pass

        # -------------------------------------------------------- plumbing

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

        def _json(self, value, status: int = 200, headers: dict[str, str] | None = None) -> None:
            self._send(status, json.dumps(value).encode(), headers)

        def _error(self, code: str, status: int = 404) -> None:
            self._json({"error": code}, status, {"X-Error-Code": code})

        def _body(self) -> bytes:
            return self.rfile.read(int(self.headers.get("Content-Length") or 0))

        def _route(self, method: str) -> None:
            path = urlsplit(self.path).path
            hub.requests.append((method, path))
            for pattern, handler in ROUTES.get(method, ()):
                match = re.fullmatch(pattern, path)
                if match:
                    return handler(self, **{k: unquote(v) if v else v for k, v in match.groupdict().items()})
            self._json({"error": f"no route {method} {path}"}, 404)

        def do_GET(self) -> None:
            self._route("GET")

        def do_HEAD(self) -> None:
            self._route("GET")

        def do_POST(self) -> None:
            self._route("POST")

        # -------------------------------------------------------- fetching

        def model_info(self, repo: str, rev: str | None = None) -> None:
            found = hub._resolve(repo, rev or "main")
            if isinstance(found, str):
                return self._error(found)
            r, sha = found
            self._json({"id": repo, "modelId": repo, "sha": sha, "private": r.private, "tags": [],
                        "siblings": [{"rfilename": p} for p in sorted(r.commits[sha])]})

        def tree(self, repo: str, rev: str, path: str | None = None) -> None:
            found = hub._resolve(repo, rev)
            if isinstance(found, str):
                return self._error(found)
            r, sha = found
            self._json([{"type": "file", "path": p, "size": len(c), "oid": hashlib.sha1(c).hexdigest()}
                        for p, c in sorted(r.commits[sha].items()) if not path or p.startswith(path + "/")])

        def resolve(self, repo: str, rev: str, path: str) -> None:
            found = hub._resolve(repo, rev)
            if isinstance(found, str):
                return self._error(found)
            r, sha = found
            content = r.commits[sha].get(path)
            if content is None:
                return self._json({"error": "EntryNotFound"}, 404, {"X-Error-Code": "EntryNotFound",
                                                                     "X-Repo-Commit": sha})
            self._send(200, content, {"X-Repo-Commit": sha, "ETag": f'"{hashlib.sha256(content).hexdigest()}"'},
                       "application/octet-stream")

        # -------------------------------------------------------- pushing

        def create_repo(self) -> None:
            payload = json.loads(self._body())
            repo_id = f"{payload['organization']}/{payload['name']}" if payload.get("organization") else payload["name"]
            if repo_id in hub.repos:
                return self._json({"error": "You already created this model repo", "url": f"{hub.url}/{repo_id}"}, 409)
            hub.repos[repo_id] = Repo(private=payload.get("visibility") == "private" or bool(payload.get("private")))
            hub.commit(repo_id, {".gitattributes": b"*.safetensors filter=lfs diff=lfs merge=lfs -text\n"})
            self._json({"url": f"{hub.url}/{repo_id}", "name": repo_id})

        def validate_yaml(self) -> None:
            self._body()
            self._json({"errors": [], "warnings": []})

        def create_branch(self, repo: str, branch: str) -> None:
            self._body()
            r = hub.repos.get(repo)
            if r is None:
                return self._error("RepoNotFound")
            if branch in r.branches:
                return self._json({"error": "Reference already exists"}, 409)
            r.branches[branch] = r.branches["main"]
            self._json({})

        def preupload(self, repo: str, rev: str) -> None:
            payload = json.loads(self._body())
            if repo not in hub.repos:
                return self._error("RepoNotFound")
            self._json({"files": [{"path": f["path"], "uploadMode": "regular", "shouldIgnore": False, "oid": None}
                                  for f in payload["files"]]})

        def commit(self, repo: str, rev: str) -> None:
            lines = [json.loads(line) for line in self._body().splitlines() if line.strip()]
            if repo not in hub.repos:
                return self._error("RepoNotFound")
            files = {item["value"]["path"]: base64.b64decode(item["value"]["content"])
                     for item in lines if item["key"] == "file"}
            sha = hub.commit(repo, files, branch=rev)
            self._json({"commitUrl": f"{hub.url}/{repo}/commit/{sha}", "commitOid": sha, "pullRequestUrl": None})

    ROUTES = {
        "GET": [
            (rf"/api/models/{REPO}/tree/(?P<rev>[^/]+)(?:/(?P<path>.*))?", Handler.tree),
            (rf"/api/models/{REPO}(?:/revision/(?P<rev>[^/]+))?", Handler.model_info),
            (rf"/{REPO}/resolve/(?P<rev>[^/]+)/(?P<path>.+)", Handler.resolve),
        ],
        "POST": [
            (r"/api/repos/create", Handler.create_repo),
            (r"/api/validate-yaml", Handler.validate_yaml),
            (rf"/api/models/{REPO}/branch/(?P<branch>.+)", Handler.create_branch),
            (rf"/api/models/{REPO}/preupload/(?P<rev>[^/]+)", Handler.preupload),
            (rf"/api/models/{REPO}/commit/(?P<rev>[^/]+)", Handler.commit),
        ],
    }
    return Handler
