"""Writes on a sale, each a job for the writer thread: earn, redeem, void, refund.

A sale row holds what this edge did on it: the points earned (and the earn's
basis: the sale, the program version and the customer as rated, so a refund
recomputes exactly), the points redeemed, the quantities returned and what
refunds took back and gave back. A void reverses what refunds left; both
give back first, then take back under the program's refund policy against
the balance this edge projects (confirmed plus pending), as the cloud does
against its own.
"""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Callable
from typing import Any

from protocol import Earn, LocalProtocolError, Redeem, Refund, Void
from protocol.earning import Customer as RulesCustomer
from protocol.earning import RefundPolicy
from protocol.refunds import EarnBasis, Reversal, Standing, refund_reversal, settle
from protocol.rules import earning_rules
from protocol.sale import returned_after

from . import claim_writes
from .errors import Conflict, EdgeError, InvalidInput, NotFound, Unprocessable
from .store import balance_of, program_at
from .writes import Action, confirmed, queue, require_available

_SALE_COLUMNS = "customer_id, earned, redeemed, earn_op_id, voided_at, basis, returned, earn_reversed, redeem_returned"
#: How a refund's line errors answer: an unknown line or too many is unprocessable, twice is a conflict.
_LINE_ERRORS: dict[str, type[EdgeError]] = {
    "unknown_line": Unprocessable, "exceeds_sold": Unprocessable, "already_refunded": Conflict,
    "duplicate_line": InvalidInput,
}


def _sale_row(conn: sqlite3.Connection, sale_id: str) -> tuple[Any, ...] | None:
    row: tuple[Any, ...] | None = conn.execute(
        f"SELECT {_SALE_COLUMNS} FROM sales WHERE sale_id = ?", (sale_id,)
    ).fetchone()
    return row


def _open_sale(conn: sqlite3.Connection, sale_id: str, customer_id: str) -> bool:
    """Whether the sale has earned already; refused if voided or another customer's."""
    row = conn.execute(
        "SELECT customer_id, earn_op_id, voided_at FROM sales WHERE sale_id = ?", (sale_id,)
    ).fetchone()
    if row is None:
        return False
    if row[2] is not None:
        raise Conflict("this sale was voided", code="sale_voided", field="sale_id")
    if row[0] != customer_id:
        raise Conflict("this sale belongs to another customer", code="sale_customer_mismatch", field="sale_id")
    return row[1] is not None


def _projected(conn: sqlite3.Connection, customer_id: str, now: int) -> int:
    """The balance this edge expects the cloud to hold once it has every pending op."""
    balance = balance_of(conn, customer_id, now)
    return balance["confirmed"] + balance["pending"]


def earn(op: Earn, rating: RulesCustomer, extra: dict[str, Any] | None = None) -> Action:
    """Record a paid sale's earn; ``rating`` is the customer as the points were computed for;
    ``extra`` goes into the answer as is."""
    extra = extra or {}
    basis = EarnBasis.of(op, rating)
    basis_bytes = None if basis is None else basis.to_bytes()

    def action(conn: sqlite3.Connection) -> tuple[int, dict[str, Any]]:
        confirmed(conn, op.customer_id)
        if _open_sale(conn, op.sale_id, op.customer_id):
            raise Conflict("this sale has already earned", code="already_earned", field="sale_id")
        claim_writes.refuse_if_unclaimed(conn, op.sale_id)
        conn.execute(
            "INSERT INTO sales (sale_id, customer_id, amount, earned, earn_op_id, basis) VALUES (?, ?, ?, ?, ?, ?) "
            "ON CONFLICT(sale_id) DO UPDATE SET amount = excluded.amount, earned = excluded.earned, "
            "earn_op_id = excluded.earn_op_id, basis = excluded.basis",
            (op.sale_id, op.customer_id, op.amount, op.points, op.op_id, basis_bytes),
        )
        queue(conn, op, op.points, op.sale_id)
        linked = op.sale is not None and claim_writes.note_card_payment(conn, op.customer_id, op.sale, op.op_id,
                                                                        op.at)
        return 201, {
            "op_id": op.op_id,
            "sale_id": op.sale_id,
            "customer_id": op.customer_id,
            "amount": op.amount,
            "points": op.points,
            "program_version": op.program_version,
            "balance": balance_of(conn, op.customer_id, op.at),
            "card_linked": linked,
            **extra,
        }

    return action


def redeem(op: Redeem, field: str) -> Action:
    """Spend points on a sale, up to what is available (``field`` names the request's amount)."""

    def action(conn: sqlite3.Connection) -> tuple[int, dict[str, Any]]:
        _open_sale(conn, op.sale_id, op.customer_id)
        require_available(conn, op.customer_id, op.points, op.at, field)
        conn.execute(
            "INSERT INTO sales (sale_id, customer_id, redeemed) VALUES (?, ?, ?) "
            "ON CONFLICT(sale_id) DO UPDATE SET redeemed = redeemed + excluded.redeemed",
            (op.sale_id, op.customer_id, op.points),
        )
        queue(conn, op, -op.points, op.sale_id)
        return 201, {
            "op_id": op.op_id,
            "sale_id": op.sale_id,
            "customer_id": op.customer_id,
            "points": op.points,
            "rewards": [{"reward_id": reward_id, "count": count} for reward_id, count in op.rewards],
            "program_version": op.program_version,
            "balance": balance_of(conn, op.customer_id, op.at),
        }

    return action


def _reversal_answer(conn: sqlite3.Connection, op: Void | Refund, shortfall: int) -> dict[str, Any]:
    return {
        "op_id": op.op_id,
        "sale_id": op.sale_id,
        "customer_id": op.customer_id,
        "reversed_points": op.reversed_points,
        "returned_points": op.returned_points,
        "shortfall": shortfall,
        "balance": balance_of(conn, op.customer_id, op.at),
    }


def _unvoided(conn: sqlite3.Connection, sale_id: str) -> tuple[Any, ...]:
    row = _sale_row(conn, sale_id)
    if row is None:
        raise NotFound("no loyalty activity for this sale", code="unknown_sale", field="sale_id")
    if row[4] is not None:
        raise Conflict("this sale was already voided", code="already_voided", field="sale_id")
    return row


def void(sale_id: str, make_op: Callable[[str, int, int], Void], policy: RefundPolicy, now: int) -> Action:
    """Reverse what the sale earned and redeemed, less what refunds already did;
    ``make_op(customer_id, reversed, returned)`` builds the op."""

    def action(conn: sqlite3.Connection) -> tuple[int, dict[str, Any]]:
        customer_id, earned, redeemed, _, _, _, _, earn_reversed, redeem_returned = _unvoided(conn, sale_id)
        standing = Standing(earned, earn_reversed, redeemed, redeem_returned)
        reversal = Reversal(standing.earn_left, standing.redeem_left)
        settled = settle(_projected(conn, customer_id, now), reversal, policy)
        op = make_op(customer_id, reversal.take, reversal.give)
        conn.execute("UPDATE sales SET voided_at = ? WHERE sale_id = ?", (op.at, sale_id))
        queue(conn, op, settled.delta(reversal.give), sale_id)
        return 201, _reversal_answer(conn, op, settled.shortfall)

    return action


def refund(sale_id: str, lines: tuple[tuple[str, int], ...], make_op: Callable[[str, int, int], Refund],
           policy: RefundPolicy, now: int) -> Action:
    """Return ``lines`` of a sale: take back what they earned, give back the
    redeemed share; ``make_op(customer_id, reversed, returned)`` builds the op."""

    def action(conn: sqlite3.Connection) -> tuple[int, dict[str, Any]]:
        row = _sale_row(conn, sale_id)
        if row is None:
            raise NotFound("no loyalty activity for this sale", code="unknown_sale", field="sale_id")
        customer_id, earned, redeemed, _, voided_at, basis_bytes, returned_json, earn_reversed, redeem_returned = row
        if voided_at is not None:
            raise Conflict("this sale was voided", code="sale_voided", field="sale_id")
        if basis_bytes is None:
            raise Unprocessable("this sale's lines were never recorded (an earn by amount, or none): void it",
                                code="no_sale_lines", field="lines")
        basis = EarnBasis.from_bytes(basis_bytes)
        try:
            returned = returned_after(basis.sale, json.loads(returned_json), lines)
        except LocalProtocolError as exc:
            raise _LINE_ERRORS.get(exc.code, InvalidInput)(exc.message, code=exc.code, field=exc.field) from exc
        program = program_at(conn, basis.program_version)
        if program is None:
            raise Conflict(f"program version {basis.program_version} of this sale's earn is not on this node",
                           code="program_unknown", field="sale_id")
        standing = Standing(earned, earn_reversed, redeemed, redeem_returned)
        reversal = refund_reversal(basis, earning_rules(program), standing, returned)
        settled = settle(_projected(conn, customer_id, now), reversal, policy)
        op = make_op(customer_id, reversal.take, reversal.give)
        conn.execute(
            "UPDATE sales SET returned = ?, earn_reversed = earn_reversed + ?, redeem_returned = redeem_returned + ?"
            " WHERE sale_id = ?",
            (json.dumps(returned, sort_keys=True), reversal.take, reversal.give, sale_id),
        )
        queue(conn, op, settled.delta(reversal.give), sale_id)
        answer = _reversal_answer(conn, op, settled.shortfall)
        answer["lines"] = [{"line_id": line_id, "quantity": quantity} for line_id, quantity in lines]
        return 201, answer

    return action
