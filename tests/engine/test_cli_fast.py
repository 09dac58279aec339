"""The fast `merge` path (cli/fast.py) says exactly what the typer command declares, takes only plain
invocations, leaves everything else to typer, and a merge needs neither typer, click nor rich."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import typing
from typing import Any

import pytest
import typer

from datasurface.cli import fast
from datasurface.cli.app import app
from tests.support.engine import merge_args


def _options(command: Any) -> dict[str, Any]:
    """The command's options by name, whichever click typer builds on (click's own, or its vendored copy
    whose options carry typer's type descriptors instead of click param types, in typer 0.2x)."""
    return {p.name: p for p in command.params if getattr(p, "param_type_name", "") == "option"}


def _kind(option: Any) -> type:
    """The Python type an option takes."""
    descriptor = getattr(option, "type_descriptor", None)
    if descriptor is not None:
        args = [a for a in typing.get_args(descriptor.annotation) if a is not type(None)]
        return args[0] if args else descriptor.annotation  # type: ignore[no-any-return]
    return {"integer": int, "float": float, "text": str}[option.type.name]

REQUIRED = ["--platform", "P", "--mode", "live", "--store", "S", "--merge-host", "/h", "--merge-database", "m",
            "--merge-credential", "merge", "--model", "/model"]


def _typer_merge() -> Any:
    return typer.main.get_command(app).commands["merge"]  # type: ignore[attr-defined]


def test_the_table_is_the_typer_commands_options() -> None:
    params = _options(_typer_merge())
    assert set(params) == {o.dest for o in fast.MERGE_OPTIONS}
    for opt in fast.MERGE_OPTIONS:
        p = params[opt.dest]
        assert p.opts == [opt.flag], opt.dest
        assert p.envvar == opt.env, opt.dest
        assert _kind(p) is opt.kind, opt.dest
        assert p.required == (opt.default is fast.REQUIRED), opt.dest
        assert p.multiple == opt.many, opt.dest
        if opt.default is not fast.REQUIRED:
            assert p.default == opt.default, opt.dest


def test_root_options_are_known() -> None:
    root = typer.main.get_command(app)
    envs = {p.envvar for p in _options(root).values() if p.envvar}
    assert envs == set(fast.ROOT_ENV)


def test_plain_merge_is_parsed_like_typer_would() -> None:
    debug, values = fast.parse_merge(["--debug", "merge", *REQUIRED, "--merge-port=6543", "--lock-wait", "0"], {})  # type: ignore[misc]
    assert debug is True
    assert values["merge_port"] == 6543 and values["lock_wait"] == 0.0 and values["model_path"] == "datasurface.yaml"
    assert values["model_ref"] is None and values["platform"] == "P"
    # from the environment, the command line winning over it
    _, values = fast.parse_merge(["merge", *REQUIRED[2:], "--platform", "Q"],  # type: ignore[misc]
                                 {"DATASURFACE_MODE": "forensic", "DATASURFACE_PLATFORM": "E",
                                  "DATASURFACE_LOCK_TIMEOUT": "1.5e1"})
    assert values["mode"] == "live" and values["platform"] == "Q" and values["lock_timeout"] == 15.0
    _, values = fast.parse_merge(["merge", *REQUIRED[4:]], {"DATASURFACE_PLATFORM": "E",  # type: ignore[misc]
                                                             "DATASURFACE_MODE": "forensic"})
    assert values["platform"] == "E" and values["mode"] == "forensic"


def test_a_repeated_store_is_every_store_in_order() -> None:
    """Every --store, as typer's list option takes them (an option that is not `many` keeps its last value)."""
    argv = ["merge", *REQUIRED, "--store", "T", "--store=U", "--mode", "forensic", "--parallel", "3"]
    _, values = fast.parse_merge(argv, {"DATASURFACE_STORE": "X,Y"})  # type: ignore[misc]
    assert values["store"] == ["S", "T", "U"] and values["mode"] == "forensic" and values["parallel"] == 3
    _, values = fast.parse_merge(["merge", *REQUIRED[:4], *REQUIRED[6:]],  # type: ignore[misc]
                                 {"DATASURFACE_STORE": "X,Y"})
    assert values["store"] == ["X,Y"] and values["parallel"] == 1  # names separated by commas: group.py
    ctx = _typer_merge().make_context("merge", argv[1:])
    assert ctx.params["store"] == ["S", "T", "U"] and ctx.params["mode"] == "forensic" and ctx.params["parallel"] == 3


@pytest.mark.parametrize("argv,env", [
    (["merge", *REQUIRED, "--help"], {}),
    (["merge", *REQUIRED[2:]], {}),  # --platform missing
    (["merge", *REQUIRED, "--merge-port", "54x"], {}),
    (["merge", *REQUIRED, "--lock-wait", "soon"], {}),
    (["merge", *REQUIRED, "--plat", "x"], {}),  # click does not take abbreviations
    (["merge", *REQUIRED, "extra"], {}),
    (["merge", *REQUIRED, "--model-ref"], {}),
    (["merge", *REQUIRED], {"DATASURFACE_DEBUG": "1"}),
    (["merge", *REQUIRED, "--merge-port", ""], {}),
    (["merge", *REQUIRED, "--store", ""], {}),
    (["merge", *REQUIRED, "--parallel", "two"], {}),
    (["status", *REQUIRED], {}),
    (["--version"], {}),
    ([], {}),
])
def test_anything_else_goes_to_typer(argv: list[str], env: dict[str, str]) -> None:
    assert fast.parse_merge(argv, env) is None


def test_merge_imports_no_cli_framework(tmp_path: object) -> None:
    """Run a merge that fails at its first step (no credential env), then list what it imported."""
    code = ("import sys\nfrom datasurface.cli import main\n"
            "main(['merge', '--platform', 'P', '--mode', 'live', '--store', 'S', '--merge-host', '/none', "
            "'--merge-database', 'm', '--merge-credential', 'nocred', '--model', '/nonexistent/model'])\n"
            "print(sorted({m.split('.')[0] for m in sys.modules}))")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert "DATASURFACE_RESULT_CODE=1" in proc.stdout, proc.stdout + proc.stderr
    assert "datasurface-job: error:" in proc.stderr
    loaded = proc.stdout.strip().splitlines()[-1]
    for heavy in ("typer", "click", "rich", "git"):
        assert f"'{heavy}'" not in loaded, loaded


def test_the_images_bytecode_covers_every_module_a_merge_imports(world: dict[str, Any]) -> None:
    """cli/bytecode.py (run by image/Dockerfile) compiles what MERGE_MODULES import: a real merge (a batch
    that changes rows, forensic) imports nothing else, so no merge in the image compiles a module."""
    dbs = world["dbs"]
    files = ("print(json.dumps(sorted({str(f) for m in list(sys.modules.values()) "
             "if (f := getattr(m, '__file__', None)) and str(f).endswith('.py')})))")
    with world["src"].cursor() as cur:
        cur.execute("UPDATE pairs SET note = note || '+'")
    world["src"].commit()
    args = merge_args(world["model"], "Bytecode", "forensic", dbs)
    code = f"import json, sys\nfrom datasurface.cli import main\nassert main({args!r}) == 0\n{files}"
    proc = subprocess.run([sys.executable, "-c", code], env={**os.environ, **dbs.env}, capture_output=True,
                          text=True, timeout=120)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    imported = set(json.loads(proc.stdout.strip().splitlines()[-1]))
    listed = subprocess.run([sys.executable, "-c", "import json\nfrom datasurface.cli.bytecode import merge_sources\n"
                             "print(json.dumps(merge_sources()))"], capture_output=True, text=True, timeout=60)
    assert listed.returncode == 0, listed.stderr
    missing = imported - set(json.loads(listed.stdout))
    assert not missing, f"a merge imports modules cli/bytecode.py does not compile: {sorted(missing)}"
