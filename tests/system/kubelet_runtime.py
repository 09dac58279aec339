"""The container runtime of kubelet.py: run as root inside fresh mount and UTS namespaces (and the pod's
network namespace), it builds the container's root filesystem and execs the container's process.

    python kubelet_runtime.py SPEC.json

SPEC (written by kubelet.py): {"scratch": dir for the overlay's upper layer, "hostname": pod name,
"dirs": [[path, uid, gid, mode]] created in the image, "files": {path: text} written in the image,
"mounts": [[host path, mount path, read only]], "content": [machine paths bound read-only at their own
path after the mounts], "read_only_root": bool, "workdir": path, "uid", "gid",
"groups", "no_new_privs": bool, "argv": [...], "env": {...}}.

The root filesystem is an overlay whose lower layer is the machine's `/` (so the venvs and Debian's
Python are there) and whose upper layer lives in `scratch`: the container's writes, the image's folders
and the mount points never reach the machine's own filesystem. Only the standard library: it runs
before any venv matters.
"""

from __future__ import annotations

import ctypes
import json
import os
import socket
import subprocess
import sys

PR_SET_NO_NEW_PRIVS = 38


def inside(root: str, path: str) -> str:
    """`path` of the container as a path of the machine under `root`, following symlinks as the
    container will see them (an absolute link target is relative to `root`, e.g. /var/run -> /run), so
    that nothing made for the container lands on the machine's own files."""
    parts = [p for p in path.split("/") if p]
    resolved = root
    hops = 0
    while parts:
        part = parts.pop(0)
        if part == "..":
            resolved = os.path.dirname(resolved) if resolved != root else root
            continue
        candidate = os.path.join(resolved, part)
        if os.path.islink(candidate):
            hops += 1
            if hops > 40:
                raise OSError(f"too many symlinks in {path}")
            target = os.readlink(candidate)
            parts = [p for p in target.split("/") if p] + parts
            if target.startswith("/"):
                resolved = root
            continue
        resolved = candidate
    return resolved


def mount(*args: str) -> None:
    subprocess.run(["mount", *args], check=True)


def main(spec_path: str) -> None:
    with open(spec_path) as f:
        spec = json.load(f)
    socket.sethostname(spec["hostname"])
    scratch = spec["scratch"]
    upper, work, root = (os.path.join(scratch, name) for name in ("upper", "work", "root"))
    for path in (upper, work, root):
        os.makedirs(path, exist_ok=True)
    mount("--make-rprivate", "/")
    mount("-t", "overlay", "overlay", "-o", f"lowerdir=/,upperdir={upper},workdir={work}", root)
    for special in ("proc", "sys", "dev"):
        mount("--rbind", f"/{special}", os.path.join(root, special))
    for path, uid, gid, mode in spec["dirs"]:
        target = inside(root, path)
        os.makedirs(target, exist_ok=True)
        os.chown(target, uid, gid)
        os.chmod(target, mode)
    for path, text in spec["files"].items():
        target = inside(root, path)
        os.makedirs(os.path.dirname(target), exist_ok=True)
        with open(target, "w") as f:
            f.write(text)
        os.chmod(target, spec.get("file_modes", {}).get(path, 0o644))
    for source, mount_path, read_only in spec["mounts"]:
        target = inside(root, mount_path)
        if os.path.isdir(source):
            os.makedirs(target, exist_ok=True)
        else:
            os.makedirs(os.path.dirname(target), exist_ok=True)
            open(target, "a").close()
        mount("--bind", source, target)
        if read_only:
            mount("-o", "remount,bind,ro", target)
    for path in spec.get("content", []):  # the image's content, at its own path, reachable by any user
        target = inside(root, path)
        os.makedirs(target, exist_ok=True)
        mount("--bind", path, target)
        mount("-o", "remount,bind,ro", target)
    if spec["read_only_root"]:
        mount("-o", "remount,ro", root)
    os.chroot(root)
    os.chdir(spec["workdir"])
    os.setgroups(spec["groups"])
    os.setgid(spec["gid"])
    os.setuid(spec["uid"])
    if spec["no_new_privs"]:
        ctypes.CDLL(None, use_errno=True).prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0)
    argv, env = spec["argv"], spec["env"]
    try:
        os.execvpe(argv[0], argv, env)
    except OSError as exc:  # what a container runtime reports as "exec format error"/"not found"
        print(f"kubelet_runtime: cannot exec {argv[0]}: {exc.strerror}", file=sys.stderr, flush=True)
        os._exit(127)


if __name__ == "__main__":
    main(sys.argv[1])
