"""The business operations the simulator performs, each inside the caller's ONE transaction.

Every operation keeps the invariant: a customer's `primaryaddressid` and `billingaddressid` point at an
existing address of that customer. Only brand-new addresses ever become primary or billing, and only an
address that is neither is deleted, with both rows locked; so concurrent simulators cannot break it.
Rows to change are picked with `FOR UPDATE SKIP LOCKED`: a row another simulator is changing is skipped,
never waited for. Ids come from one sequence of the database (see backends/), so simulators never collide.

All choices come from the `random.Random` passed in and from the data itself, so the same seed against
the same starting data gives the same operations.
"""

from __future__ import annotations

import datetime as dt
import random
import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from datasurface.simulator.backends.base import Backend

CUSTOMER_PREFIX = "C"
ADDRESS_PREFIX = "A"

FIRST_NAMES = ("Ada", "Alan", "Grace", "Edsger", "Barbara", "Donald", "Frances", "Ken", "Margaret", "Dennis",
               "Radia", "Linus", "Sophie", "John", "Katherine", "Tim", "Hedy", "Niklaus", "Anita", "Bjarne")
LAST_NAMES = ("Lovelace", "Turing", "Hopper", "Dijkstra", "Liskov", "Knuth", "Allen", "Thompson", "Hamilton",
              "Ritchie", "Perlman", "Torvalds", "Wilson", "Backus", "Johnson", "Berners-Lee", "Lamarr",
              "Wirth", "Borg", "Stroustrup")
STREETS = ("Main St", "Oak Ave", "Maple Dr", "Cedar Ln", "Park Rd", "Elm St", "Lake View", "Hill Crest",
           "River Rd", "Sunset Blvd", "Washington Ave", "2nd St", "Church St", "Mill Ln", "Spring St")
CITIES = (("Springfield", "IL", "627"), ("Portland", "OR", "972"), ("Austin", "TX", "787"),
          ("Boston", "MA", "021"), ("Denver", "CO", "802"), ("Madison", "WI", "537"),
          ("Raleigh", "NC", "276"), ("Tucson", "AZ", "857"), ("Albany", "NY", "122"),
          ("Savannah", "GA", "314"))
DOMAINS = ("example.com", "example.org", "example.net", "mail.test")
_DOB_FIRST = dt.date(1940, 1, 1).toordinal()
_DOB_LAST = dt.date(2006, 12, 31).toordinal()


@dataclass(frozen=True)
class Outcome:
    """What an operation did: its kind (an operation may fall back to another) and one line about it."""

    kind: str
    detail: str


@dataclass(frozen=True)
class Tx:
    """The cursor of the caller's transaction, and the backend for what its database spells differently."""

    cur: Any
    backend: Backend


Operation = Callable[[Tx, random.Random], Outcome]


# --- values -----------------------------------------------------------------------------------


def next_id(tx: Tx, prefix: str) -> str:
    return f"{prefix}{tx.backend.next_id(tx.cur):012d}"


def _email(rng: random.Random, first: str, last: str) -> str:
    name = re.sub(r"[^a-z.]", "", f"{first}.{last}".lower())
    return f"{name}{rng.randint(1, 999)}@{rng.choice(DOMAINS)}"


def _phone(rng: random.Random) -> str:
    return f"+1-{rng.randint(201, 989)}-555-{rng.randint(0, 9999):04d}"


def _street(rng: random.Random) -> str:
    return f"{rng.randint(1, 9999)} {rng.choice(STREETS)}"


def _zip(rng: random.Random, prefix: str) -> str:
    return f"{prefix}{rng.randint(0, 99):02d}"


def _city(rng: random.Random) -> tuple[str, str, str]:
    city, state, zip_prefix = rng.choice(CITIES)
    return city, state, _zip(rng, zip_prefix)


def _insert_address(tx: Tx, address_id: str, customer_id: str, rng: random.Random) -> None:
    city, state, zipcode = _city(rng)
    tx.cur.execute(
        "INSERT INTO addresses (id, customerid, streetname, city, state, zipcode)"
        " VALUES (%s, %s, %s, %s, %s, %s)",
        [address_id, customer_id, _street(rng), city, state, zipcode],
    )


# --- picking rows -----------------------------------------------------------------------------


def _probe_start(tx: Tx, table: str, prefix: str, rng: random.Random) -> str | None:
    """A random id to start looking from (ids are zero-padded, so text order is number order);
    None when the table is empty."""
    tx.cur.execute(f"SELECT max(id) FROM {table}")  # noqa: S608 - table is one of two constants
    row = tx.cur.fetchone()
    if row is None or row[0] is None:
        return None
    digits = str(row[0]).removeprefix(prefix)
    top = int(digits) if digits.isdigit() else 1
    return f"{prefix}{rng.randint(1, max(top, 1)):012d}"


def _pick(tx: Tx, query: str, start: str) -> tuple[object, ...] | None:
    """The first row at or after `start` that matches (wrapping around), locked for this transaction.
    `query` holds `{cmp}` where the id comparison goes."""
    for cmp in (">=", "<"):
        tx.cur.execute(query.format(cmp=cmp), [start])
        row = tx.cur.fetchone()
        if row is not None:
            return tuple(row)
    return None


def _pick_customer(tx: Tx, rng: random.Random) -> tuple[object, ...] | None:
    start = _probe_start(tx, "customers", CUSTOMER_PREFIX, rng)
    if start is None:
        return None
    return _pick(tx, "SELECT id, firstname, lastname FROM customers WHERE id {cmp} %s "
                      "ORDER BY id LIMIT 1 FOR UPDATE SKIP LOCKED", start)


# --- the operations ---------------------------------------------------------------------------


def create_customer(tx: Tx, rng: random.Random) -> Outcome:
    """A new customer with a first address, which is both primary and billing address."""
    customer_id = next_id(tx, CUSTOMER_PREFIX)
    address_id = next_id(tx, ADDRESS_PREFIX)
    first, last = rng.choice(FIRST_NAMES), rng.choice(LAST_NAMES)
    dob = dt.date.fromordinal(rng.randint(_DOB_FIRST, _DOB_LAST))
    tx.cur.execute(
        "INSERT INTO customers (id, firstname, lastname, dob, email, phone, primaryaddressid,"
        " billingaddressid) VALUES (%s, %s, %s, %s, %s, %s, %s, %s)",
        [customer_id, first, last, dob, _email(rng, first, last), _phone(rng), address_id, address_id],
    )
    _insert_address(tx, address_id, customer_id, rng)
    return Outcome("create_customer", f"customer {customer_id} ({first} {last}) with address {address_id}")


def update_contact(tx: Tx, rng: random.Random) -> Outcome:
    """A customer's new email and/or phone."""
    row = _pick_customer(tx, rng)
    if row is None:
        return create_customer(tx, rng)
    customer_id, first, last = (str(v) for v in row)
    what = rng.choice(("email", "phone", "email+phone"))
    email = _email(rng, first, last) if "email" in what else None
    phone = _phone(rng) if "phone" in what else None
    tx.cur.execute(
        "UPDATE customers SET email = coalesce(%s, email), phone = coalesce(%s, phone) WHERE id = %s",
        [email, phone, customer_id],
    )
    return Outcome("update_contact", f"customer {customer_id}: new {what}")


def add_address(tx: Tx, rng: random.Random) -> Outcome:
    """Another address for a customer; sometimes it becomes the billing address."""
    row = _pick_customer(tx, rng)
    if row is None:
        return create_customer(tx, rng)
    customer_id = str(row[0])
    address_id = next_id(tx, ADDRESS_PREFIX)
    _insert_address(tx, address_id, customer_id, rng)
    billing = rng.random() < 0.3
    if billing:
        tx.cur.execute("UPDATE customers SET billingaddressid = %s WHERE id = %s", [address_id, customer_id])
    return Outcome("add_address",
                   f"address {address_id} for customer {customer_id}" + (" (now billing)" if billing else ""))


def change_address(tx: Tx, rng: random.Random) -> Outcome:
    """An address's street, or city/state/zip, or only its zip changes."""
    start = _probe_start(tx, "addresses", ADDRESS_PREFIX, rng)
    row = None if start is None else _pick(
        tx, "SELECT id, zipcode FROM addresses WHERE id {cmp} %s ORDER BY id LIMIT 1 FOR UPDATE SKIP LOCKED",
        start)
    if row is None:
        return create_customer(tx, rng)
    address_id, old_zip = str(row[0]), str(row[1] or "00000")
    what = rng.choice(("street", "city/state/zip", "zip"))
    if what == "street":
        tx.cur.execute("UPDATE addresses SET streetname = %s WHERE id = %s", [_street(rng), address_id])
    elif what == "zip":
        tx.cur.execute("UPDATE addresses SET zipcode = %s WHERE id = %s", [_zip(rng, old_zip[:3]), address_id])
    else:
        city, state, zipcode = _city(rng)
        tx.cur.execute("UPDATE addresses SET city = %s, state = %s, zipcode = %s WHERE id = %s",
                    [city, state, zipcode, address_id])
    return Outcome("change_address", f"address {address_id}: new {what}")


_DELETABLE = ("SELECT a.id, a.customerid FROM addresses a JOIN customers c ON c.id = a.customerid "
              "WHERE a.id {cmp} %s AND a.id <> c.primaryaddressid AND a.id <> c.billingaddressid "
              "ORDER BY a.id LIMIT 1")


def delete_address(tx: Tx, rng: random.Random) -> Outcome:
    """Delete an address that is neither its customer's primary nor billing address (customer locked
    too); with none to delete, add one instead."""
    start = _probe_start(tx, "addresses", ADDRESS_PREFIX, rng)
    row = None if start is None else _pick(
        tx,
        f"{_DELETABLE} {tx.backend.lock_join_rows}",  # the backend's locking clause
        start,
    )
    if row is None:
        return add_address(tx, rng)
    address_id, customer_id = str(row[0]), str(row[1])
    tx.cur.execute("DELETE FROM addresses WHERE id = %s", [address_id])
    return Outcome("delete_address", f"address {address_id} of customer {customer_id}")


# kind -> (weight, operation), in a fixed order: the order is part of what makes --seed reproducible
OPERATIONS: dict[str, tuple[int, Operation]] = {
    "create_customer": (15, create_customer),
    "update_contact": (25, update_contact),
    "add_address": (20, add_address),
    "change_address": (30, change_address),
    "delete_address": (10, delete_address),
}


def choose(rng: random.Random) -> str:
    kinds = list(OPERATIONS)
    return rng.choices(kinds, weights=[OPERATIONS[k][0] for k in kinds])[0]


def invariant_violations(conn: Any) -> list[tuple[str, str, str | None]]:
    """(customer id, which reference, address id) for every primary/billing address id that is
    missing, or points at no address of that customer. Empty when the data is consistent."""
    with conn.cursor() as cur:
        cur.execute(
            """
            SELECT r.id, r.kind, r.address_id
            FROM (SELECT id, 'primary' AS kind, primaryaddressid AS address_id FROM customers
                  UNION ALL
                  SELECT id, 'billing', billingaddressid FROM customers) AS r
            WHERE r.address_id IS NULL
               OR NOT EXISTS (SELECT 1 FROM addresses a WHERE a.id = r.address_id AND a.customerid = r.id)
            ORDER BY 1, 2
            """
        )
        rows = [(str(i), str(k), None if a is None else str(a)) for i, k, a in cur.fetchall()]
    conn.rollback()
    return rows
