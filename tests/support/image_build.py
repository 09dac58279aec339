"""Helpers for the job-image tests: buildah calls, the built image's facts, and a working container that
runs the image's own entrypoint."""

from __future__ import annotations

import json
import subprocess
from dataclasses import dataclass
from pathlib import Path
from typing import Any

REPO_ROOT = Path(__file__).resolve().parents[2]
IMAGE_NAME = "localhost/datasurface-job-suite"  # not the user's datasurface-job tag
JOB_UID = "10001"


def buildah(*args: str, timeout: float = 120, check: bool = True) -> subprocess.CompletedProcess[str]:
    proc = subprocess.run(["buildah", *args], capture_output=True, text=True, timeout=timeout,
                          stdin=subprocess.DEVNULL)
    if check and proc.returncode != 0:
        raise AssertionError(f"buildah {' '.join(args[:2])} failed: {proc.stderr.strip()}")
    return proc


FIGURES: list[str] = []  # sizes and times, printed in pytest's terminal summary (conftest)


def report(line: str) -> None:
    FIGURES.append(line)


@dataclass
class BuiltImage:
    ref: str
    base: str
    config: dict[str, Any]  # the OCI image config: Entrypoint, Cmd, User, Env, WorkingDir, Labels
    size: int  # bytes, as `buildah images` counts them (uncompressed layers)
    base_size: int


UNITS = {"B": 1, "kB": 10**3, "MB": 10**6, "GB": 10**9}


def image_size(ref: str) -> int:
    """Bytes, from `buildah images` (it prints decimal units with three significant digits: "274 MB")."""
    (entry,) = json.loads(buildah("images", "--json", ref).stdout)
    number, unit = entry["size"].split()
    return round(float(number) * UNITS[unit])


@dataclass
class Container:
    """A working container of the job image; `run` starts the image's own entrypoint in it."""

    name: str
    image: BuiltImage

    def entrypoint(self, args: list[str] | None) -> list[str]:
        """What a container runtime executes: Entrypoint + (the given args, else the image's Cmd)."""
        cmd = self.image.config.get("Cmd") or []
        return [*(self.image.config.get("Entrypoint") or []), *(cmd if args is None else args)]

    def command(self, argv: list[str], *, user: str | None = JOB_UID, volumes: tuple[str, ...] = ()) -> list[str]:
        cmd = ["buildah", "run", "--isolation", "chroot"]
        if user is not None:
            cmd += ["--user", user]
        for volume in volumes:
            cmd += ["--volume", volume]
        return [*cmd, self.name, "--", *argv]

    def run(self, args: list[str] | None = None, *, volumes: tuple[str, ...] = (),
            timeout: float = 120) -> subprocess.CompletedProcess[str]:
        return subprocess.run(self.command(self.entrypoint(args), volumes=volumes), capture_output=True,
                              text=True, timeout=timeout, stdin=subprocess.DEVNULL)

    def exec(self, argv: list[str], *, user: str | None = JOB_UID) -> subprocess.CompletedProcess[str]:
        """Another program of the image (not its entrypoint), e.g. `id` or `sh -c`."""
        return subprocess.run(self.command(argv, user=user), capture_output=True, text=True, timeout=60,
                              stdin=subprocess.DEVNULL)

    def set_env(self, env: dict[str, str]) -> None:
        """Env for every later `run`, kept in the working container's config: `buildah run --env` would put
        the values into the argv of the buildah process that lives as long as the job."""
        args = [a for k, v in env.items() for a in ("--env", f"{k}={v}")]
        buildah("config", *args, self.name)
