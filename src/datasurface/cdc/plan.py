"""What a change-capture batch reads: the slot's changes, or a full snapshot (and why).

The slot is never the only copy of the truth: without the slot (missing, invalidated), with a model whose
datasets changed, with a publication that lacked one of the store's tables (its changes were not decoded
meanwhile), or with a slot that moved past what the ledger merged, the batch is a full consistent snapshot.
The snapshot is taken after the slot's position is fixed, so the next change batch reads changes the
snapshot already holds; applying a key's last state again is harmless (the diff finds it unchanged),
which is why a snapshot taken later than the slot's start is exact.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import NamedTuple

from datasurface.cdc.capture import SlotState
from datasurface.cdc.pgoutput import format_lsn, parse_lsn
from datasurface.merge.ledger import Batch


class Plan(NamedTuple):
    snapshot: bool
    reason: str | None = None  # why a store that reads changes takes a snapshot (None: its first batch)
    catch_up: int | None = None  # changes: the ledger is ahead of the slot (a run stopped before advancing it)


def plan(slot: str, state: SlotState | None, last: Batch | None, fingerprint: str,
         repaired: Sequence[str] = ()) -> Plan:
    """`repaired`: the store's tables the publication lacked until this run added them."""
    if last is None:
        return Plan(snapshot=True)
    if state is None:
        return Plan(True, f"replication slot {slot} is missing on the source")
    if state.lost or state.confirmed is None:
        return Plan(True, f"replication slot {slot} was invalidated (wal_status = lost): the source removed WAL "
                          "it still needed")
    if last.fingerprint != fingerprint:
        return Plan(True, "the model's datasets of the store changed")
    if repaired:
        return Plan(True, f"the publication lacked table(s) {', '.join(repaired)} until now: their changes in the "
                          "meantime are not in the slot")
    if last.slot_lsn is None:
        return Plan(True, "the last batch was not read through the replication slot")
    merged = parse_lsn(last.slot_lsn)
    if state.confirmed > merged:
        return Plan(True, f"replication slot {slot} is at {format_lsn(state.confirmed)}, past what the platform "
                          f"merged ({last.slot_lsn}): changes in between were consumed elsewhere")
    return Plan(False, catch_up=merged if state.confirmed < merged else None)
