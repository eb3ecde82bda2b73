"""Records of retroactive claims and card links, shared by the backends and the reconciler."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

#: ``claimed_via`` of a claim made on the portal (a store id otherwise).
PORTAL_ORIGIN = "(portal)"

CLAIMABLE_COLUMNS = (
    "code_hash, brand_id, store_id, sale_id, op_id, amount, program_version, sale, at, expires_at, customer_id,"
    " claim_op_id, claimed_at, claimed_via, points"
)


@dataclass(frozen=True, slots=True)
class ClaimableSale:
    """A sale recorded without a profile; ``customer_id`` is set by the one claim applied."""

    code_hash: str
    brand_id: str
    store_id: str
    sale_id: str
    op_id: str
    amount: int
    program_version: int
    sale: bytes  # protocol.claims.sale_bytes
    at: int
    expires_at: int
    customer_id: str | None = None
    claim_op_id: str | None = None
    claimed_at: int | None = None
    claimed_via: str | None = None
    points: int | None = None

    @classmethod
    def of_row(cls, row: tuple[Any, ...]) -> ClaimableSale:
        return cls(row[0], row[1], row[2], row[3], row[4], row[5], row[6], bytes(row[7]), *row[8:15])


@dataclass(frozen=True, slots=True)
class ClaimState:
    """What a batch's claims and card payments read: this store's unclaimed sales
    the batch names (by sale_id) and its customers' last card tokens."""

    claimables: Mapping[str, ClaimableSale] = field(default_factory=dict)
    streaks: Mapping[str, str | None] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class ClaimRows:
    """What a batch writes for them: unclaimed sales new or claimed, card runs, and the
    links made, in order ((token, customer_id, at): a token has one profile, a profile one card)."""

    claimables: tuple[ClaimableSale, ...] = ()
    streaks: tuple[tuple[str, str | None], ...] = ()
    links: tuple[tuple[str, str, int], ...] = ()


@dataclass(frozen=True, slots=True)
class PortalClaim:
    """A claim the portal applied."""

    sale_id: str
    store_id: str
    points: int
    balance: int
