"""Git servers on loopback for tests: `git http-backend` behind http(s) with Basic auth (what a git host's
smart HTTP endpoint is to the loader) and `git daemon` (git://). Used by the model loader's tests and by the
job image's tests, whose git fetches from them inside the image."""

from __future__ import annotations

import os
import socket
import ssl
import subprocess
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path


class SmartHttp(BaseHTTPRequestHandler):
    """`git http-backend` for the repositories under `root`, answering only requests whose Authorization
    header is one of `accepted` (401 with a Basic challenge otherwise)."""

    root: Path
    accepted: tuple[str, ...]
    seen: list[str | None]
    delay: list[float]  # seconds to wait before each answer (a slow server keeps git's children visible)

    def do_GET(self) -> None:
        self._serve()

    def do_POST(self) -> None:
        self._serve()

    def log_message(self, format: str, *args: object) -> None:
        pass

    def _serve(self) -> None:
        auth = self.headers.get("Authorization")
        self.seen.append(auth)
        body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
        time.sleep(self.delay[0])
        if auth not in self.accepted:
            self.send_response(401)
            self.send_header("WWW-Authenticate", 'Basic realm="git"')
            self.send_header("Content-Length", "0")
            self.end_headers()
            return
        path, _, query = self.path.partition("?")
        env = {"PATH": os.environ["PATH"], "GIT_PROJECT_ROOT": str(self.root), "GIT_HTTP_EXPORT_ALL": "1",
               "PATH_INFO": path, "QUERY_STRING": query, "REQUEST_METHOD": self.command,
               "CONTENT_TYPE": self.headers.get("Content-Type", ""), "CONTENT_LENGTH": str(len(body)),
               "HTTP_CONTENT_ENCODING": self.headers.get("Content-Encoding", ""),
               "GIT_PROTOCOL": self.headers.get("Git-Protocol", ""), "GIT_CONFIG_NOSYSTEM": "1"}
        out = subprocess.run(["git", "http-backend"], input=body, env=env, capture_output=True, check=True).stdout
        head, _, payload = out.partition(b"\r\n\r\n")
        status, headers = 200, []
        for line in head.decode().split("\r\n"):
            key, _, value = line.partition(":")
            if key.lower() == "status":
                status = int(value.split()[0])
            elif key:
                headers.append((key, value.strip()))
        self.send_response(status)
        for key, value in headers:
            self.send_header(key, value)
        self.send_header("Content-Length", str(len(payload)))
        self.end_headers()
        self.wfile.write(payload)


@dataclass
class Served:
    url: str  # the repository's URL, without credentials
    cert: Path | None  # the CA file for https
    seen: list[str | None]  # the Authorization header of each request
    delay: list[float]

    def with_password(self, user: str, password: str) -> str:
        scheme, _, rest = self.url.partition("://")
        return f"{scheme}://{user}:{password}@{rest}"


@contextmanager
def smart_http(repository: Path, accepted: tuple[str, ...], tls_dir: Path | None) -> Iterator[Served]:
    """The repository over http (or https with a fresh self-signed certificate for 127.0.0.1 in tls_dir,
    Served.cert) on a free loopback port, accepting the given Authorization headers."""
    seen: list[str | None] = []
    delay = [0.0]
    handler = type("Handler", (SmartHttp,), {"root": repository.parent, "seen": seen, "delay": delay,
                                             "accepted": accepted})
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    cert = None
    if tls_dir is not None:
        cert, key = tls_dir / "cert.pem", tls_dir / "key.pem"
        subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1", "-subj",
                        "/CN=127.0.0.1", "-addext", "subjectAltName=IP:127.0.0.1", "-keyout", str(key),
                        "-out", str(cert)], check=True, capture_output=True)
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        context.load_cert_chain(cert, key)
        server.socket = context.wrap_socket(server.socket, server_side=True)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    scheme = "https" if tls_dir is not None else "http"
    try:
        yield Served(f"{scheme}://127.0.0.1:{server.server_address[1]}/{repository.name}", cert, seen, delay)
    finally:
        server.shutdown()
        server.server_close()


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@contextmanager
def git_daemon(repository: Path, timeout: float = 10) -> Iterator[str]:
    """`git daemon` serving the repository read-only on a free loopback port; yields its git:// URL."""
    port = free_port()
    proc = subprocess.Popen(["git", "daemon", "--reuseaddr", "--export-all", f"--base-path={repository.parent}",
                             "--listen=127.0.0.1", f"--port={port}", str(repository.parent)],
                            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        deadline = time.monotonic() + timeout
        while True:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                break
            except OSError:
                if proc.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError(f"git daemon did not listen on {port}: "
                                       f"{proc.stderr.read().decode() if proc.stderr else ''}") from None
                time.sleep(0.05)
        yield f"git://127.0.0.1:{port}/{repository.name}"
    finally:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        if proc.stderr:
            proc.stderr.close()
