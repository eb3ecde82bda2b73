"""Points expiry, as pure functions of the earned lots and the time.

A balance is a list of lots (when earned, how many left). Spending takes the
oldest lots first. Two settings, as merchants know them:

- ``after_earned``: each lot expires N calendar months after it was earned;
- ``inactivity``: the whole balance expires N months after the customer's
  last activity (an earn or a redemption).

The cloud runs expiry (``expire`` entries in its ledger) and sends each
customer's upcoming expiries down (``upcoming``: per UTC day, nearest
first, bounded). The edge shows what expires in the next 30 days and takes
every lot whose date has passed by its own clock out of what may be
redeemed, even before the cloud has run expiry: an expired point can never
be redeemed offline.
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
#: Upcoming expiries sent down per customer: one a day, the nearest ones.
MAX_EXPIRING = 32


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
    """The lots that remain after a customer's ledger entries, given as
    (at, points) pairs in the order they were applied: a credit is a new lot
    earned at ``at``; a debit spends the oldest lots first. A debit larger
    than every lot leaves a deficit that later credits pay off before they
    become lots (a balance below zero has no lots)."""
    lots: list[Lot] = []
    deficit = 0
    for at, points in entries:
        if points > 0:
            paid = min(deficit, points)
            deficit -= paid
            if points > paid:
                lots.append(Lot(at, points - paid))
        elif points < 0:
            held = sum(lot.points for lot in lots)
            taken = min(held, -points)
            if taken:
                lots = list(spend(tuple(lots), taken))
            deficit += -points - taken
    return tuple(sorted(lots, key=lambda lot: lot.earned_at))


def last_activity(entries: Iterable[tuple[int, str]]) -> int | None:
    """When the customer last earned or redeemed, from ``(at, kind)`` ledger rows."""
    times = [at for at, kind in entries if kind in ACTIVITY_KINDS]
    return max(times) if times else None


def upcoming(lots: tuple[Lot, ...], policy: ExpiryPolicy, last_activity_at: int,
             limit: int = MAX_EXPIRING) -> tuple[tuple[int, int], ...]:
    """(expires_at, points) of the remaining lots, merged per UTC day at the
    day's earliest deadline (never later than the real one), nearest first,
    at most ``limit`` days. A deadline already passed stays in the list until
    an expiry run takes its points: the edge must not let them be spent."""
    by_day: dict[int, list[int]] = {}
    for lot in lots:
        deadline = expires_at(lot, policy, last_activity_at)
        if deadline is None:
            continue
        day = by_day.setdefault(deadline // DAY_MS, [deadline, 0])
        day[0] = min(day[0], deadline)
        day[1] += lot.points
    return tuple((at, points) for _, (at, points) in sorted(by_day.items())[:limit])


def expired_by(expiring: Iterable[tuple[int, int]], now: int) -> int:
    """Points of ``expiring`` whose date has passed at ``now``."""
    return sum(points for at, points in expiring if at <= now)


def expiring_soon(expiring: Iterable[tuple[int, int]], now: int, days: int = 30) -> int:
    """Points of ``expiring`` that expire after ``now`` and within ``days`` days."""
    horizon = now + days * DAY_MS
    return sum(points for at, points in expiring if now < at <= horizon)
