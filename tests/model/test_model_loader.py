"""load_model: a local folder, or a real git repository (a bare one made here, served by file:// and by
a local HTTPS smart server) at a branch, tag or commit; the clone folder always goes away and the token
never lands on disk or in a message."""

from __future__ import annotations

import base64
import os
import shutil
import socket
import subprocess
import sys
import threading
import time
import urllib.parse
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from datasurface.errors import ModelError
from datasurface.model import load_model
from datasurface.model.loader import is_git_url, redact_url
from tests.support.git_servers import Served, smart_http

TOKEN = "sentinel-token-3f9a7c1e"  # looked for everywhere it must not be
TOKEN_ENV = "DATASURFACE_GIT_TOKEN"
USER, PASSWORD = "alice", "pw/s3nt1nel@9:c2e"  # a URL password, percent-encoded in the URL
ENCODED = urllib.parse.quote(PASSWORD, safe="")
BASIC_PASSWORD = base64.b64encode(f"{USER}:{PASSWORD}".encode()).decode()
BASIC_TOKEN = base64.b64encode(f"x-access-token:{TOKEN}".encode()).decode()


def model_text(store: str) -> str:
    return f"""\
apiVersion: datasurface/v1
kind: Model
stores:
  - name: {store}
    source: {{host: pg, database: db, credential: source}}
    datasets:
      - name: customers
        primaryKey: [id]
        columns:
          - {{name: id, type: "varchar(20)"}}
"""


def git(*args: str, cwd: Path | None = None) -> str:
    env = {**os.environ, "GIT_CONFIG_NOSYSTEM": "1", "GIT_CONFIG_GLOBAL": "/dev/null",
           "GIT_AUTHOR_NAME": "t", "GIT_AUTHOR_EMAIL": "t@example.com",
           "GIT_COMMITTER_NAME": "t", "GIT_COMMITTER_EMAIL": "t@example.com"}
    env.pop(TOKEN_ENV, None)
    done = subprocess.run(["git", *args], cwd=cwd, env=env, check=True, capture_output=True, text=True)
    return done.stdout.strip()


def commit_model(work: Path, store: str, message: str) -> str:
    (work / "datasurface.yaml").write_text(model_text(store))
    git("add", "-A", cwd=work)
    git("commit", "-q", "-m", message, cwd=work)
    return git("rev-parse", "HEAD", cwd=work)


@dataclass
class Repo:
    bare: Path
    url: str
    v1: str  # main's first commit; tagged v1 (annotated) and light (lightweight)
    v2: str  # main's head
    feature: str  # head of branch feature, only on that branch


@pytest.fixture(scope="module")
def repo(tmp_path_factory: pytest.TempPathFactory) -> Repo:
    base = tmp_path_factory.mktemp("git")
    bare, work = base / "model.git", base / "work"
    git("init", "-q", "--bare", "-b", "main", str(bare))
    git("init", "-q", "-b", "main", str(work))
    (work / "sub").mkdir()
    (work / "sub" / "other.yaml").write_text(model_text("Sub"))
    v1 = commit_model(work, "V1", "first")
    git("tag", "-a", "v1", "-m", "version 1", cwd=work)
    git("tag", "light", cwd=work)
    v2 = commit_model(work, "V2", "second")
    git("checkout", "-q", "-b", "feature", v1, cwd=work)
    feature = commit_model(work, "Feature", "feature")
    git("push", "-q", str(bare), "main", "feature", "--tags", cwd=work)
    return Repo(bare=bare, url=bare.as_uri(), v1=v1, v2=v2, feature=feature)


@pytest.fixture(autouse=True)
def private_tmpdir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """Every test runs with its own TMPDIR, which must be empty again afterwards: no clone is left."""
    tmp = tmp_path / "tmpdir"
    tmp.mkdir()
    monkeypatch.setenv("TMPDIR", str(tmp))
    monkeypatch.delenv(TOKEN_ENV, raising=False)
    yield tmp
    assert list(tmp.iterdir()) == [], "a temporary clone folder was left behind"


def store_of(model: object) -> str:
    return model.stores[0].name  # type: ignore[attr-defined, no-any-return]


def model_error(*args: object, **kwargs: object) -> str:
    with pytest.raises(ModelError) as info:
        load_model(*args, **kwargs)  # type: ignore[arg-type]
    message = str(info.value)
    assert "\n" not in message and "Traceback" not in message
    return message


# --- git: refs ------------------------------------------------------------------------------------------


def test_default_branch(repo: Repo, private_tmpdir: Path) -> None:
    seen: list[Path] = []
    model = load_model(repo.url, on_clone=seen.append)
    assert store_of(model) == "V2"
    assert model.origin == f"{repo.url}@main:datasurface.yaml"
    assert seen and seen[0].parent == private_tmpdir  # cloned under TMPDIR ...
    assert not seen[0].exists()  # ... and removed


@pytest.mark.parametrize(("ref", "store"), [
    ("main", "V2"), ("feature", "Feature"), ("refs/heads/feature", "Feature"),
    ("v1", "V1"), ("light", "V1"), ("refs/tags/v1", "V1"),
])
def test_branch_and_tag(repo: Repo, ref: str, store: str) -> None:
    model = load_model(repo.url, ref)
    assert store_of(model) == store
    assert model.origin == f"{repo.url}@{ref}:datasurface.yaml"


@pytest.mark.parametrize("which", ["v1", "v2", "feature"])
@pytest.mark.parametrize("length", [40, 12, 7])
def test_commit_full_and_abbreviated(repo: Repo, which: str, length: int) -> None:
    sha = getattr(repo, which)[:length]
    expected = {"v1": "V1", "v2": "V2", "feature": "Feature"}[which]
    assert store_of(load_model(repo.url, sha)) == expected
    assert store_of(load_model(repo.url, sha.upper())) == expected


def test_branch_fetch_is_shallow(repo: Repo) -> None:
    def shallow(clone: Path) -> None:
        assert (clone / ".git" / "shallow").is_file()

    load_model(repo.url, "main", on_clone=shallow)


def test_default_branch_follows_the_remote_head(repo: Repo, tmp_path: Path) -> None:
    other = tmp_path / "other.git"
    git("clone", "-q", "--bare", str(repo.bare), str(other))
    git("symbolic-ref", "HEAD", "refs/heads/feature", cwd=other)
    model = load_model(other.as_uri())
    assert store_of(model) == "Feature" and model.origin.endswith("@feature:datasurface.yaml")


def test_file_in_a_sub_folder(repo: Repo) -> None:
    model = load_model(repo.url, "v1", path="sub/other.yaml")
    assert store_of(model) == "Sub" and model.origin == f"{repo.url}@v1:sub/other.yaml"
    assert store_of(load_model(repo.url, "v1", path="./sub/../sub/other.yaml")) == "Sub"


# --- git: failures ------------------------------------------------------------------------------------


def test_url_that_does_not_exist(tmp_path: Path) -> None:
    url = (tmp_path / "missing.git").as_uri()
    message = model_error(url, "main")
    assert message.startswith(f"cannot read model repository {url} (ref main): ")
    assert "does not appear to be a git repository" in message


@pytest.mark.parametrize("ref", ["nope", "v9", "deadbeef", "0" * 40, "feature2"])
def test_ref_that_does_not_exist(repo: Repo, ref: str) -> None:
    message = model_error(repo.url, ref)
    assert message.startswith(f"model ref {ref!r} not found in {repo.url}: no such branch, tag or commit")


@pytest.mark.parametrize("ref", ["", " ", "-x", "--upload-pack=touch /tmp/x", "a b"])
def test_ref_that_is_not_a_name(repo: Repo, ref: str) -> None:
    assert "is not a branch, tag or commit name" in model_error(repo.url, ref)


def test_missing_file_in_repository(repo: Repo) -> None:
    message = model_error(repo.url, "v1", path="models/prod.yaml")
    assert message == (f"{repo.url}@v1:models/prod.yaml: model file 'models/prod.yaml' not found in "
                       f"{repo.url} (ref v1)")
    assert "is a directory" in model_error(repo.url, "v1", path="sub")


def test_invalid_model_in_repository_names_url_ref_and_path(repo: Repo, tmp_path: Path) -> None:
    work = tmp_path / "w"
    git("clone", "-q", str(repo.bare), str(work))
    (work / "datasurface.yaml").write_text(model_text("V3").replace('"varchar(20)"', "varchar2"))
    git("commit", "-q", "-am", "broken", cwd=work)
    git("push", "-q", "origin", "HEAD:refs/heads/broken", cwd=work)
    message = model_error(repo.url, "broken")
    assert message.startswith(f"{repo.url}@broken:datasurface.yaml: stores[0].datasets[0].columns[0].type: "
                              "unknown type 'varchar2'")


def test_empty_repository_has_no_default_branch(tmp_path: Path) -> None:
    empty = tmp_path / "empty.git"
    git("init", "-q", "--bare", str(empty))
    assert "has no default branch" in model_error(empty.as_uri())


def test_symlinked_model_file_is_refused(tmp_path: Path) -> None:
    bare, work = tmp_path / "l.git", tmp_path / "lw"
    git("init", "-q", "--bare", "-b", "main", str(bare))
    git("init", "-q", "-b", "main", str(work))
    (work / "datasurface.yaml").symlink_to("/etc/passwd")
    git("add", "-A", cwd=work)
    git("commit", "-q", "-m", "link", cwd=work)
    git("push", "-q", str(bare), "main", cwd=work)
    assert "is a symbolic link" in model_error(bare.as_uri())


@pytest.mark.parametrize("path", ["../datasurface.yaml", "/etc/passwd", "sub/../../x.yaml", ".", ""])
def test_model_path_may_not_leave_the_repository(repo: Repo, path: str) -> None:
    message = model_error(repo.url, None, path=path)
    assert "model path" in message


def test_unreachable_https_fails_fast_without_the_token(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(TOKEN_ENV, TOKEN)
    url = "https://127.0.0.1:1/x.git"
    started = time.monotonic()
    message = model_error(url, "main")
    assert time.monotonic() - started < 30
    assert message.startswith(f"cannot read model repository {url} (ref main): ")
    assert TOKEN not in message and base64.b64encode(f"x-access-token:{TOKEN}".encode()).decode() not in message


def test_a_server_that_never_answers_times_out(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DATASURFACE_GIT_TIMEOUT", "2")
    monkeypatch.setenv(TOKEN_ENV, TOKEN)
    with socket.socket() as silent:  # accepts connections (backlog) and never says a word
        silent.bind(("127.0.0.1", 0))
        silent.listen(8)
        url = f"https://127.0.0.1:{silent.getsockname()[1]}/x.git"
        started = time.monotonic()
        message = model_error(url)
    assert time.monotonic() - started < 20
    assert message == f"cannot read model repository {url}: fatal: no answer within 2 seconds " \
                      "(set DATASURFACE_GIT_TIMEOUT to wait longer)"


def test_password_in_url_is_redacted(monkeypatch: pytest.MonkeyPatch) -> None:
    url = "https://someone:pa55word@127.0.0.1:1/x.git"
    message = model_error(url)
    assert "pa55word" not in message
    assert "https://someone:***@127.0.0.1:1/x.git" in message


def test_ssh_fails_fast_without_prompting() -> None:
    started = time.monotonic()
    message = model_error("ssh://git@127.0.0.1:1/x.git", "main")
    assert time.monotonic() - started < 30
    assert message.startswith("cannot read model repository ssh://git@127.0.0.1:1/x.git (ref main): ")
    assert "Connection refused" in message  # ssh's own reason, not only git's generic one


# --- git: nothing on disk, nothing run -------------------------------------------------------------------


def _assert_clean_clone(clone: Path, *secrets: str) -> None:
    config = clone / ".git" / "config"
    assert config.is_file()
    for file in clone.rglob("*"):
        if file.is_file():
            data = file.read_bytes()
            for secret in secrets:
                assert secret.encode() not in data, f"{secret!r} found in {file}"
    assert [p.name for p in clone.iterdir()] == [".git"], "nothing is checked out"
    assert not (clone / ".git" / "hooks").exists()


def test_token_is_not_written_for_file_urls(repo: Repo, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(TOKEN_ENV, TOKEN)
    checked: list[Path] = []

    def inspect(clone: Path) -> None:
        _assert_clean_clone(clone, TOKEN)
        checked.append(clone)

    for ref in (None, "v1", repo.v1[:8]):
        load_model(repo.url, ref, on_clone=inspect)
    assert len(checked) == 3


def _serve(repo: Repo, tls_dir: Path | None) -> Iterator[Served]:
    """The test repository over http(s) on a free loopback port, accepting the token or alice's password."""
    with smart_http(repo.bare, (f"Basic {BASIC_TOKEN}", f"Basic {BASIC_PASSWORD}"), tls_dir) as served:
        yield served


@pytest.fixture(scope="module")
def served_https(repo: Repo, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Served]:
    if shutil.which("openssl") is None:
        pytest.skip("openssl is needed to make a certificate")
    yield from _serve(repo, tmp_path_factory.mktemp("tls"))


@pytest.fixture(scope="module")
def served_http(repo: Repo) -> Iterator[Served]:
    yield from _serve(repo, None)


@pytest.fixture
def https_repo(served_https: Served, monkeypatch: pytest.MonkeyPatch) -> tuple[str, Path, list[str | None]]:
    """(url, CA file, Authorization seen) of the HTTPS server; git trusts its CA."""
    assert served_https.cert is not None
    monkeypatch.setenv("GIT_SSL_CAINFO", str(served_https.cert))
    served_https.seen.clear()
    served_https.delay[0] = 0.0
    return served_https.url, served_https.cert, served_https.seen


def test_https_with_token(https_repo: tuple[str, Path, list[str | None]], repo: Repo,
                          monkeypatch: pytest.MonkeyPatch) -> None:
    url, cert, seen = https_repo
    monkeypatch.setenv("GIT_SSL_CAINFO", str(cert))
    monkeypatch.setenv(TOKEN_ENV, TOKEN)
    seen.clear()
    clones: list[Path] = []

    def inspect(clone: Path) -> None:
        _assert_clean_clone(clone, TOKEN, base64.b64encode(f"x-access-token:{TOKEN}".encode()).decode())
        clones.append(clone)

    assert store_of(load_model(url, on_clone=inspect)) == "V2"
    assert store_of(load_model(url, "v1", on_clone=inspect)) == "V1"
    assert store_of(load_model(url, repo.feature[:7], on_clone=inspect)) == "Feature"
    assert len(clones) == 3
    assert seen and all(a is not None and a.startswith("Basic ") for a in seen)  # sent on every request


@pytest.mark.parametrize("token", [None, "wrong-token"])
def test_https_without_the_right_token_fails_cleanly(https_repo: tuple[str, Path, list[str | None]],
                                                     monkeypatch: pytest.MonkeyPatch, token: str | None) -> None:
    url, cert, _ = https_repo
    monkeypatch.setenv("GIT_SSL_CAINFO", str(cert))
    if token:
        monkeypatch.setenv(TOKEN_ENV, token)
    started = time.monotonic()
    message = model_error(url, "main")
    assert time.monotonic() - started < 30
    assert message.startswith(f"cannot read model repository {url} (ref main): ")
    assert "terminal prompts disabled" in message or "Authentication failed" in message
    assert token is None or token not in message


def test_token_is_never_sent_over_plain_http(monkeypatch: pytest.MonkeyPatch) -> None:
    from datasurface.model.loader import _git_environment

    monkeypatch.setenv(TOKEN_ENV, TOKEN)
    for url in ("http://example.com/x.git", "file:///tmp/x.git", "ssh://git@example.com/x.git"):
        assert all(TOKEN not in v and "Basic" not in v for v in _git_environment(url).values())
    https = _git_environment("https://example.com:8443/x.git")
    keys = [k for k, v in https.items() if v.startswith("Authorization: Basic ")]
    assert len(keys) == 1
    assert https[keys[0].replace("VALUE", "KEY")] == "http.https://example.com:8443/.extraHeader"
    header = base64.b64decode(https[keys[0]].removeprefix("Authorization: Basic ")).decode()
    assert header == f"x-access-token:{TOKEN}"
    named = _git_environment("https://oauth2@gitlab.example.com/x.git")
    [value] = [v for v in named.values() if v.startswith("Authorization: Basic ")]
    assert base64.b64decode(value.removeprefix("Authorization: Basic ")).decode() == f"oauth2:{TOKEN}"
    # a URL with its own password keeps it; the token is not added
    assert all(TOKEN not in v for v in _git_environment("https://u:p@example.com/x.git").values())


@pytest.mark.parametrize("url", ["https://[::1/x.git", "https://host:99999/x.git", "https://h:port/x"])
def test_unparseable_urls_are_a_model_error(url: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(TOKEN_ENV, TOKEN)
    message = model_error(url)
    assert message.startswith("cannot read model repository") and TOKEN not in message


# --- git: a password in the URL ----------------------------------------------------------------------


def _served(request: pytest.FixtureRequest, scheme: str, monkeypatch: pytest.MonkeyPatch) -> Served:
    served: Served = request.getfixturevalue(f"served_{scheme}")
    if served.cert is not None:
        monkeypatch.setenv("GIT_SSL_CAINFO", str(served.cert))
    served.seen.clear()
    served.delay[0] = 0.0
    return served


@pytest.mark.parametrize("scheme", ["https", "http"])
def test_a_url_password_reaches_git_only_as_a_header(scheme: str, request: pytest.FixtureRequest,
                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    served = _served(request, scheme, monkeypatch)
    monkeypatch.setenv(TOKEN_ENV, TOKEN)  # the URL's own password wins: the token is not sent
    url = served.with_password(USER, ENCODED)
    secrets = (PASSWORD, ENCODED, BASIC_PASSWORD, TOKEN, BASIC_TOKEN)
    clones: list[Path] = []

    def inspect(clone: Path) -> None:
        _assert_clean_clone(clone, *secrets)  # also FETCH_HEAD, which records the URL fetched
        clones.append(clone)

    model = load_model(url, "v1", on_clone=inspect)
    assert store_of(model) == "V1" and clones
    assert model.origin == f"{scheme}://{USER}:***@{served.url.partition('://')[2]}@v1:datasurface.yaml"
    assert served.seen and set(served.seen) == {f"Basic {BASIC_PASSWORD}"}


def test_a_wrong_url_password_fails_redacted(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> None:
    served = _served(request, "https", monkeypatch)
    message = model_error(served.with_password(USER, "wrong" + ENCODED), "main")
    assert message.startswith(f"cannot read model repository https://{USER}:***@{served.url.partition('://')[2]} "
                              "(ref main): ")
    assert "Authentication failed" in message or "terminal prompts disabled" in message
    assert "wrong" not in message and ENCODED not in message and PASSWORD not in message


@pytest.mark.parametrize(("model", "shown"), [
    ("ssh://git:hunter2@127.0.0.1/x.git", "'ssh://git:***@127.0.0.1/x.git': an ssh:// URL cannot carry a password"),
    ("git://u:hunter2@127.0.0.1/x.git", "'git://u:***@127.0.0.1/x.git': a git:// URL cannot carry a password"),
    ("file://u:hunter2@localhost/srv/x.git", "'file://u:***@localhost/srv/x.git': a file:// URL cannot carry"),
    ("git:hunter2@github.com:org/x.git", "'git:***@github.com:org/x.git': an ssh address (user@host:path) cannot"),
])
def test_a_password_where_git_takes_none_is_refused(model: str, shown: str) -> None:
    message = model_error(model)
    assert message.startswith(f"model URL {shown}"), message
    assert "hunter2" not in message and "https://user:password@host/" in message


def _watch_descendants(root: int, stop: threading.Event, found: dict[int, set[bytes]]) -> None:
    """Record the argv (/proc/<pid>/cmdline) of every process below `root` until `stop` is set."""
    while not stop.is_set():
        parents: dict[int, int] = {}
        for proc in Path("/proc").iterdir():
            if proc.name.isdigit():
                try:
                    parents[int(proc.name)] = int((proc / "stat").read_text().rsplit(")", 1)[1].split()[1])
                except (OSError, ValueError, IndexError):
                    continue
        for pid in parents:
            up = pid
            while up in parents and up != root and up > 1:
                up = parents[up]
            if up == root:
                try:
                    found.setdefault(pid, set()).add((Path("/proc") / str(pid) / "cmdline").read_bytes())
                except OSError:
                    continue
        time.sleep(0.005)


@pytest.mark.parametrize("via", ["--model", "DATASURFACE_MODEL"])
def test_the_url_password_is_in_no_argv_of_gits_processes(via: str, request: pytest.FixtureRequest,
                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    """The real job process, its git commands and git's own helpers (git-remote-https) watched in /proc
    while they run against a slow server: the password is in none of their argv, nor in the output."""
    served = _served(request, "https", monkeypatch)
    served.delay[0] = 0.3
    url = served.with_password(USER, ENCODED)
    env = {k: v for k, v in os.environ.items() if not k.startswith("DATASURFACE_")}  # TMPDIR: private_tmpdir
    args = [sys.executable, "-m", "datasurface.cli", "merge", "--model-ref", "v1", "--platform", "P", "--mode",
            "live", "--store", "Nope", "--merge-host", "127.0.0.1", "--merge-database", "d", "--merge-credential", "m"]
    if via == "--model":
        args += ["--model", url]  # the job's own argv then holds it (the user's choice): its children must not
    else:
        env["DATASURFACE_MODEL"] = url
    proc = subprocess.Popen(args, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    found: dict[int, set[bytes]] = {}
    stop = threading.Event()
    watcher = threading.Thread(target=_watch_descendants, args=(proc.pid, stop, found), daemon=True)
    watcher.start()
    try:
        out, err = proc.communicate(timeout=120)
    finally:
        stop.set()
        watcher.join()
    assert proc.returncode == 1, err
    assert err == "datasurface-job: error: unknown store 'Nope' (the model has: V1)\n"  # the model was read
    # the job's own argv (with --model it holds the password: the user's choice) is also what a child shows
    # between fork and exec: not a git command's
    own = b"\0".join(a.encode() for a in args) + b"\0"
    argvs = [argv for seen in found.values() for argv in seen if via != "--model" or argv != own]
    git_argvs = [a for a in argvs if b"git" in a.split(b"\0")[0]]
    assert any(b"ls-remote" in a for a in git_argvs), argvs  # the watcher saw git ...
    assert any(b"remote-https" in a for a in git_argvs), argvs  # ... and its https helper
    assert any(served.url.encode() in a for a in git_argvs)  # given the URL without user and password
    for argv in argvs:
        for secret in (PASSWORD, ENCODED, BASIC_PASSWORD):
            assert secret.encode() not in argv, argv
    assert PASSWORD not in out + err and ENCODED not in out + err
    assert served.seen and set(served.seen) == {f"Basic {BASIC_PASSWORD}"}


def test_the_cli_error_for_a_wrong_url_password_is_redacted(request: pytest.FixtureRequest,
                                                            monkeypatch: pytest.MonkeyPatch) -> None:
    served = _served(request, "https", monkeypatch)
    env = {k: v for k, v in os.environ.items() if not k.startswith("DATASURFACE_")}
    env["DATASURFACE_MODEL"] = served.with_password(USER, "wrong" + ENCODED)
    done = subprocess.run([sys.executable, "-m", "datasurface.cli", "check", "--merge-host", "127.0.0.1",
                           "--merge-database", "d", "--merge-credential", "m"], env=env, capture_output=True,
                          text=True, timeout=120)
    assert done.returncode == 1
    assert f"https://{USER}:***@{served.url.partition('://')[2]}" in done.stdout + done.stderr
    assert "wrong" not in done.stdout + done.stderr and ENCODED not in done.stdout + done.stderr


# --- local folders ----------------------------------------------------------------------------------------


def test_local_folder(tmp_path: Path) -> None:
    (tmp_path / "datasurface.yaml").write_text(model_text("Local"))
    model = load_model(str(tmp_path))
    assert store_of(model) == "Local" and model.origin == str(tmp_path / "datasurface.yaml")


def test_local_folder_other_path(tmp_path: Path) -> None:
    (tmp_path / "models").mkdir()
    (tmp_path / "models" / "prod.yaml").write_text(model_text("Prod"))
    assert store_of(load_model(str(tmp_path), path="models/prod.yaml")) == "Prod"


@pytest.mark.parametrize(("path", "words"), [
    ("../datasurface.yaml", "leaves the model folder"), ("/etc/passwd", "must be relative"),
    ("a/../../x", "leaves the model folder"), ("missing.yaml", "model file not found"),
    ("models", "not a regular file"), ("escape.yaml", "link leading out of the model directory"),
])
def test_local_folder_refusals(tmp_path: Path, path: str, words: str) -> None:
    folder = tmp_path / "m"
    (folder / "models").mkdir(parents=True)
    (tmp_path / "outside.yaml").write_text(model_text("Out"))
    (folder / "escape.yaml").symlink_to(tmp_path / "outside.yaml")
    assert words in model_error(str(folder), path=path)


def test_local_folder_problems(tmp_path: Path) -> None:
    assert "no model given" in model_error("")
    assert "does not exist" in model_error(str(tmp_path / "nope"))
    (tmp_path / "file").write_text("x")
    assert "is not a directory" in model_error(str(tmp_path / "file"))
    assert "needs a git URL" in model_error(str(tmp_path), "main")
    (tmp_path / "datasurface.yaml").write_bytes(b"apiVersion: \xff\xfe\n")
    assert "not UTF-8" in model_error(str(tmp_path))
    (tmp_path / "datasurface.yaml").write_text("stores: [\n")
    assert model_error(str(tmp_path)).startswith(f"{tmp_path / 'datasurface.yaml'}: line ")


def test_url_kinds(tmp_path: Path) -> None:
    assert is_git_url("https://github.com/org/repo.git")
    assert is_git_url("ssh://git@github.com/org/repo.git")
    assert is_git_url("git@github.com:org/repo.git")
    assert is_git_url("file:///srv/model.git")
    assert not is_git_url(str(tmp_path))
    assert not is_git_url("models/dev")
    with pytest.raises(ModelError, match="unsupported scheme 'ftp'"):
        is_git_url("ftp://example.com/x")
    # git's ext:: transport runs a command: such a "URL" is only ever a (missing) local folder
    assert not is_git_url("ext::sh -c touch% /tmp/pwned")
    with pytest.raises(ModelError, match="model directory 'ext::sh -c touch% /tmp/pwned' does not exist"):
        load_model("ext::sh -c touch% /tmp/pwned")
    assert redact_url("https://u:p@h/x") == "https://u:***@h/x"
    assert redact_url("https://u@h/x") == "https://u@h/x"
