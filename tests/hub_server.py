"""A stand-in for the Hugging Face hub's file API on 127.0.0.1, so hub names are tested offline.

`huggingface_hub.hf_hub_download` asks `HEAD` then `GET {HF_ENDPOINT}/{repo}/resolve/{revision}/{file}`
and needs the commit (`X-Repo-Commit`), an ETag and the size; a missing repository or file
is a 404 with the hub's `X-Error-Code`. That is all this server speaks.
"""

from __future__ import annotations

import hashlib
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

COMMIT = "0123456789abcdef0123456789abcdef01234567"


class HubServer:
    """Serves each repository name from a local folder; records the requests it saw."""

    def __init__(self, repos: dict[str, Path]) -> None:
        self.repos = repos
        self.requests: list[str] = []
        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), self._handler())
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()

    def _handler(self) -> type[BaseHTTPRequestHandler]:
        hub = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args: object) -> None:
                pass

            def do_HEAD(self) -> None:
                self.answer(send_body=False)

            def do_GET(self) -> None:
                self.answer(send_body=True)

            def answer(self, send_body: bool) -> None:
                hub.requests.append(f"{self.command} {self.path}")
                parts = self.path.split("?")[0].strip("/").split("/")
                if "resolve" not in parts:
                    return self.refuse("EntryNotFound")
                at = parts.index("resolve")
                repo, filename = "/".join(parts[:at]), "/".join(parts[at + 2 :])
                if repo not in hub.repos:
                    return self.refuse("RepoNotFound")
                path = hub.repos[repo] / filename
                if not path.is_file():
                    return self.refuse("EntryNotFound")
                data = path.read_bytes()
                self.send_response(200)
                self.send_header("X-Repo-Commit", COMMIT)
                self.send_header("ETag", f'"{hashlib.sha256(data).hexdigest()}"')
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                if send_body:
                    self.wfile.write(data)

            def refuse(self, code: str) -> None:
                self.send_response(404)
                self.send_header("X-Error-Code", code)
                self.send_header("X-Error-Message", code)
                self.send_header("Content-Length", "0")
                self.end_headers()

        return Handler
