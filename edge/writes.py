"""The terminal-facing writes, each a job for the writer thread.

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

from protocol import Adjust, Earn, Enroll, Op, Redeem, UpdateProfile, Void
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


def _queue(conn: sqlite3.Connection, op: Op, delta: int, sale_id: str | None) -> None:
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


def _confirmed(conn: sqlite3.Connection, customer_id: str) -> int:
    row = conn.execute("SELECT confirmed FROM customers WHERE customer_id = ?", (customer_id,)).fetchone()
    if row is None:
        raise NotFound("no customer with this id", code="unknown_customer", field="customer_id")
    confirmed: int = row[0]
    return confirmed


def _check_unique(conn: sqlite3.Connection, customer_id: str, column: str, value: str | None) -> None:
    if value is None:
        return
    row = conn.execute(
        f"SELECT customer_id FROM customers WHERE {column} = ? AND customer_id != ?", (value, customer_id)
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
            "created_at, updated_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
            (op.customer_id, op.name, name_key(op.name), op.phone, op.email, op.card_code, consent,
             op.at, op.at),
        )
        _queue(conn, op, 0, None)
        return 201, fetch_customer(conn, op.customer_id)

    return action


def update_profile(op: UpdateProfile) -> Action:
    def action(conn: sqlite3.Connection) -> tuple[int, dict[str, Any]]:
        _confirmed(conn, op.customer_id)
        sets: dict[str, str | None] = {}
        for column in ("name", "phone", "email", "card_code"):
            value = getattr(op, column)
            if value is not None:
                if column != "name":
                    _check_unique(conn, op.customer_id, column, value)
                sets[column] = value
        for column in op.clear:
            sets[column] = None
        if "name" in sets and sets["name"] is not None:
            sets["name_key"] = name_key(sets["name"])
        assignments = ", ".join(f"{column} = ?" for column in sets)
        conn.execute(
            f"UPDATE customers SET {assignments}, updated_at = ? WHERE customer_id = ?",
            (*sets.values(), op.at, op.customer_id),
        )
        _queue(conn, op, 0, None)
        return 200, fetch_customer(conn, op.customer_id)

    return action


def _sale(conn: sqlite3.Connection, sale_id: str, customer_id: str) -> tuple[int, int, str | None] | None:
    row = conn.execute(
        "SELECT customer_id, earned, redeemed, earn_op_id, voided_at FROM sales WHERE sale_id = ?",
        (sale_id,),
    ).fetchone()
    if row is None:
        return None
    if row[4] is not None:
        raise Conflict("this sale was voided", code="sale_voided", field="sale_id")
    if row[0] != customer_id:
        raise Conflict("this sale belongs to another customer", code="sale_customer_mismatch", field="sale_id")
    return row[1], row[2], row[3]


def _balance(conn: sqlite3.Connection, customer_id: str) -> dict[str, int]:
    return balance_of(conn, customer_id, _confirmed(conn, customer_id))


def earn(op: Earn) -> Action:
    def action(conn: sqlite3.Connection) -> tuple[int, dict[str, Any]]:
        confirmed = _confirmed(conn, op.customer_id)
        sale = _sale(conn, op.sale_id, op.customer_id)
        if sale is not None and sale[2] is not None:
            raise Conflict("this sale has already earned", code="already_earned", field="sale_id")
        conn.execute(
            "INSERT INTO sales (sale_id, customer_id, amount, earned, earn_op_id) VALUES (?, ?, ?, ?, ?) "
            "ON CONFLICT(sale_id) DO UPDATE SET amount = excluded.amount, earned = excluded.earned, "
            "earn_op_id = excluded.earn_op_id",
            (op.sale_id, op.customer_id, op.amount, op.points, op.op_id),
        )
        _queue(conn, op, op.points, op.sale_id)
        return 201, {
            "op_id": op.op_id,
            "sale_id": op.sale_id,
            "customer_id": op.customer_id,
            "amount": op.amount,
            "points": op.points,
            "program_version": op.program_version,
            "balance": balance_of(conn, op.customer_id, confirmed),
        }

    return action


def _require_available(conn: sqlite3.Connection, customer_id: str, points: int) -> None:
    balance = _balance(conn, customer_id)
    if points > balance["available"]:
        raise Unprocessable(
            f"not enough points: {balance['available']} available, {points} asked",
            code="insufficient_balance",
            field="points",
            extra={"available": balance["available"]},
        )


def redeem(op: Redeem) -> Action:
    def action(conn: sqlite3.Connection) -> tuple[int, dict[str, Any]]:
        _sale(conn, op.sale_id, op.customer_id)
        _require_available(conn, op.customer_id, op.points)
        conn.execute(
            "INSERT INTO sales (sale_id, customer_id, redeemed) VALUES (?, ?, ?) "
            "ON CONFLICT(sale_id) DO UPDATE SET redeemed = redeemed + excluded.redeemed",
            (op.sale_id, op.customer_id, op.points),
        )
        _queue(conn, op, -op.points, op.sale_id)
        return 201, {
            "op_id": op.op_id,
            "sale_id": op.sale_id,
            "customer_id": op.customer_id,
            "points": op.points,
            "program_version": op.program_version,
            "balance": _balance(conn, op.customer_id),
        }

    return action


def void(sale_id: str, make_op: Callable[[str, int, int], Void]) -> Action:
    """Reverse a sale; ``make_op(customer_id, reversed, returned)`` builds the op."""

    def action(conn: sqlite3.Connection) -> tuple[int, dict[str, Any]]:
        row = conn.execute(
            "SELECT customer_id, earned, redeemed, voided_at FROM sales WHERE sale_id = ?", (sale_id,)
        ).fetchone()
        if row is None:
            raise NotFound("no loyalty activity for this sale", code="unknown_sale", field="sale_id")
        customer_id, earned, redeemed, voided_at = row
        if voided_at is not None:
            raise Conflict("this sale was already voided", code="already_voided", field="sale_id")
        op = make_op(customer_id, earned, redeemed)
        conn.execute("UPDATE sales SET voided_at = ? WHERE sale_id = ?", (op.at, sale_id))
        _queue(conn, op, redeemed - earned, sale_id)
        return 201, {
            "op_id": op.op_id,
            "sale_id": sale_id,
            "customer_id": customer_id,
            "reversed_points": earned,
            "returned_points": redeemed,
            "balance": _balance(conn, customer_id),
        }

    return action


def adjust(op: Adjust) -> Action:
    def action(conn: sqlite3.Connection) -> tuple[int, dict[str, Any]]:
        if op.points < 0:
            _require_available(conn, op.customer_id, -op.points)
        else:
            _confirmed(conn, op.customer_id)
        _queue(conn, op, op.points, None)
        return 201, {
            "op_id": op.op_id,
            "customer_id": op.customer_id,
            "points": op.points,
            "reason": op.reason,
            "actor": op.actor,
            "balance": _balance(conn, op.customer_id),
        }

    return action

