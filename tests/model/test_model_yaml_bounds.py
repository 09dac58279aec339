"""YAML bombs: the model file cannot exhaust the job. Aliases, merge keys, depth, long values, many
documents and many problems are bounded (model.safeyaml), with libyaml's parser and PyYAML's own, and the
real CLI refuses the 12 KB alias bomb of 1000 stores x 1000 datasets x 1000 columns at once."""

from __future__ import annotations

import os
import resource
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from datasurface.errors import ModelError
from datasurface.model import parse_model, safeyaml

FILE = "datasurface.yaml"
HEAD = "apiVersion: datasurface/v1\nkind: Model\nstores:\n"
SOURCE = "{host: pg, database: db, credential: source}"


@pytest.fixture(params=[c.__name__ for c in safeyaml.LOADERS])
def loader(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    """Each test runs with each parser PyYAML has here (libyaml's, and always the pure-Python one)."""
    [chosen] = [c for c in safeyaml.LOADERS if c.__name__ == request.param]
    monkeypatch.setattr(safeyaml, "LOADERS", [chosen])
    yield request.param


def refusal(text: str) -> str:
    with pytest.raises(ModelError) as info:
        parse_model(text, FILE)
    message = str(info.value)
    assert "\n" not in message and len(message) < 1000, message  # never the file's content at length
    assert message.startswith(f"{FILE}: ")
    return message


def bomb(n: int = 1000) -> str:
    """n stores x n datasets x n columns in about 15 KB: each list repeats the one before by alias."""
    return (HEAD + f"  - &s\n    name: S\n    source: {SOURCE}\n"
            f"    datasets: [&d {{name: d, primaryKey: [id], columns: [&c {{name: id, type: text}}"
            f"{', *c' * (n - 1)}]}}{', *d' * (n - 1)}]\n" + "  - *s\n" * (n - 1))


def test_the_alias_bomb_is_refused_at_once_naming_file_and_line(loader: str) -> None:
    text = bomb()
    assert len(text) < 16_000
    started = time.monotonic()
    message = refusal(text)
    assert time.monotonic() - started < 5
    assert message.startswith(f"{FILE}: line 7, column ")
    assert f"more than {safeyaml.MAX_NODES} values, lists and mappings (counting each alias" in message


def test_aliases_count_as_what_they_repeat(loader: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """The bound is on the expanded document: exact at the limit, one node more is refused."""
    monkeypatch.setattr(safeyaml, "MAX_NODES", 13)
    # root mapping (1) + key a (1) + list (1) + 3 items (3) + key b (1) + alias of the list (4) + key c + 'x'
    assert parse_model_data("a: &l [1, 2, 3]\nb: *l\nc: x\n") == {"a": [1, 2, 3], "b": [1, 2, 3], "c": "x"}
    message = refusal("a: &l [1, 2, 3]\nb: *l\nc: x\nd: 1\n")
    assert message.startswith(f"{FILE}: line 4, column 1: the model has more than 13 values")


def parse_model_data(text: str) -> Any:
    node = safeyaml.compose(text, FILE)
    assert node is not None
    return safeyaml.construct(node, FILE)


def test_a_dense_file_without_aliases_is_bounded_too(loader: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """An 8 MiB `[1,1,1,…]` is four million nodes (over 2 GB composed): refused at the count, not after."""
    monkeypatch.setattr(safeyaml, "MAX_NODES", 5000)
    started = time.monotonic()
    message = refusal("a: [" + ",".join(["1"] * 4_000_000) + "]\n")
    assert time.monotonic() - started < 5
    # at the list's 4998th item: the mapping, its key and the list count too
    assert "line 1, column 9999: the model has more than 5000 values" in message


@pytest.mark.parametrize("text", [
    "stores: &s [*s]\napiVersion: datasurface/v1\nkind: Model\n",
    "a: &m {b: *m}\n",
    "a: &m {<<: *m}\n",
])
def test_a_recursive_alias_is_refused(loader: str, text: str) -> None:
    assert "is inside the node it names (a recursive structure)" in refusal(text)


def test_a_merge_key_bomb_is_bounded(loader: str) -> None:
    lines = ["a0: &a0 {k0: 1, k1: 2, k2: 3, k3: 4, k4: 5, k5: 6, k6: 7, k7: 8}"]
    lines += [f"a{i}: &a{i} {{<<: [*a{i - 1}], x{i}: *a{i - 1}, y{i}: *a{i - 1}}}" for i in range(1, 40)]
    started = time.monotonic()
    message = refusal("\n".join(lines) + "\n")
    assert time.monotonic() - started < 5
    assert "more than 200000 values" in message


def test_anchors_aliases_and_merge_keys_within_bounds_are_fine(loader: str) -> None:
    """A source given once and reused; `<<` with an override (not a duplicate key)."""
    text = HEAD + f"""\
  - name: A
    source: &src {SOURCE}
    datasets: &ds
      - name: customers
        primaryKey: [id]
        columns: [{{name: id, type: text}}]
  - name: B
    source: *src
    datasets: *ds
  - name: C
    source: {{<<: *src, database: other}}
    datasets: *ds
"""
    model = parse_model(text, FILE)
    assert [s.source.database for s in model.stores] == ["db", "db", "other"]
    assert model.store("B").datasets == model.store("A").datasets


@pytest.mark.parametrize("style", ["block", "flow"])
def test_deep_nesting_is_refused(loader: str, style: str) -> None:
    if style == "flow":
        text = "a: " + "[" * 100_000
    else:
        text = "".join(" " * i + f"k{i}:\n" for i in range(200))
    message = refusal(text)
    assert f"nested more than {safeyaml.MAX_DEPTH} levels deep" in message or "maximum nesting depth" in message


def test_nesting_up_to_the_limit_is_fine(loader: str) -> None:
    depth = safeyaml.MAX_DEPTH - 1  # the root mapping is one level, its values the next ...
    data = parse_model_data("a: " + "[" * depth + "]" * depth + "\n")
    for _ in range(depth):
        data = data["a"] if isinstance(data, dict) else data[0] if data else data
    assert data == []


def test_a_huge_value_is_refused_and_never_quoted_whole(loader: str) -> None:
    message = refusal(HEAD + "  - name: " + "x" * 200_000 + "\n")
    assert message == f"{FILE}: line 4, column 11: a value of 200000 characters (at most {safeyaml.MAX_SCALAR})"
    at_limit = refusal(HEAD + "  - name: " + "x" * safeyaml.MAX_SCALAR + "\n")  # allowed by YAML, a bad name
    assert "characters long (at most 40 allowed)" in at_limit and "… (" in at_limit


def test_a_number_as_long_as_allowed_is_a_model_error(loader: str) -> None:
    text = HEAD + "  - name: S\n    source: {host: pg, database: db, credential: source, port: " + "9" * 4096 + "}\n"
    assert "port: expected a port number 1..65535, got a number (999" in refusal(text)


@pytest.mark.parametrize("text", ["--- 1\n" * 200_000, "a: 1\n---\n" + "b: [" * 50_000])
def test_only_one_document_is_read(loader: str, text: str) -> None:
    assert "expected a single document" in refusal(text)


def test_many_problems_stop_early_and_fast(loader: str) -> None:
    """5000 unknown keys are 5000 problems: validation stops at 1000 (each mapping's keys indexed once)."""
    text = "apiVersion: datasurface/v1\nkind: Model\nstores: []\n" + "".join(f"k{i}: {i}\n" for i in range(5000))
    started = time.monotonic()
    message = refusal(text)
    assert time.monotonic() - started < 10
    assert message.endswith("; and 990 more problem(s) (validation stopped there)")
    assert f"{FILE}: stores: the list is empty" in message or f"{FILE}: k0: unknown key" in message


def test_unsafe_tags_are_refused(loader: str) -> None:
    assert "could not determine a constructor" in refusal("a: !!python/object/apply:os.system [ls]\n")


# --- the real job process ---------------------------------------------------------------------------


def _limit_memory() -> None:  # in the child: a runaway parse dies at 1 GiB instead of taking the machine
    resource.setrlimit(resource.RLIMIT_AS, (1 << 30, 1 << 30))


# `python -m datasurface.cli`, which also writes its own peak RSS (VmHWM: since exec, so not the pytest
# process it was forked from, which wait4's ru_maxrss would include) to $HWM_FILE when it exits
_RUN_CLI = """\
import atexit, os, runpy
def _hwm():
    with open("/proc/self/status") as status, open(os.environ["HWM_FILE"], "w") as out:
        out.write(next(line for line in status if line.startswith("VmHWM:")))
atexit.register(_hwm)
runpy.run_module("datasurface.cli", run_name="__main__", alter_sys=True)
"""


@pytest.mark.parametrize("via", ["flag", "env"])
def test_the_cli_refuses_the_bomb_with_one_line_quickly_and_in_little_memory(tmp_path: Path, via: str) -> None:
    folder = tmp_path / "model"
    folder.mkdir()
    (folder / FILE).write_text(bomb())
    args = ["merge", "--platform", "P", "--mode", "live", "--store", "S", "--merge-host", "127.0.0.1",
            "--merge-database", "d", "--merge-credential", "m"]
    env = {k: v for k, v in os.environ.items() if not k.startswith("DATASURFACE_")}
    env["HWM_FILE"] = str(tmp_path / "hwm")
    if via == "flag":
        args += ["--model", str(folder)]
    else:
        env["DATASURFACE_MODEL"] = str(folder)
    started = time.monotonic()
    proc = subprocess.run([sys.executable, "-c", _RUN_CLI, *args], env=env, capture_output=True, text=True,
                          timeout=60, preexec_fn=_limit_memory)
    elapsed = time.monotonic() - started
    peak_mb = int((tmp_path / "hwm").read_text().split()[1]) / 1024  # "VmHWM:   123456 kB"
    print(f"alias bomb via {via}: exit {proc.returncode} in {elapsed:.2f} s, peak RSS {peak_mb:.0f} MB")
    assert proc.returncode == 1, proc.stderr
    err = proc.stderr
    assert err.count("\n") == 1 and err.startswith(f"datasurface-job: error: {folder / FILE}: line 7, column ")
    assert "more than 200000 values" in err
    assert proc.stdout.splitlines()[-1] == "DATASURFACE_RESULT_CODE=1"
    assert elapsed < 5
    assert peak_mb < 300


def test_bounds_are_documented(repo_root: Path) -> None:
    readme = (repo_root / "docs" / "model.md").read_text()
    for words in (f"{safeyaml.MAX_NODES:,}", "aliases", f"{safeyaml.MAX_DEPTH} levels"):
        assert words in readme, words
    assert yaml.safe_load(bomb(3))["stores"][2]["name"] == "S"  # the bomb is valid YAML, only large
