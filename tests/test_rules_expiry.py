"""Points expiry: after N months from earning (oldest first), or after N months without activity."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from protocol import LocalProtocolError
from protocol.expiry import (
    ExpiryMode,
    ExpiryPolicy,
    Lot,
    add_months,
    expire,
    expired_by,
    expiring_soon,
    expiring_within,
    lots_from_entries,
    spend,
    upcoming,
)


def ms(text: str) -> int:
    return int(datetime.fromisoformat(text).replace(tzinfo=UTC).timestamp() * 1000)


def test_calendar_months_clamp_to_the_end_of_a_shorter_month() -> None:
    assert add_months(ms("2026-01-31T10:00:00"), 1) == ms("2026-02-28T10:00:00")
    assert add_months(ms("2026-11-15T00:00:00"), 3) == ms("2027-02-15T00:00:00")
    assert add_months(ms("2024-02-29T00:00:00"), 12) == ms("2025-02-28T00:00:00")


LOTS = (Lot(ms("2026-01-10T00:00:00"), 100), Lot(ms("2026-03-05T00:00:00"), 50), Lot(ms("2026-06-01T00:00:00"), 20))


def test_spending_takes_the_oldest_points_first() -> None:
    assert spend(LOTS, 120) == (Lot(ms("2026-03-05T00:00:00"), 30), Lot(ms("2026-06-01T00:00:00"), 20))
    with pytest.raises(LocalProtocolError):
        spend(LOTS, 171)


def test_after_earned_expires_each_lot_on_its_own_date() -> None:
    policy = ExpiryPolicy(ExpiryMode.AFTER_EARNED, 6)
    gone, kept = expire(LOTS, policy, last_activity_at=ms("2026-09-01T00:00:00"), now=ms("2026-08-01T00:00:00"))
    assert gone == 100 and kept == LOTS[1:]  # January's lot died on 10 July
    # On 15 August, the March lot (expiring 5 September) is within 30 days; June's is not.
    assert expiring_within(kept, policy, ms("2026-09-01T00:00:00"), ms("2026-08-15T00:00:00")) == 50
    # Spent points cannot expire: after spending 120, only 30 of March's lot can.
    after_spend = spend(LOTS, 120)
    assert expire(after_spend, policy, 0, ms("2026-09-06T00:00:00"))[0] == 30


def test_inactivity_expires_everything_n_months_after_the_last_activity() -> None:
    policy = ExpiryPolicy(ExpiryMode.INACTIVITY, 12)
    last = ms("2026-06-01T00:00:00")
    assert expire(LOTS, policy, last, ms("2027-05-31T23:59:59"))[0] == 0
    assert expiring_within(LOTS, policy, last, ms("2027-05-15T00:00:00")) == 170
    assert expire(LOTS, policy, last, ms("2027-06-01T00:00:00")) == (170, ())


def test_no_expiry_and_bad_settings() -> None:
    assert expire(LOTS, ExpiryPolicy(), 0, ms("2099-01-01T00:00:00")) == (0, LOTS)
    for kwargs in ({"mode": "after_earned", "months": 0}, {"mode": "none", "months": 3}, {"mode": "weekly"}):
        with pytest.raises(LocalProtocolError):
            ExpiryPolicy(**kwargs)  # type: ignore[arg-type]


def test_lots_from_ledger_movements_spend_oldest_first_and_carry_a_debt() -> None:
    from protocol.expiry import last_activity, lots_from_entries

    jan, mar, jun, jul = (ms(f"2026-{m}-01T00:00:00") for m in ("01", "03", "06", "07"))
    assert lots_from_entries([(mar, 50), (jan, 100), (jun, -120)]) == (Lot(mar, 30),)
    # Ties keep their order: earned then reversed at the same instant leaves nothing.
    assert lots_from_entries([(jan, 40), (jan, -40)]) == ()
    # A balance taken below zero: the next credit pays the debt before it makes a lot.
    assert lots_from_entries([(jan, 10), (mar, -25), (jun, 20), (jul, 7)]) == (Lot(jun, 5), Lot(jul, 7))
    assert lots_from_entries([]) == ()
    # The lots feed the expiry functions: 6 months after earning, March's 30 die on 1 September.
    policy = ExpiryPolicy(ExpiryMode.AFTER_EARNED, 6)
    lots = lots_from_entries([(mar, 50), (jan, 100), (jun, -120)])
    assert expiring_within(lots, policy, jun, ms("2026-08-15T00:00:00")) == 30
    assert last_activity([(jan, "earn"), (jun, "redeem"), (jul, "adjust")]) == jun
    assert last_activity([(jul, "adjust")]) is None


def test_lots_from_ledger_entries_spend_the_oldest_first() -> None:
    jan, mar, jun, jul = (ms(f"2026-{m:02d}-01T00:00:00") for m in (1, 3, 6, 7))
    # earn 100 (Jan), earn 50 (Mar), redeem 120 (Jun: all of Jan, 20 of Mar), earn 20 (Jul)
    assert lots_from_entries([(jan, 100), (mar, 50), (jun, -120), (jul, 20)]) == (Lot(mar, 30), Lot(jul, 20))
    # a debit beyond every lot is a deficit that later credits pay off first
    assert lots_from_entries([(jan, 10), (mar, -30), (jun, 25), (jul, 7)]) == (Lot(jun, 5), Lot(jul, 7))
    assert lots_from_entries([]) == ()
    # an expiry entry consumes exactly the lots it expired: running expiry again finds nothing
    policy = ExpiryPolicy(ExpiryMode.AFTER_EARNED, 6)
    entries = [(jan, 100), (mar, 50)]
    gone, _ = expire(lots_from_entries(entries), policy, mar, ms("2026-08-01T00:00:00"))
    assert gone == 100
    entries.append((ms("2026-08-01T00:00:00"), -gone))
    assert expire(lots_from_entries(entries), policy, mar, ms("2026-08-01T00:00:00"))[0] == 0


def test_upcoming_expiries_per_day_nearest_first_and_bounded() -> None:
    policy = ExpiryPolicy(ExpiryMode.AFTER_EARNED, 1)
    lots = (Lot(ms("2026-01-10T08:00:00"), 5), Lot(ms("2026-01-10T20:00:00"), 7), Lot(ms("2026-01-11T01:00:00"), 1),
            Lot(ms("2025-12-01T00:00:00"), 9))
    now = ms("2026-01-15T00:00:00")
    assert upcoming(lots, policy, 0) == (
        (ms("2026-01-01T00:00:00"), 9),  # passed, but no expiry run has taken it yet: the edge must know
        (ms("2026-02-10T08:00:00"), 12),  # one day, at its earliest deadline
        (ms("2026-02-11T01:00:00"), 1),
    )
    assert upcoming(lots, policy, 0, limit=1) == ((ms("2026-01-01T00:00:00"), 9),)
    assert upcoming(lots, ExpiryPolicy(), 0) == ()
    expiring = upcoming(lots, policy, 0)
    assert expired_by(expiring, now) == 9
    assert expired_by(expiring, ms("2026-02-10T08:00:00")) == 21
    assert expiring_soon(expiring, now) == 13 and expiring_soon(expiring, ms("2026-02-10T09:00:00")) == 1
