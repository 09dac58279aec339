"""The job image, built for real with buildah and run with its own entrypoint (issue 12, part 1).

The whole folder needs buildah (`--isolation chroot`: no container runtime here) and, for the stand-in
base image, mmdebstrap, both as root; scripts/test.sh installs them. Where they cannot be had, every test
here is skipped with the reason, never silently.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.support.image_build import (
    FIGURES,
    IMAGE_NAME,
    REPO_ROOT,
    BuiltImage,
    Container,
    buildah,
    image_size,
    report,
)


def unavailable() -> str | None:
    """Why the image cannot be built here, or None."""
    if os.geteuid() != 0:
        return "needs root (buildah --isolation chroot and mmdebstrap --mode=root)"
    for tool in ("buildah", "mmdebstrap"):
        if shutil.which(tool) is None:
            return f"{tool} is not installed (scripts/test.sh installs it with apt-get; that failed or was skipped)"
    return None


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    reason = unavailable()
    if reason is None:
        return
    here = Path(__file__).parent
    for item in items:
        if here in Path(str(item.fspath)).parents:
            item.add_marker(pytest.mark.skip(reason=f"JOB IMAGE NOT BUILT: {reason}"))


def pytest_terminal_summary(terminalreporter: Any) -> None:
    if FIGURES:
        terminalreporter.section("job image: figures")
        for line in FIGURES:
            terminalreporter.write_line(line)


@pytest.fixture(scope="session")
def standin_base() -> str:
    started = time.monotonic()
    proc = subprocess.run([str(REPO_ROOT / "scripts/standin-base.sh")], capture_output=True, text=True,
                          timeout=900, stdin=subprocess.DEVNULL)
    assert proc.returncode == 0, proc.stderr[-4000:]
    ref = proc.stdout.strip().splitlines()[-1]
    how = "reused" if "reusing" in proc.stderr else "built"
    report(f"stand-in base {ref}: {how} in {time.monotonic() - started:.0f} s")
    return ref


@pytest.fixture(scope="session")
def job_image(standin_base: str) -> Iterator[BuiltImage]:
    started = time.monotonic()
    previous = buildah("inspect", "--type", "image", "--format", "{{.FromImageID}}", f"{IMAGE_NAME}:test",
                       check=False).stdout.strip()
    env = {**os.environ, "IMAGE_NAME": IMAGE_NAME}
    proc = subprocess.run([str(REPO_ROOT / "scripts/build-image.sh"), "--builder", "buildah", "--base", standin_base,
                           "--tag", "test"], capture_output=True, text=True, timeout=900, env=env,
                          stdin=subprocess.DEVNULL)
    assert proc.returncode == 0, proc.stderr[-4000:]
    ref = proc.stdout.strip().splitlines()[-1]
    inspected = json.loads(buildah("inspect", "--type", "image", ref).stdout)
    image = BuiltImage(ref=ref, base=standin_base, config=inspected["OCIv1"]["config"], size=image_size(ref),
                       base_size=image_size(standin_base))
    report(f"job image {ref}: built in {time.monotonic() - started:.0f} s; {image.size / 1e6:.0f} MB "
           f"(stand-in base {image.base_size / 1e6:.0f} MB + the job's layers "
           f"{(image.size - image.base_size) / 1e6:.0f} MB)")
    # The image stays (tagged): removing it would also remove its cached layers, and the next run would
    # build everything again. The one it replaced goes, so the store does not grow run after run.
    if previous and previous != inspected["FromImageID"]:
        buildah("rmi", previous, check=False)
    yield image


@pytest.fixture
def container(job_image: BuiltImage) -> Iterator[Container]:
    name = buildah("from", "--pull=never", job_image.ref).stdout.strip().splitlines()[-1]
    yield Container(name=name, image=job_image)
    buildah("rm", name, check=False)
