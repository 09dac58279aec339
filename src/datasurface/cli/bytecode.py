"""`python -m datasurface.cli.bytecode`: bytecode for exactly what a `merge` imports (the job image's build).

The image's base ships its standard library without bytecode, the venv is installed without it (21 MB),
and the pod's root filesystem is read-only, so a job compiles every module it imports at every start,
in memory. For a merge, which runs every few minutes for every store, that is about 0.4 s of CPU: more
than the rest of a small batch. This writes the bytecode of those modules (about 3 MB), in the standard
library and the venv, beside their sources (`__pycache__`, where the interpreter looks for it). The other
commands start rarely or run for long; they compile what else they import as before.
"""

from __future__ import annotations

import importlib
import os
import py_compile
import sys

# What `datasurface-job merge` imports (cli/__init__.py, then cli/fast.py's `run_merge_command`); its
# PostgreSQL source dialect is imported by the engine when the store is opened, the codec of the model
# file (read as utf-8-sig: a byte-order mark is no part of the YAML) when it is read, and what fetching a
# model from git needs (model/loader.py) when the model is a repository, as it is in a cluster, and what
# merging several stores in one run needs (group.py), and change data capture for a store that reads changes.
# tests/engine/test_cli_fast.py checks that a real merge imports nothing outside these modules' imports.
MERGE_MODULES = ("datasurface.cli", "datasurface.cli.fast", "datasurface.cli.outcome", "datasurface.engine",
                 "datasurface.group", "datasurface.ingest.postgres", "datasurface.cdc.capture", "datasurface.cdc.plan",
                 "encodings.utf_8_sig", "base64", "shutil",
                 "subprocess", "tempfile")


def merge_sources() -> list[str]:
    """The source files of every module a merge imports (importing them, in this process)."""
    for name in MERGE_MODULES:
        importlib.import_module(name)
    return sorted({str(f) for m in list(sys.modules.values())
                   if (f := getattr(m, "__file__", None)) and str(f).endswith(".py")})


def main() -> int:
    sources = merge_sources()
    size = 0
    for source in sources:
        written = py_compile.compile(source, doraise=True)  # into __pycache__ beside the source
        size += os.path.getsize(written) if written else 0
    print(f"bytecode of the {len(sources)} modules a merge imports: {size / 1e6:.1f} MB")
    return 0


if __name__ == "__main__":
    sys.exit(main())
