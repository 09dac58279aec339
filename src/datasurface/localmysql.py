"""A throwaway MariaDB server on a private Unix socket, for the test suite, the benchmark and the demo.

It uses the machine's MariaDB binaries (Debian's `mariadb-server`) and never the machine's own instance:
a private datadir made by `mariadb-install-db`, its own socket, `--no-defaults` (no /etc/mysql config
read) and `--skip-networking` (no TCP port at all). MariaDB refuses to run as root, so as root the
server runs as the `mysql` user (through `runuser`).
"""

from __future__ import annotations

import os
import pwd
import secrets
import shutil
import subprocess
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from datasurface.errors import DataSurfaceError

SERVER_USER = "mysql"
SUPERUSER = "root"
START_TIMEOUT = 60.0


def find_server() -> Path | None:
    """The MariaDB (or MySQL) server binary, or None when none is installed."""
    for name in ("mariadbd", "mysqld"):
        for folder in ("/usr/sbin", "/usr/bin", "/usr/local/bin"):
            path = Path(folder, name)
            if path.exists():
                return path
    found = shutil.which("mariadbd")
    return Path(found) if found else None


def _is_root() -> bool:
    return os.geteuid() == 0


@dataclass
class LocalMariaDB:
    """Start with `start()`, stop with `stop()` (or use as a context manager)."""

    server: Path
    base_dir: Path | None = None
    password: str = field(default_factory=lambda: secrets.token_urlsafe(18), repr=False)
    buffer_pool: str = "256M"
    _root: Path | None = None
    _owns_root: bool = False
    _proc: subprocess.Popen[bytes] | None = None

    @property
    def socket(self) -> str:
        """The server's socket FILE (a model's `host` for it)."""
        assert self._root is not None
        return str(self._root / "sock" / "mysqld.sock")

    @property
    def data_dir(self) -> Path:
        assert self._root is not None
        return self._root / "data"

    def _as_server_user(self, args: list[str]) -> list[str]:
        return ["runuser", "-u", SERVER_USER, "--", *args] if _is_root() else args

    def start(self) -> LocalMariaDB:
        if self.base_dir is not None:
            self.base_dir.mkdir(parents=True, exist_ok=True)
            self._root = self.base_dir
        else:
            self._root = Path(tempfile.mkdtemp(prefix="dsmy-"))
            self._owns_root = True
        os.chmod(self._root, 0o755)
        for sub in ("sock", "tmp"):
            (self._root / sub).mkdir(exist_ok=True)
        if _is_root():
            user = pwd.getpwnam(SERVER_USER)
            for path in (self._root, self._root / "sock", self._root / "tmp"):
                os.chown(path, user.pw_uid, user.pw_gid)
        fresh = not (self.data_dir / "mysql").exists()
        if fresh:
            self._install_db()
        self._start_server()
        if fresh:
            self._secure()
        return self

    def _install_db(self) -> None:
        install = self.server.parent.parent / "bin" / "mariadb-install-db"
        tool = str(install) if install.exists() else (shutil.which("mariadb-install-db") or "mariadb-install-db")
        proc = subprocess.run(
            self._as_server_user([tool, "--no-defaults", f"--datadir={self.data_dir}",
                                  "--auth-root-authentication-method=normal", "--skip-test-db",
                                  "--skip-name-resolve"]),
            capture_output=True, text=True)
        if proc.returncode != 0:
            raise DataSurfaceError(f"mariadb-install-db failed: {(proc.stderr or proc.stdout).strip()[-800:]}")

    def _server_args(self) -> list[str]:
        assert self._root is not None
        return [str(self.server), "--no-defaults", f"--datadir={self.data_dir}", f"--socket={self.socket}",
                f"--pid-file={self._root / 'mysqld.pid'}", f"--log-error={self._root / 'server.log'}",
                f"--tmpdir={self._root / 'tmp'}", "--skip-networking", "--skip-name-resolve",
                "--skip-log-bin", f"--innodb-buffer-pool-size={self.buffer_pool}",
                "--innodb-flush-log-at-trx-commit=0", "--innodb-doublewrite=0", "--innodb-fast-shutdown=2",
                "--max-connections=200",
                "--character-set-server=utf8mb4", "--collation-server=utf8mb4_unicode_ci",
                "--default-time-zone=+00:00", "--explicit-defaults-for-timestamp=1"]

    def _start_server(self) -> None:
        self._proc = subprocess.Popen(self._as_server_user(self._server_args()), stdout=subprocess.DEVNULL,
                                      stderr=subprocess.DEVNULL, start_new_session=True)
        deadline = time.monotonic() + START_TIMEOUT
        while time.monotonic() < deadline:
            if self._proc.poll() is not None:
                raise DataSurfaceError(f"MariaDB exited at start: {self._log_tail()}")
            if Path(self.socket).exists():
                try:
                    self.admin_connect(initial=True).close()
                    return
                except Exception:  # not accepting yet (or already secured: try the password)
                    try:
                        self.admin_connect().close()
                        return
                    except Exception:
                        pass
            time.sleep(0.1)
        raise DataSurfaceError(f"MariaDB did not start within {START_TIMEOUT:.0f}s: {self._log_tail()}")

    def _log_tail(self) -> str:
        assert self._root is not None
        try:
            return (self._root / "server.log").read_text(errors="replace").strip()[-800:]
        except OSError:
            return "(no log)"

    def _secure(self) -> None:
        conn = self.admin_connect(initial=True)
        with conn.cursor() as cur:
            cur.execute("ALTER USER 'root'@'localhost' IDENTIFIED BY %s", (self.password,))
        conn.close()

    def stop(self, remove: bool | None = None) -> None:
        remove = self._root is not None and (remove if remove is not None else self._owns_root)
        if self._proc is not None and self._proc.poll() is None:
            # the server runs as another user: signal it through its pid file, never by name; one whose
            # files are removed next has nothing to flush, and is killed at once
            pid_file = self._root / "mysqld.pid" if self._root else None
            try:
                pid = int(pid_file.read_text().strip()) if pid_file and pid_file.exists() else self._proc.pid
                os.kill(pid, 9 if remove else 15)
            except (OSError, ValueError):
                pass
            try:
                self._proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                os.killpg(self._proc.pid, 9)
                self._proc.wait()
        self._proc = None
        if remove and self._root is not None:
            shutil.rmtree(self._root, ignore_errors=True)

    def __enter__(self) -> LocalMariaDB:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # --- administration through the superuser -------------------------------------------------

    def admin_connect(self, database: str | None = None, *, initial: bool = False) -> Any:
        import pymysql

        return pymysql.connect(unix_socket=self.socket, user=SUPERUSER, password="" if initial else self.password,
                               database=database, autocommit=True, charset="utf8mb4", connect_timeout=5)

    def create_database(self, name: str, user: str, password: str) -> None:
        """A database and a user owning it (every privilege on it, nothing else)."""
        conn = self.admin_connect()
        with conn.cursor() as cur:
            cur.execute(f"CREATE DATABASE `{_ident(name)}` CHARACTER SET utf8mb4")
            cur.execute(f"CREATE USER IF NOT EXISTS '{_ident(user)}'@'localhost' IDENTIFIED BY %s", (password,))
            cur.execute(f"GRANT ALL ON `{_ident(name)}`.* TO '{_ident(user)}'@'localhost'")
        conn.close()

    def drop_database(self, name: str, user: str | None = None) -> None:
        conn = self.admin_connect()
        with conn.cursor() as cur:
            cur.execute(f"DROP DATABASE IF EXISTS `{_ident(name)}`")
            if user:
                cur.execute(f"DROP USER IF EXISTS '{_ident(user)}'@'localhost'")
        conn.close()


def _ident(name: str) -> str:
    if not name.replace("_", "").isalnum():
        raise ValueError(f"not a plain name: {name!r}")
    return name
