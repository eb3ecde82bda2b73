"""Writes for card-linked profiles and retroactive claims, each inside the writer's transaction.

*Card links.* Every earn of a sale that carries a profile moves the
profile's card run (``protocol.claims.card_step``): the second payment in a
row with the same processor token links it (replacing the profile's card,
taking the token from any other profile). The link is local and works
offline; the cloud computes the same from the earns it applies across
stores and sends links down with the customers (``apply_cloud_link``).

*Claims.* A whole-sale earn with no customer and no linked card records
the sale as unclaimed: the claim code's SHA-256 is stored, the code itself
only goes back to the terminal. A claim at the terminal attaches the sale
to a customer and earns its points with the sale's program version; wrong,
used or expired codes count against the terminal's hourly limit, which is
stored so a restart keeps it.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Callable
from typing import Any

from protocol import Claim, UnclaimedSale
from protocol.claims import card_step, sale_bytes, sale_of
from protocol.earning import compute_earn
from protocol.refunds import EarnBasis
from protocol.rules import earning_rules
from protocol.sale import Sale

from .errors import Conflict, EdgeError, NotFound, TooManyRequests
from .store import balance_of, customer_rating, program_at
from .writes import Action, confirmed, queue

#: Refused claims (unknown, used or expired codes) a terminal may make per hour.
CLAIM_FAILURES_PER_HOUR = 10
HOUR_MS = 3600 * 1000


# ---------------------------------------------------------------- card links


def linked_customer(conn: sqlite3.Connection, token: str) -> str | None:
    row = conn.execute("SELECT customer_id FROM card_links WHERE token = ?", (token,)).fetchone()
    return None if row is None else str(row[0])


def _link(conn: sqlite3.Connection, token: str, customer_id: str, op_id: str | None, at: int) -> None:
    conn.execute("DELETE FROM card_links WHERE token = ? OR customer_id = ?", (token, customer_id))
    conn.execute("INSERT INTO card_links (token, customer_id, op_id, linked_at) VALUES (?, ?, ?, ?)",
                 (token, customer_id, op_id, at))


def note_card_payment(conn: sqlite3.Connection, customer_id: str, sale: Sale, op_id: str, at: int) -> bool:
    """Move the profile's card run with this earn; True if it linked a card."""
    row = conn.execute("SELECT last_token FROM card_streaks WHERE customer_id = ?", (customer_id,)).fetchone()
    step = card_step(None if row is None else row[0], sale)
    if step is None:
        return False
    last, link = step
    conn.execute("INSERT INTO card_streaks (customer_id, last_token) VALUES (?, ?) "
                 "ON CONFLICT(customer_id) DO UPDATE SET last_token = excluded.last_token", (customer_id, last))
    if link is None:
        return False
    _link(conn, link, customer_id, op_id, at)
    return True


def apply_cloud_link(conn: sqlite3.Connection, customer_id: str, token: str | None, at: int) -> None:
    """The cloud's word on a customer's card (from a downlink record), unless this
    node linked one by an earn the cloud has not acknowledged yet (that one is newer)."""
    local = conn.execute(
        "SELECT l.token FROM card_links l JOIN outbox o ON o.op_id = l.op_id AND o.status IS NULL "
        "WHERE l.customer_id = ?", (customer_id,),
    ).fetchone()
    if local is not None:
        return
    if token is None:
        conn.execute("DELETE FROM card_links WHERE customer_id = ?", (customer_id,))
    else:
        _link(conn, token, customer_id, None, at)


# -------------------------------------------------------------------- claims


def refuse_if_unclaimed(conn: sqlite3.Connection, sale_id: str) -> None:
    """A sale recorded without a profile earns through its claim code only."""
    if conn.execute("SELECT 1 FROM claims WHERE sale_id = ?", (sale_id,)).fetchone() is not None:
        raise Conflict("this sale was recorded without a profile: claim it with its code", code="sale_unclaimed",
                       field="sale_id")


def record_unclaimed(op: UnclaimedSale, answer: dict[str, Any]) -> Action:
    """Keep a sale paid with no profile, to be claimed with its code (``answer`` carries the code)."""

    def action(conn: sqlite3.Connection) -> tuple[int, dict[str, Any]]:
        if conn.execute("SELECT 1 FROM sales WHERE sale_id = ?", (op.sale_id,)).fetchone() is not None:
            raise Conflict("this sale has already earned", code="already_earned", field="sale.sale_id")
        refuse_if_unclaimed(conn, op.sale_id)
        conn.execute(
            "INSERT INTO claims (code_hash, sale_id, op_id, amount, program_version, sale, at, expires_at) "
            "VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
            (op.claim_hash, op.sale_id, op.op_id, op.amount, op.program_version,
             sale_bytes(op.sale), op.at, op.expires_at),
        )
        queue(conn, op, 0, op.sale_id)
        return 201, answer

    return action


def _failed(conn: sqlite3.Connection, terminal_id: str, window: int, error: EdgeError) -> tuple[int, dict[str, Any]]:
    """Count a refused claim against the terminal, and answer it (the count commits; nothing else changes)."""
    conn.execute(
        "INSERT INTO claim_attempts (terminal_id, window_start, failures) VALUES (?, ?, 1) "
        "ON CONFLICT(terminal_id, window_start) DO UPDATE SET failures = failures + 1", (terminal_id, window),
    )
    conn.execute("DELETE FROM claim_attempts WHERE terminal_id = ? AND window_start < ?", (terminal_id, window))
    return error.status, error.to_json()


def claim(code_hash: str | None, customer_id: str, terminal_id: str, now: int,
          make_op: Callable[[str, int, int], Claim]) -> Action:
    """Attach an unclaimed sale of this store to ``customer_id``; ``code_hash`` None is a malformed code.
    ``make_op(sale_id, points, program_version)`` builds the Claim op."""
    window = now - now % HOUR_MS

    def action(conn: sqlite3.Connection) -> tuple[int, dict[str, Any]]:
        row = conn.execute("SELECT failures FROM claim_attempts WHERE terminal_id = ? AND window_start = ?",
                           (terminal_id, window)).fetchone()
        if row is not None and row[0] >= CLAIM_FAILURES_PER_HOUR:
            raise TooManyRequests(
                f"too many refused claims from this terminal: try again after {(window + HOUR_MS - now) // 60000 + 1}"
                " minutes", code="too_many_claims", field="code", extra={"retry_after_ms": window + HOUR_MS - now})
        confirmed(conn, customer_id)
        found = None if code_hash is None else conn.execute(
            "SELECT sale_id, program_version, sale, at, expires_at, claimed_by FROM claims WHERE code_hash = ?",
            (code_hash,),
        ).fetchone()
        if found is None:
            return _failed(conn, terminal_id, window, NotFound(
                "no sale of this store has this claim code: check the receipt (another store's receipt is"
                " claimed on the portal)", code="unknown_code", field="code"))
        sale_id, version, sale_blob, sale_at, expires_at, claimed_by = found
        if claimed_by is not None:
            return _failed(conn, terminal_id, window, Conflict(
                "this receipt's points were already claimed", code="already_claimed", field="code"))
        if now > expires_at:
            return _failed(conn, terminal_id, window, EdgeError(
                "this claim code has expired", code="claim_expired", field="code", status=410))
        program = program_at(conn, version)
        if program is None:
            raise Conflict(f"program version {version} of this sale is not on this node", code="program_unknown",
                           field="code")
        sale = sale_of(sale_blob)
        rating = customer_rating(conn, customer_id)
        points = compute_earn(sale, earning_rules(program), rating, sale_at).total
        op = make_op(sale_id, points, version)
        basis = EarnBasis(sale, version, sale_at, rating).to_bytes()
        conn.execute("UPDATE claims SET claimed_by = ?, claimed_at = ?, claim_op_id = ? WHERE code_hash = ?",
                     (customer_id, now, op.op_id, code_hash))
        conn.execute(
            "INSERT INTO sales (sale_id, customer_id, amount, earned, earn_op_id, basis) VALUES (?, ?, ?, ?, ?, ?)",
            (sale_id, customer_id, sale.total, points, op.op_id, basis),
        )
        queue(conn, op, points, sale_id)
        return 201, {
            "op_id": op.op_id, "sale_id": sale_id, "customer_id": customer_id, "points": points,
            "program_version": version, "balance": balance_of(conn, customer_id, now),
        }

    return action
