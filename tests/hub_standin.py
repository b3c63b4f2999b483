"""A local stand-in for the Hugging Face Hub's HTTP API, for the publish tests (no machine here reaches the Hub).

A threaded ``http.server`` that answers just the calls huggingface_hub 2.x makes to publish a
folder (read from its source: ``HfApi.whoami``, ``create_repo``, ``delete_repo``,
``create_commit`` with ``_validate_yaml``, ``_fetch_upload_modes``, ``lfs.post_lfs_batch_info``,
``lfs_upload`` and ``_send_commit``). Tests point ``HF_ENDPOINT`` (``huggingface_hub.constants
.ENDPOINT``) at it. Large files go up by the classic LFS protocol: the real Hub now stores them
with Xet, which has no stand-in here, so the tests turn huggingface_hub's Xet path off.

It keeps what a commit wrote per repository (``repos[repo_id]``: path -> bytes), applies a
commit whole or not at all as the Hub does, and can be told to fail: ``fail_commit`` answers the
commit with a 422, ``tokens`` decides who a token is and whether it may write.
"""

from __future__ import annotations

import base64
import json
import threading
import uuid
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import unquote, urlparse

import pytest

TOKEN, READ_TOKEN = "hf_alice_write", "hf_alice_read"


@pytest.fixture
def hub(monkeypatch, tmp_path):
    """The stand-in Hub, with alice (a write token, set as HF_TOKEN, and a read token) and her orgs:
    'foxes' (she may write) and 'owls' (she may read)."""
    import huggingface_hub.constants as constants

    with HubStandIn() as standin:
        standin.add_user(TOKEN, "alice", orgs={"foxes": "write", "owls": "read"})
        standin.add_user(READ_TOKEN, "alice", role="read")
        monkeypatch.setenv("HF_ENDPOINT", standin.endpoint)
        monkeypatch.setattr(constants, "ENDPOINT", standin.endpoint)
        monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)  # the suite runs offline; this Hub is local
        monkeypatch.setattr(constants, "HF_HUB_DISABLE_XET", True)  # classic LFS: the stand-in has no Xet store
        monkeypatch.setattr(constants, "HF_TOKEN_PATH", str(tmp_path / "no-saved-token"))
        monkeypatch.setenv("HF_TOKEN", TOKEN)
        yield standin


class HubStandIn:
    def __init__(self):
        self.tokens: dict[str, dict] = {}  # token -> whoami-v2's answer
        self.repos: dict[str, dict[str, bytes]] = {}  # repo id -> committed files
        self.private: dict[str, bool] = {}
        self.lfs: dict[str, bytes] = {}  # oid -> uploaded content
        self.calls: list[str] = []  # "METHOD path" of every request, in order
        self.fail_commit = False
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), self._handler())
        self.endpoint = f"http://127.0.0.1:{self._server.server_address[1]}"
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)

    def add_user(self, token: str, name: str, *, role: str = "write", orgs: dict[str, str] | None = None) -> None:
        self.tokens[token] = {"type": "user", "name": name, "auth": {"accessToken": {"role": role}},
                              "orgs": [{"name": org, "roleInOrg": r} for org, r in (orgs or {}).items()]}

    def __enter__(self):
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._server.shutdown()
        self._server.server_close()

    # ------------------------------------------------------------------ the API
    def _handler(self):
        hub = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):  # quiet
                pass

            def _body(self) -> bytes:
                return self.rfile.read(int(self.headers.get("Content-Length") or 0))

            def _send(self, status: int, payload=None, *, error: str | None = None):
                data = json.dumps(payload if payload is not None else ({"error": error} if error else {})).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                if error:
                    self.send_header("X-Error-Message", error)
                self.end_headers()
                self.wfile.write(data)

            def _user(self) -> dict | None:
                auth = self.headers.get("Authorization") or ""
                return hub.tokens.get(auth.removeprefix("Bearer ").strip())

            def _may_write(self, repo: str) -> bool:
                user = self._user()
                if user is None or user["auth"]["accessToken"]["role"] == "read":
                    return False
                namespace = repo.split("/")[0]
                return namespace == user["name"] or any(o["name"] == namespace and o["roleInOrg"] != "read"
                                                        for o in user["orgs"])

            def do_GET(self):
                hub.calls.append(f"GET {urlparse(self.path).path}")
                if urlparse(self.path).path == "/api/whoami-v2":
                    user = self._user()
                    return self._send(200, user) if user else self._send(401, error="Invalid credentials")
                self._send(404, error="not in the stand-in")

            def do_DELETE(self):
                hub.calls.append(f"DELETE {urlparse(self.path).path}")
                body = json.loads(self._body() or b"{}")
                repo = f"{body.get('organization')}/{body.get('name')}"
                if not self._may_write(repo):
                    return self._send(403, error="You don't have the rights to delete this repository")
                hub.repos.pop(repo, None)
                self._send(200, {})

            def do_PUT(self):  # an LFS object's content, at the href the batch answer gave
                path = urlparse(self.path).path
                hub.calls.append(f"PUT {path}")
                hub.lfs[path.rsplit("/", 1)[1]] = self._body()
                self._send(200, {})

            def do_POST(self):
                path = unquote(urlparse(self.path).path)
                hub.calls.append(f"POST {path}")
                body = self._body()
                if path == "/api/repos/create":
                    return self._create(json.loads(body))
                if path == "/api/validate-yaml":
                    return self._send(200, {"errors": [], "warnings": []})
                if path.endswith(".git/info/lfs/objects/batch"):
                    return self._batch(path.removeprefix("/").removesuffix(".git/info/lfs/objects/batch"),
                                       json.loads(body))
                if path.startswith("/api/models/") and "/preupload/" in path:
                    return self._preupload(path.removeprefix("/api/models/").split("/preupload/")[0],
                                           json.loads(body))
                if path.startswith("/api/models/") and "/commit/" in path:
                    return self._commit(path.removeprefix("/api/models/").split("/commit/")[0], body)
                self._send(404, error="not in the stand-in")

            def _create(self, body: dict):
                repo = f"{body.get('organization')}/{body['name']}"
                if not self._may_write(repo):
                    return self._send(403, error="You don't have the rights to create a model under this namespace")
                if repo in hub.repos:
                    return self._send(409, {"url": f"{hub.endpoint}/{repo}"}, error="You already created this model repo")
                hub.repos[repo] = {}
                hub.private[repo] = body.get("visibility") == "private"
                self._send(200, {"url": f"{hub.endpoint}/{repo}", "name": repo})

            def _preupload(self, repo: str, body: dict):
                if repo not in hub.repos:
                    return self._send(404, error="Repository not found")
                files = [{"path": f["path"], "shouldIgnore": False,
                          "uploadMode": "lfs" if f["path"].endswith((".safetensors", ".gguf", ".png")) else "regular"}
                         for f in body["files"]]
                self._send(200, {"files": files})

            def _batch(self, repo: str, body: dict):
                if not self._may_write(repo):
                    return self._send(403, error="Authorization error.")
                objects = [{"oid": o["oid"], "size": o["size"],
                            "actions": {"upload": {"href": f"{hub.endpoint}/lfs-upload/{o['oid']}"}}}
                           for o in body["objects"]]
                self._send(200, {"transfer": "basic", "objects": objects})

            def _commit(self, repo: str, body: bytes):
                if not self._may_write(repo):
                    return self._send(403, error="Authorization error.")
                if hub.fail_commit:
                    return self._send(422, error="The commit was refused (stand-in told to fail)")
                files: dict[str, bytes] = {}
                for line in body.splitlines():
                    item = json.loads(line)
                    value = item["value"]
                    if item["key"] == "file":
                        files[value["path"]] = base64.b64decode(value["content"])
                    elif item["key"] == "lfsFile":
                        if value["oid"] not in hub.lfs:
                            return self._send(422, error=f"LFS object {value['oid']} was never uploaded")
                        files[value["path"]] = hub.lfs[value["oid"]]
                hub.repos[repo].update(files)  # all of the commit, or (above) none of it
                oid = uuid.uuid4().hex + uuid.uuid4().hex[:8]
                self._send(200, {"commitUrl": f"{hub.endpoint}/{repo}/commit/{oid}", "commitOid": oid,
                                 "pullRequestUrl": None})

        return Handler
