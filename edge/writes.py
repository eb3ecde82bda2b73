"""The terminal-facing writes, each a job for the writer thread (those on a
sale: earn, redeem, void, refund, live in ``sale_writes``).

A job checks its business rules and queues its op in the outbox inside the
same transaction, and records the answer under the terminal's idempotency
key, so the op is durable before the terminal hears of it and a retry gets
the first answer back. Business refusals raise EdgeError subclasses; the
writer rolls the job back to its savepoint, so a refused write leaves no
trace.
"""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Callable
from typing import Any

import msgpack

from protocol import Adjust, Enroll, Op, UpdateProfile
from protocol.normalize import name_key

from .errors import Conflict, NotFound, Unprocessable
from .store import balance_of, fetch_customer

Action = Callable[[sqlite3.Connection], tuple[int, dict[str, Any]]]
Response = tuple[int, bytes, bool]


def idempotent(terminal_id: str, key: str, request_hash: bytes, now: int, action: Action) -> Callable[
    [sqlite3.Connection], Response
]:
    """Wrap ``action`` so that one (terminal, key) pair runs it at most once."""

    def job(conn: sqlite3.Connection) -> Response:
        row = conn.execute(
            "SELECT request_hash, status, response FROM idempotency WHERE terminal_id = ? AND key = ?",
            (terminal_id, key),
        ).fetchone()
        if row is not None:
            if row[0] != request_hash:
                raise Conflict(
                    "this Idempotency-Key was used for a different request",
                    code="idempotency_key_reused",
                    field="Idempotency-Key",
                )
            return row[1], row[2], True
        status, body = action(conn)
        data = json.dumps(body, separators=(",", ":")).encode()
        conn.execute(
            "INSERT INTO idempotency (terminal_id, key, request_hash, status, response, created_at) "
            "VALUES (?, ?, ?, ?, ?, ?)",
            (terminal_id, key, request_hash, status, data, now),
        )
        return status, data, False

    return job


def queue(conn: sqlite3.Connection, op: Op, delta: int, sale_id: str | None) -> None:
    """Put ``op`` in the outbox with its pending balance change (``delta``)
    and what it takes from ``available`` (``op.debit``)."""
    conn.execute(
        "INSERT INTO outbox (op_id, kind, customer_id, sale_id, terminal_id, delta, debit, body, created_at) "
        "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
        (
            op.op_id,
            op.kind.value,
            op.customer_id,
            sale_id,
            op.terminal_id,
            delta,
            op.debit,
            msgpack.packb(op.to_wire(), use_bin_type=True),
            op.at,
        ),
    )


def confirmed(conn: sqlite3.Connection, customer_id: str) -> int:
    row = conn.execute("SELECT confirmed FROM customers WHERE customer_id = ?", (customer_id,)).fetchone()
    if row is None:
        raise NotFound("no customer with this id", code="unknown_customer", field="customer_id")
    points: int = row[0]
    return points


def _check_unique(conn: sqlite3.Connection, customer_id: str, column: str, value: str | None) -> None:
    if value is None:
        return
    # A merged profile's tombstone counts as its survivor: its own survivor may take the value back.
    row = conn.execute(
        f"SELECT COALESCE(merged_into, customer_id) FROM customers WHERE {column} = ?"
        " AND COALESCE(merged_into, customer_id) != ?", (value, customer_id)
    ).fetchone()
    if row is not None:
        field = "card_code" if column == "card_code" else column
        raise Conflict(
            f"another customer already has this {field}",
            code=f"{field}_taken",
            field=field,
            extra={"customer_id": row[0]},
        )


def enroll(op: Enroll) -> Action:
    def action(conn: sqlite3.Connection) -> tuple[int, dict[str, Any]]:
        for column in ("phone", "email", "card_code"):
            _check_unique(conn, op.customer_id, column, getattr(op, column))
        consent = json.dumps(
            {
                "terms_accepted": op.consent.terms_accepted,
                "channels": list(op.consent.channels),
                "source": op.consent.source,
                "staff": op.consent.staff,
                "terminal_id": op.terminal_id,
                "at": op.consent.at,
            }
        )
        conn.execute(
            "INSERT INTO customers (customer_id, name, name_key, phone, email, card_code, consent, "
            "created_at, updated_at, groups, opted_out) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
            (op.customer_id, op.name, name_key(op.name), op.phone, op.email, op.card_code, consent,
             op.at, op.at, json.dumps(list(op.groups)), op.opted_out),
        )
        # The signup bonus is pending until the cloud confirms it, like an earn.
        queue(conn, op, op.signup_bonus, None)
        return 201, fetch_customer(conn, op.customer_id, op.at)

    return action


def update_profile(op: UpdateProfile) -> Action:
    def action(conn: sqlite3.Connection) -> tuple[int, dict[str, Any]]:
        confirmed(conn, op.customer_id)
        sets: dict[str, str | int | None] = {}
        if op.groups is not None:
            sets["groups"] = json.dumps(list(op.groups))
        if op.opted_out is not None:
            sets["opted_out"] = op.opted_out
        for column in ("name", "phone", "email", "card_code"):
            value = getattr(op, column)
            if value is not None:
                if column != "name":
                    _check_unique(conn, op.customer_id, column, value)
                sets[column] = value
        for column in op.clear:
            sets[column] = None
        if op.name is not None:
            sets["name_key"] = name_key(op.name)
        assignments = ", ".join(f"{column} = ?" for column in sets)
        conn.execute(
            f"UPDATE customers SET {assignments}, updated_at = ? WHERE customer_id = ?",
            (*sets.values(), op.at, op.customer_id),
        )
        queue(conn, op, 0, None)
        return 200, fetch_customer(conn, op.customer_id, op.at)

    return action


def require_available(conn: sqlite3.Connection, customer_id: str, points: int, now: int,
                      field: str = "points") -> None:
    available = balance_of(conn, customer_id, now)["available"]
    if points > available:
        raise Unprocessable(
            f"not enough points: {available} available, {points} asked",
            code="insufficient_balance",
            field=field,
            extra={"available": available},
        )


def adjust(op: Adjust) -> Action:
    def action(conn: sqlite3.Connection) -> tuple[int, dict[str, Any]]:
        if op.points < 0:
            require_available(conn, op.customer_id, -op.points, op.at)
        else:
            confirmed(conn, op.customer_id)
        queue(conn, op, op.points, None)
        return 201, {
            "op_id": op.op_id,
            "customer_id": op.customer_id,
            "points": op.points,
            "reason": op.reason,
            "actor": op.actor,
            "balance": balance_of(conn, op.customer_id, op.at),
        }

    return action

