"""Load `datasurface.yaml` from a local folder or from a git repository at a branch, tag or commit.

The repository is data: it is fetched into a temporary folder (under TMPDIR) that is always removed,
the file is read straight from git's object store (no work tree is checked out, no hooks run, no
submodules are fetched) and parsed with the safe YAML loader. Nothing from it is imported or run.

The git token (env DATASURFACE_GIT_TOKEN, https only) and a password inside an http(s) URL
(`https://user:password@host/…`) reach git only through its environment, as an `http.<url>.extraHeader`
(Basic auth) in environment-only configuration (GIT_CONFIG_COUNT...): git is given the URL without its
user and password, so neither is ever in the argv of git or its helpers (visible to `ps`), in
`.git/config` or `FETCH_HEAD`, in a log line or in an error message. A password in any other URL (ssh
takes keys, git:// and file:// take nothing) is refused.
"""

from __future__ import annotations

import contextlib
import os
import posixpath
import re
import sys
import urllib.parse
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import NamedTuple

from datasurface.credentials import GIT_TOKEN_ENV
from datasurface.errors import ModelError
from datasurface.model.schema import Model
from datasurface.model.validate import parse_model

DEFAULT_MODEL_PATH = "datasurface.yaml"
MAX_MODEL_BYTES = 8 * 1024 * 1024
GIT_TIMEOUT_ENV = "DATASURFACE_GIT_TIMEOUT"
DEFAULT_GIT_TIMEOUT = 300.0  # seconds, for each git command

_URL_SCHEMES = ("https", "http", "ssh", "git", "file")
_SCP_LIKE = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.+-]*@[A-Za-z0-9][A-Za-z0-9.-]*:(?!//).*")
_SCP_WITH_PASSWORD = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.+-]*:[^@/]*@[A-Za-z0-9][A-Za-z0-9.-]*:(?!//).*")
_PASSWORD_SCHEMES = ("https", "http")
_HEX = re.compile(r"[0-9a-fA-F]{4,40}")
_REDACTED = "***"


def load_model(model: str, ref: str | None = None, path: str = DEFAULT_MODEL_PATH, *,
               on_clone: Callable[[Path], None] | None = None) -> Model:
    """Load and validate the model from `model`: a local directory or a git URL.

    `ref` (git only) is a branch, tag or commit (full or abbreviated sha); default: the remote's
    default branch. `path` is the file inside the folder or repository and may not leave it.
    `on_clone` (tests) is called with the temporary clone folder before it is removed.
    """
    if not model or not model.strip():
        raise ModelError("no model given: name a git URL or a local directory (--model, DATASURFACE_MODEL)")
    rel = _relative_model_path(path)
    if is_git_url(model):
        return _load_from_git(model, ref, rel, on_clone)
    if ref:
        raise ModelError(f"model {model!r} is a local directory: a ref ({ref!r}) needs a git URL "
                         "(for a local repository use file:///absolute/path)")
    return _load_from_directory(model, rel)


def is_git_url(model: str) -> bool:
    """https://, http://, ssh://, git://, file:// or scp-like user@host:path."""
    scheme, sep, _ = model.partition("://")
    if sep:
        if scheme.lower() not in _URL_SCHEMES:
            raise ModelError(f"model URL {redact_url(model)!r}: unsupported scheme {scheme!r} "
                             f"(use {', '.join(s + '://' for s in _URL_SCHEMES)}, user@host:path or a directory)")
        parts = _split(model)
        if parts is not None and parts.password is not None and scheme.lower() not in _PASSWORD_SCHEMES:
            kind = scheme.lower()
            raise _password_refused(redact_url(model), f"{'an' if kind == 'ssh' else 'a'} {kind}:// URL")
        return True
    if _SCP_WITH_PASSWORD.fullmatch(model) and not Path(model).exists():
        user, _, rest = model.partition(":")
        raise _password_refused(f"{user}:{_REDACTED}@{rest.partition('@')[2]}", "an ssh address (user@host:path)")
    return bool(_SCP_LIKE.fullmatch(model)) and not Path(model).exists()


def _password_refused(shown: str, what: str) -> ModelError:
    return ModelError(f"model URL {shown!r}: {what} cannot carry a password (ssh authenticates with a key, "
                      "e.g. GIT_SSH_COMMAND='ssh -i /path/key'); for a password use "
                      f"https://user:password@host/… or {GIT_TOKEN_ENV}")


def _split(url: str) -> urllib.parse.SplitResult | None:
    """The parts of a scheme:// URL; None for scp-like addresses and what urllib cannot parse."""
    if "://" not in url:
        return None
    try:
        parts = urllib.parse.urlsplit(url)
        parts.port  # noqa: B018 - raises ValueError for a bad port
    except ValueError:
        return None
    return parts


def redact_url(url: str) -> str:
    """The URL with any password in its userinfo replaced by `***`."""
    parts = _split(url)
    if parts is None or parts.password is None:
        return url
    user = parts.username or ""
    host = parts.netloc.rpartition("@")[2]
    return urllib.parse.urlunsplit(parts._replace(netloc=f"{user}:{_REDACTED}@{host}"))


def _without_password(url: str) -> str:
    """The URL git is given: an http(s) URL's user and password go into a header (`_git_environment`)."""
    parts = _split(url)
    if parts is None or parts.password is None:
        return url
    return urllib.parse.urlunsplit(parts._replace(netloc=parts.netloc.rpartition("@")[2]))


def _relative_model_path(path: str) -> str:
    """The normalised relative POSIX path of the model file; refuses anything leaving the folder."""
    if not path or not path.strip():
        raise ModelError("model path is empty: name the model file inside the repository")
    if "\x00" in path or path.startswith(("/", "\\")) or re.match(r"[A-Za-z]:[\\/]", path):
        raise ModelError(f"model path {path!r} must be relative to the model folder/repository")
    norm = posixpath.normpath(path.replace("\\", "/"))
    if norm == ".." or norm.startswith("../"):
        raise ModelError(f"model path {path!r} leaves the model folder/repository")
    if norm == ".":
        raise ModelError(f"model path {path!r} names the folder itself, not a file")
    return norm


def _decode(data: bytes, origin: str) -> str:
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise ModelError(f"{origin}: not UTF-8 text (byte {exc.start})") from None


def _too_big(origin: str, size: int) -> ModelError:
    return ModelError(f"{origin}: {size} bytes is too large for a model file (at most {MAX_MODEL_BYTES})")


# --- a local folder -------------------------------------------------------------------------------


def _load_from_directory(directory: str, rel: str) -> Model:
    root = Path(directory)
    if not root.is_dir():
        what = "is not a directory" if root.exists() else "does not exist"
        raise ModelError(f"model directory {directory!r} {what}")
    file = root / rel
    origin = str(file)
    try:
        resolved = file.resolve(strict=True)
    except FileNotFoundError:
        raise ModelError(f"{origin}: model file not found in {directory!r}") from None
    except (OSError, RuntimeError) as exc:
        raise ModelError(f"{origin}: cannot read: {exc}") from None
    if not resolved.is_relative_to(root.resolve()):
        raise ModelError(f"{origin}: is a link leading out of the model directory {directory!r}")
    if not resolved.is_file():
        raise ModelError(f"{origin}: not a regular file")
    try:
        size = resolved.stat().st_size
        if size > MAX_MODEL_BYTES:
            raise _too_big(origin, size)
        data = resolved.read_bytes()
    except OSError as exc:
        raise ModelError(f"{origin}: cannot read: {exc.strerror}") from None
    return parse_model(_decode(data, origin), origin)


# --- git ------------------------------------------------------------------------------------------


class _Remote(NamedTuple):
    url: str  # as given, maybe with a password: never handed to git, never shown
    shown: str  # the URL as it may appear in messages (password redacted)
    ref: str | None

    @property
    def git_url(self) -> str:
        """The URL in git's argv: without the password (that travels in the environment)."""
        return _without_password(self.url)

    def where(self) -> str:
        return f"{self.shown} (ref {self.ref})" if self.ref else self.shown


class _Git:
    """Runs the git CLI in one folder with a locked-down environment (a child process per command, in a
    session of its own: a command that outlives its timeout is killed with everything it started, its
    transport helpers included)."""

    def __init__(self, workdir: Path, remote: _Remote) -> None:
        self._workdir = workdir
        self._remote = remote
        # git's messages in English whatever the pod's locale: `reason` reads them
        self._env = {**os.environ, "LANGUAGE": "C", "LC_ALL": "C", **_git_environment(remote.url)}
        parts = _split(remote.url)
        password = parts.password if parts is not None else None
        self._secrets = [s for s in (os.environ.get(GIT_TOKEN_ENV), _basic_auth(remote.url), password,
                                     urllib.parse.unquote(password or "")) if s]
        timeout = os.environ.get(GIT_TIMEOUT_ENV, "")
        try:
            self._timeout = float(timeout) if timeout else DEFAULT_GIT_TIMEOUT
        except ValueError:
            raise ModelError(f"{GIT_TIMEOUT_ENV}={timeout!r} is not a number of seconds") from None

    def run(self, *args: str) -> tuple[int, bytes, str]:
        """(status, stdout bytes, stderr text) of `git <args>`; never raises for a git failure."""
        import signal
        import subprocess

        try:
            proc = subprocess.Popen(["git", *args], cwd=self._workdir, env=self._env, stdin=subprocess.DEVNULL,
                                    stdout=subprocess.PIPE, stderr=subprocess.PIPE, start_new_session=True)
        except OSError as exc:  # git missing or not runnable
            raise ModelError(f"cannot run git for the model repository {self._remote.shown}: "
                             f"{exc.strerror or exc}") from None
        try:
            out, err = proc.communicate(timeout=self._timeout)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            proc.communicate()
            return -signal.SIGKILL, b"", (f"fatal: no answer within {self._timeout:g} seconds "
                                          f"(set {GIT_TIMEOUT_ENV} to wait longer)")
        return proc.returncode, out, err.decode("utf-8", "replace")

    def check(self, what: str, *args: str) -> bytes:
        status, out, err = self.run(*args)
        if status != 0:
            raise ModelError(f"{what} {self._remote.where()}: {self.reason(err)}")
        return out

    def reason(self, stderr: str) -> str:
        """git's own last word, on one line, with the URL's password and the token removed."""
        lines = [ln.strip() for ln in stderr.splitlines() if ln.strip()]
        first = next((i for i, ln in enumerate(lines) if ln.lower().startswith(("fatal:", "error:"))), None)
        if first is None:
            text = lines[-1] if lines else "git failed without a message"
        elif first > 0 and "could not read from remote repository" in lines[first].lower():
            text = f"{lines[first - 1]} ({lines[first]})"  # the transport's own reason (ssh) comes first
        else:
            text = lines[first]
        text = text.replace(self._remote.url, self._remote.shown).replace(self._remote.git_url, self._remote.shown)
        for secret in self._secrets:
            text = text.replace(secret, _REDACTED)
        return text


def _git_environment(url: str) -> dict[str, str]:
    """Environment for every git command: no prompts, no hooks, no credential storage, no system
    askpass; the URL's password (http, https) or the token (https only) as a Basic-auth header scoped to
    the URL's scheme, host and port."""
    config: list[tuple[str, str]] = [
        ("core.hooksPath", "/dev/null"),
        ("credential.helper", ""),  # git must never store the URL's password or a token on disk
        ("core.fsmonitor", "false"),
        ("submodule.recurse", "false"),
        ("fetch.recurseSubmodules", "false"),
        ("protocol.ext.allow", "never"),
        ("advice.detachedHead", "false"),
        ("init.defaultBranch", "main"),
    ]
    basic = _basic_auth(url)
    if basic:
        parts = urllib.parse.urlsplit(url)
        host = parts.netloc.rpartition("@")[2]
        config.append((f"http.{parts.scheme.lower()}://{host}/.extraHeader", f"Authorization: Basic {basic}"))
    env = {
        "GIT_TERMINAL_PROMPT": "0",
        "GIT_ASKPASS": "",
        "SSH_ASKPASS": "",
        "GIT_LITERAL_PATHSPECS": "1",
        "GIT_OPTIONAL_LOCKS": "0",
    }
    if "GIT_SSH_COMMAND" not in os.environ and "GIT_SSH" not in os.environ:
        env["GIT_SSH_COMMAND"] = "ssh -o BatchMode=yes"  # fail instead of asking; core.sshCommand is kept
    env.update(_environment_config(os.environ, config))
    return env


def _basic_auth(url: str) -> str | None:
    """base64(`user:password`) for an http(s) URL with a password (percent-escapes decoded); else, for
    an https URL when the token is set, base64(`user:token`) with the URL's user or `x-access-token`
    (GitHub; GitLab and Gitea accept any user). The token never goes over plain http."""
    import base64

    parts = _split(url)
    if parts is None:
        return None
    scheme = parts.scheme.lower()
    user = urllib.parse.unquote(parts.username or "")
    if parts.password is not None:
        if scheme not in _PASSWORD_SCHEMES:
            return None
        secret = urllib.parse.unquote(parts.password)
    else:
        secret = os.environ.get(GIT_TOKEN_ENV, "")
        if not secret or scheme != "https":
            return None
        user = user or "x-access-token"
    return base64.b64encode(f"{user}:{secret}".encode()).decode("ascii")


def _environment_config(environ: Mapping[str, str], config: list[tuple[str, str]]) -> dict[str, str]:
    """GIT_CONFIG_COUNT/KEY_n/VALUE_n entries, appended after any the caller's environment has."""
    try:
        start = int(environ.get("GIT_CONFIG_COUNT", "0"))
    except ValueError:
        start = 0
    env = {"GIT_CONFIG_COUNT": str(start + len(config))}
    for i, (key, value) in enumerate(config, start):
        env[f"GIT_CONFIG_KEY_{i}"] = key
        env[f"GIT_CONFIG_VALUE_{i}"] = value
    return env


def _load_from_git(url: str, ref: str | None, rel: str, on_clone: Callable[[Path], None] | None) -> Model:
    import tempfile

    if ref is not None and (not ref.strip() or ref.startswith("-") or any(c.isspace() for c in ref)):
        raise ModelError(f"model ref {ref!r} is not a branch, tag or commit name")
    remote = _Remote(url=url, shown=redact_url(url), ref=ref)
    tmp_root = os.environ.get("TMPDIR") or None  # read now: tempfile caches the first TMPDIR it sees
    workdir = Path(tempfile.mkdtemp(prefix="datasurface-model-", dir=tmp_root))
    try:
        git = _Git(workdir, remote)
        git.check("cannot create a clone folder for", "init", "-q", "--template=", str(workdir))
        commit, shown_ref = _fetch(git, remote)
        origin = f"{remote.shown}@{shown_ref}:{rel}"
        data = _read_blob(git, remote, commit, rel, origin)
        if on_clone is not None:
            on_clone(workdir)
    finally:
        _remove_tree(workdir)
    return parse_model(_decode(data, origin), origin)


def _remove_tree(path: Path) -> None:
    """Remove the clone folder, also where a folder inside was made read-only."""
    import shutil
    import stat

    def retry(func: Callable[[str], object], name: str, _exc: object) -> None:
        os.chmod(os.path.dirname(name) or ".", stat.S_IRWXU)
        func(name)

    if sys.version_info >= (3, 12):
        shutil.rmtree(path, onexc=retry)
    else:
        shutil.rmtree(path, onerror=retry)


def _fetch(git: _Git, remote: _Remote) -> tuple[str, str]:
    """Fetch the ref's commit into the clone; (commit sha, ref name for messages)."""
    listing = git.check("cannot read model repository", "ls-remote", "--symref", "--", remote.git_url)
    refs: dict[str, str] = {}
    head_branch: str | None = None
    for line in listing.decode("utf-8", "replace").splitlines():
        left, _, name = line.partition("\t")
        if left.startswith("ref: ") and name == "HEAD":
            head_branch = left[5:].strip()
        elif name:
            refs[name] = left.strip()

    ref = remote.ref
    if ref is None:
        if head_branch is None and "HEAD" in refs:  # a server that does not say which branch HEAD is
            return _fetch_ref(git, remote, "HEAD"), "HEAD"
        if head_branch is None or head_branch not in refs:
            raise ModelError(f"model repository {remote.shown} has no default branch (is it empty?); "
                             "give a ref")
        return _fetch_ref(git, remote, head_branch), head_branch.removeprefix("refs/heads/")
    for name in (ref, f"refs/heads/{ref}", f"refs/tags/{ref}"):
        if name.startswith("refs/") and name in refs:
            return _fetch_ref(git, remote, name), ref
    if not _HEX.fullmatch(ref):
        raise ModelError(f"model ref {ref!r} not found in {remote.shown}: no such branch, tag or commit")
    return _fetch_commit(git, remote, ref.lower()), ref


def _fetch_ref(git: _Git, remote: _Remote, refname: str) -> str:
    """A branch or tag: shallow (only its commit), or in full from a server that cannot do shallow."""
    status, _, _ = git.run("fetch", "-q", "--depth", "1", "--no-tags", "--no-recurse-submodules", "--",
                           remote.git_url, refname)
    if status != 0:
        git.check("cannot fetch model repository", "fetch", "-q", "--no-tags", "--no-recurse-submodules",
                  "--", remote.git_url, refname)
    return _resolve(git, remote, "FETCH_HEAD")


def _fetch_commit(git: _Git, remote: _Remote, sha: str) -> str:
    """A commit by full or abbreviated sha: a shallow fetch of a full sha where the server allows it,
    else every branch and tag, then resolve the (abbreviated) sha locally."""
    if len(sha) == 40:
        status, _, _ = git.run("fetch", "-q", "--depth", "1", "--no-tags", "--no-recurse-submodules",
                               "--", remote.git_url, sha)
        if status == 0:
            return _resolve(git, remote, "FETCH_HEAD")
    git.check("cannot fetch model repository", "fetch", "-q", "--no-tags", "--no-recurse-submodules", "--",
              remote.git_url, "+refs/heads/*:refs/remotes/origin/*", "+refs/tags/*:refs/tags/*")
    status, out, _ = git.run("rev-parse", "--verify", "-q", "--end-of-options", f"{sha}^{{commit}}")
    if status != 0:
        raise ModelError(f"model ref {sha!r} not found in {remote.shown}: no such branch, tag or commit "
                         "(or an abbreviated sha matching several objects)")
    return out.decode().strip()


def _resolve(git: _Git, remote: _Remote, name: str) -> str:
    out = git.check("cannot resolve the fetched commit of", "rev-parse", "--verify", "-q", "--end-of-options",
                    f"{name}^{{commit}}")
    return out.decode().strip()


def _read_blob(git: _Git, remote: _Remote, commit: str, rel: str, origin: str) -> bytes:
    out = git.check("cannot list the model file in", "ls-tree", "-z", "--long", "--full-tree", commit, "--", rel)
    entry = out.split(b"\0", 1)[0].decode("utf-8", "replace")
    if not entry:
        raise ModelError(f"{origin}: model file {rel!r} not found in {remote.where()}")
    meta, _, _name = entry.partition("\t")
    mode, kind, sha, size = [*meta.split(), "", "", "", ""][:4]
    if kind == "tree":
        raise ModelError(f"{origin}: {rel!r} is a directory in {remote.where()}, not the model file")
    if mode == "120000":
        raise ModelError(f"{origin}: {rel!r} is a symbolic link in {remote.where()}; name the file itself")
    if kind != "blob":
        raise ModelError(f"{origin}: {rel!r} is not a file in {remote.where()} ({kind})")
    if size.isdigit() and int(size) > MAX_MODEL_BYTES:
        raise _too_big(origin, int(size))
    return git.check("cannot read the model file from", "cat-file", "blob", sha)
