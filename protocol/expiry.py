"""Points expiry, as pure functions of the earned lots and the time.

A balance is a list of lots (when earned, how many left). Spending takes the
oldest lots first. Two settings, as merchants know them:

- ``after_earned``: each lot expires N calendar months after it was earned;
- ``inactivity``: the whole balance expires N months after the customer's
  last activity (an earn or a redemption).

The cloud runs expiry and sends the result down; the edge only shows what
expires soon, and since an expired point has left the confirmed balance, it
can never be redeemed offline.
"""

from __future__ import annotations

import calendar
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import UTC, datetime
from enum import StrEnum

from .errors import LocalProtocolError
from .validate import check_range, check_types

DAY_MS = 24 * 3600 * 1000
#: Ledger entry kinds that count as activity for the inactivity policy.
ACTIVITY_KINDS = frozenset({"earn", "redeem"})


class ExpiryMode(StrEnum):
    NONE = "none"
    AFTER_EARNED = "after_earned"
    INACTIVITY = "inactivity"


@dataclass(frozen=True, slots=True)
class ExpiryPolicy:
    mode: ExpiryMode = ExpiryMode.NONE
    months: int = 0

    def __post_init__(self) -> None:
        if isinstance(self.mode, str) and not isinstance(self.mode, ExpiryMode):
            try:
                object.__setattr__(self, "mode", ExpiryMode(self.mode))
            except ValueError as exc:
                raise LocalProtocolError("unknown expiry mode", code="invalid_value", field="mode") from exc
        check_types(self)
        if self.mode is ExpiryMode.NONE:
            check_range("months", self.months, 0, 0)
        else:
            check_range("months", self.months, 1, 120)


@dataclass(frozen=True, slots=True)
class Lot:
    earned_at: int
    points: int


def add_months(at_ms: int, months: int) -> int:
    """The same instant ``months`` calendar months later (UTC); the 31st of a
    month becomes the last day of a shorter one."""
    moment = datetime.fromtimestamp(at_ms / 1000, tz=UTC)
    index = moment.month - 1 + months
    year, month = moment.year + index // 12, index % 12 + 1
    day = min(moment.day, calendar.monthrange(year, month)[1])
    later = moment.replace(year=year, month=month, day=day)
    return int(later.timestamp() * 1000)


def spend(lots: tuple[Lot, ...], points: int) -> tuple[Lot, ...]:
    """Take ``points`` from the oldest lots first."""
    left = points
    kept = []
    for lot in sorted(lots, key=lambda lot: lot.earned_at):
        if left >= lot.points:
            left -= lot.points
            continue
        kept.append(Lot(lot.earned_at, lot.points - left))
        left = 0
    if left > 0:
        raise LocalProtocolError("spending more points than the lots hold", code="insufficient_balance",
                                 field="points")
    return tuple(kept)


def expires_at(lot: Lot, policy: ExpiryPolicy, last_activity_at: int) -> int | None:
    if policy.mode is ExpiryMode.AFTER_EARNED:
        return add_months(lot.earned_at, policy.months)
    if policy.mode is ExpiryMode.INACTIVITY:
        return add_months(last_activity_at, policy.months)
    return None


def expire(lots: tuple[Lot, ...], policy: ExpiryPolicy, last_activity_at: int, now: int) -> tuple[int, tuple[Lot, ...]]:
    """Points that have expired by ``now``, and the lots that remain."""
    gone = 0
    kept = []
    for lot in lots:
        deadline = expires_at(lot, policy, last_activity_at)
        if deadline is not None and deadline <= now:
            gone += lot.points
        else:
            kept.append(lot)
    return gone, tuple(kept)


def expiring_within(lots: tuple[Lot, ...], policy: ExpiryPolicy, last_activity_at: int, now: int,
                    days: int = 30) -> int:
    """Points that will expire in the next ``days`` days (shown at the till)."""
    horizon = now + days * DAY_MS
    soon, _ = expire(lots, policy, last_activity_at, horizon)
    already, _ = expire(lots, policy, last_activity_at, now)
    return soon - already


def lots_from_entries(entries: Iterable[tuple[int, int]]) -> tuple[Lot, ...]:
    """The lots a balance holds, from its ledger movements ``(at, points)``.

    Every credit (an earn, a positive adjustment, points given back by a
    void) is a lot earned at its time; every debit (a redemption, a reversed
    earn, a negative adjustment, an expiry) takes from the oldest lots first.
    Movements are applied in time order (ties keep their given order). A
    debit larger than the lots (a balance taken below zero) empties them and
    the rest is carried, so later credits first pay that debt back.
    """
    lots: list[Lot] = []
    debt = 0
    for at, points in sorted(entries, key=lambda movement: movement[0]):
        if points > 0:
            paid = min(debt, points)
            debt -= paid
            if points > paid:
                lots.append(Lot(at, points - paid))
        elif points < 0:
            held = sum(lot.points for lot in lots)
            taken = min(held, -points)
            lots = list(spend(tuple(lots), taken))
            debt += -points - taken
    return tuple(lots)


def last_activity(entries: Iterable[tuple[int, str]]) -> int | None:
    """When the customer last earned or redeemed, from ``(at, kind)`` ledger rows."""
    times = [at for at, kind in entries if kind in ACTIVITY_KINDS]
    return max(times) if times else None
