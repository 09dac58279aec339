"""Row-level security on a source table never yields a silent subset: a table whose policies apply to the
job's role is refused before any batch opens (one line naming the table and the fixes, the merge database
unchanged); with BYPASSRLS, or as the owner of a table that does not force it, every row is merged."""

from __future__ import annotations

from typing import Any

import pytest
from psycopg2 import sql

from tests.support.engine import PLATFORM, SCHEMA, assert_one_line_error, fetch, merge_args, merge_state, run_job

HIDE_ODD = "CREATE POLICY even_only ON pairs FOR SELECT USING (code % 2 = 0)"


def _admin(world: dict[str, Any], statement: str | sql.Composable, database: str | None = None) -> None:
    dbs = world["dbs"]
    conn = dbs.server.admin_connect(database or dbs.source)
    with conn.cursor() as cur:
        cur.execute(statement)
    conn.close()


def _source(world: dict[str, Any], *statements: str) -> None:
    with world["src"].cursor() as cur:
        for statement in statements:
            cur.execute(statement)
    world["src"].commit()


def _merge(world: dict[str, Any]) -> Any:
    dbs = world["dbs"]
    return run_job(merge_args(world["model"], PLATFORM, "live", dbs), dbs.env)


def _current(world: dict[str, Any]) -> list[tuple[Any, ...]]:
    return fetch(world["mrg"], f'"{SCHEMA}"."store1_pairs"', "pairs")


def _assert_refused(world: dict[str, Any], *fragments: str) -> None:
    before = merge_state(world["mrg"], SCHEMA)
    proc = _merge(world)
    assert_one_line_error(proc, "source table public.pairs", "row-level security", *fragments)
    assert merge_state(world["mrg"], SCHEMA) == before  # nothing changed, no batch opened


def test_a_policy_hiding_rows_from_a_role_that_does_not_own_the_table_is_refused(world: dict[str, Any]) -> None:
    role = world["dbs"].env["SOURCE_USER"]
    source_rows = fetch(world["src"], "pairs", "pairs")
    odd = [r for r in source_rows if r[1] % 2]
    assert odd, "the fixture's snapshot must have rows the policy hides"
    _admin(world, sql.SQL("ALTER TABLE public.pairs OWNER TO postgres"))
    _admin(world, sql.SQL("GRANT SELECT ON public.pairs TO {}").format(sql.Identifier(role)))
    _admin(world, HIDE_ODD)
    _admin(world, "ALTER TABLE public.pairs ENABLE ROW LEVEL SECURITY")
    assert len(fetch(world["src"], "pairs", "pairs")) == len(source_rows) - len(odd)  # the subset a read sees

    _assert_refused(world, f'ALTER ROLE "{role}" BYPASSRLS', 'ALTER TABLE "public"."pairs" DISABLE ROW LEVEL SECURITY')
    assert _current(world) == source_rows

    _admin(world, sql.SQL("ALTER ROLE {} BYPASSRLS").format(sql.Identifier(role)), "postgres")
    proc = _merge(world)
    assert proc.returncode == 0, proc.stderr
    assert _current(world) == source_rows  # every row, none deleted


def test_the_owner_is_refused_only_when_the_table_forces_row_level_security(world: dict[str, Any]) -> None:
    source_rows = fetch(world["src"], "pairs", "pairs")
    _source(world, HIDE_ODD, "ALTER TABLE pairs ENABLE ROW LEVEL SECURITY")
    proc = _merge(world)  # the owner is exempt: every row
    assert proc.returncode == 0, proc.stderr
    assert _current(world) == source_rows

    _source(world, "ALTER TABLE pairs FORCE ROW LEVEL SECURITY")
    _assert_refused(world, 'ALTER TABLE "public"."pairs" NO FORCE ROW LEVEL SECURITY')
    assert _current(world) == source_rows


@pytest.mark.parametrize("policy", ["USING (true)", None], ids=["policy-showing-all", "no-policy"])
def test_a_policy_is_never_taken_as_proof_that_every_row_shows(world: dict[str, Any], policy: str | None) -> None:
    """A policy that happens to show every row today (or none defined, which hides every row) is still
    refused: whether a policy shows every row cannot be proved."""
    statements = ["ALTER TABLE pairs ENABLE ROW LEVEL SECURITY", "ALTER TABLE pairs FORCE ROW LEVEL SECURITY"]
    if policy:
        statements.insert(0, f"CREATE POLICY all_rows ON pairs FOR SELECT {policy}")
    _source(world, *statements)
    _assert_refused(world, "NO FORCE ROW LEVEL SECURITY")


def test_check_names_the_table(world: dict[str, Any]) -> None:
    dbs = world["dbs"]
    _source(world, "ALTER TABLE pairs ENABLE ROW LEVEL SECURITY", "ALTER TABLE pairs FORCE ROW LEVEL SECURITY")
    proc = run_job(["check", "--model", str(world["model"]), *dbs.merge_args()], dbs.env)
    assert proc.returncode == 1
    assert "FAIL source of store Store1: source table public.pairs" in proc.stdout
    assert "row-level security" in proc.stdout
