"""Erasure: the personal data an op, a sale or a stored batch carries, and their scrubbed copies.

Pure functions on the wire maps (no I/O), shared by the cloud (its stored
batch bodies, sale bases and late ops) and the edge (its outbox, stored
batch envelopes and sale bases). What counts as personal data of a customer:
the profile's name, phone, email and card code, a card tender's processor
token (it links payments to the person), and an adjustment's free-text
reason (staff may have written the customer's name into it). Amounts,
dates, stores, sale lines and ids stay: they are the anonymised ledger.

A scrubbed op is kept as a map, not rebuilt as an ``Op``: an enrollment
with no name and no contact would not validate, and nothing re-reads it as
one. A scrubbed batch body carries ``"redacted": true``; its bytes no longer
hash to the batch's stored hash, so the chain audit checks its ``prev_hash``
link only (``redacted_prev_hash``).
"""

from __future__ import annotations

from collections.abc import Collection, Mapping
from typing import Any

import msgpack

#: What a scrubbed adjustment's reason becomes.
ERASED_REASON = "(erased)"
_PROFILE = ("phone", "email", "card_code")


def _packb(obj: Any) -> bytes:
    packed: bytes = msgpack.packb(obj, use_bin_type=True)
    return packed


def _unpackb(data: bytes) -> Any:
    return msgpack.unpackb(data, raw=False, use_list=True, strict_map_key=False)


def scrub_sale(sale: Mapping[str, Any]) -> dict[str, Any]:
    """The sale's wire map without card tokens (the amounts and lines stay, so refunds still work)."""
    out = dict(sale)
    tenders = out.get("tenders")
    if isinstance(tenders, list | tuple):
        out["tenders"] = [
            {**t, "card_token": None} if isinstance(t, Mapping) and t.get("card_token") is not None else t
            for t in tenders
        ]
    return out


def scrub_sale_bytes(data: bytes) -> bytes:
    """A stored sale (``protocol.claims.sale_bytes``) without its card tokens."""
    return _packb(scrub_sale(_unpackb(data)))


def scrub_op(op: Mapping[str, Any]) -> dict[str, Any]:
    """The op's wire map without the customer's personal data."""
    out = dict(op)
    kind = out.get("kind")
    if kind == "enroll":
        out["name"] = ""
        for field in _PROFILE:
            out[field] = None
    elif kind == "update_profile":
        out["name"] = None
        for field in _PROFILE:
            out[field] = None
    elif kind == "adjust" and out.get("reason"):
        out["reason"] = ERASED_REASON
    if isinstance(out.get("sale"), Mapping):
        out["sale"] = scrub_sale(out["sale"])
    return out


def scrub_basis(basis: bytes) -> bytes:
    """A stored earn basis (``refunds.EarnBasis.to_bytes``) without card tokens."""
    doc = _unpackb(basis)
    if isinstance(doc, dict) and isinstance(doc.get("sale"), Mapping):
        doc["sale"] = scrub_sale(doc["sale"])
    return _packb(doc)


def redact_batch_body(body: bytes, customer_ids: Collection[str]) -> bytes | None:
    """The batch body with the ops of ``customer_ids`` scrubbed, marked redacted; None if
    none of its ops carries their personal data (the body is then kept as it is)."""
    doc = _unpackb(body)
    if not isinstance(doc, dict) or not isinstance(doc.get("ops"), list):
        return None
    changed = False
    ops = []
    for op in doc["ops"]:
        if isinstance(op, Mapping) and op.get("customer_id") in customer_ids:
            scrubbed = scrub_op(op)
            changed = changed or scrubbed != dict(op)
            ops.append(scrubbed)
        else:
            ops.append(op)
    if not changed:
        return None
    doc["ops"] = ops
    doc["redacted"] = True
    return _packb(doc)


def redacted_prev_hash(body: bytes) -> bytes | None:
    """The ``prev_hash`` of a body ``redact_batch_body`` made; None for any other body."""
    try:
        doc = _unpackb(body)
    except (ValueError, msgpack.UnpackException):
        return None
    if isinstance(doc, dict) and doc.get("redacted") is True and isinstance(doc.get("prev_hash"), bytes):
        return bytes(doc["prev_hash"])
    return None


def redact_envelope(envelope: bytes, customer_ids: Collection[str]) -> bytes | None:
    """A stored batch envelope with its body redacted (the signature no longer verifies: such
    an envelope is an acknowledged batch, never sent again); None if nothing to scrub."""
    outer = _unpackb(envelope)
    if not isinstance(outer, list) or len(outer) != 5 or not isinstance(outer[3], bytes):
        return None
    body = redact_batch_body(outer[3], customer_ids)
    if body is None:
        return None
    outer[3] = body
    return _packb(outer)
