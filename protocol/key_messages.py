"""Signed messages about keys: enrolling a store, rotating a store key, announcing a cloud key.

    edge ── CLAIM (self-signed by the new store key) ─────────▶ cloud   one-time token + public key
    edge ◀─ ENROLLMENT (self-signed by the cloud key) ──────── cloud   store, brand, cloud key; echoes nonce
    edge ── STORE_KEY (old store key; proof by the new) ─────▶ cloud   the store's next public key
    edge ◀─ STORE_KEY_ACK (cloud key) ──────────────────────── cloud   when the old key stops; echoes nonce
    cloud ─ CLOUD_KEY (previous cloud key; proof by the new) ▶ edges   on downlinks and GET /v1/cloud-keys

A new key is always vouched for twice: the envelope is signed by the key it
replaces, and the body carries ``proof``, the new key's signature over the
body with ``proof`` zeroed, under a domain of its own. So only the holder of
the old key can name a successor, and only a holder of the new key can be
named. Every message is bound to its purpose (the envelope type), to its
store or to the cloud key chain, and to a fresh nonce and time or a version.

A claim and an enrollment answer are *self-signed*: the key that checks them
travels in the body (the store's key is not registered yet; the edge has no
cloud key yet unless the operator pinned one). They are the only bodies
decoded before their signature is checked; the decode is the same bounded,
strict one as every other, and the caller acts on nothing before the
signature holds.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

import msgpack
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from .envelope import (
    MAX_ENVELOPE_BYTES,
    Envelope,
    MessageType,
    key_id_for,
    load_public_key,
    open_envelope,
    public_bytes,
    safe_unpackb,
    seal,
)
from .errors import LocalProtocolError, RemoteProtocolError
from .messages import MAX_CLOUD_KEYS, NONCE_LEN, _body_fields, _build, _pack, check_envelopes, check_slug
from .ops import MAX_TIME_MS, MIN_TIME_MS
from .validate import check_range, check_text, check_types

SIGNATURE_LEN = 64
NO_PROOF = bytes(SIGNATURE_LEN)
MAX_TOKEN_LEN = 128
#: The longest overlap a cloud key announcement may give the keys before it (a year).
MAX_OVERLAP_MS = 366 * 24 * 3600 * 1000
PROOF_DOMAIN: dict[MessageType, bytes] = {
    t: f"loyalty-edge/{t.value}-proof/v1\x00".encode() for t in (MessageType.STORE_KEY, MessageType.CLOUD_KEY)
}


def _check_len(name: str, value: bytes, length: int) -> None:
    if len(value) != length:
        raise LocalProtocolError(f"{name} must be {length} bytes", code="bad_shape", field=name)


def _check_time(name: str, value: int) -> None:
    check_range(name, value, MIN_TIME_MS, MAX_TIME_MS)


def _check_key(key_id_field: str, key_id: str, public_key: bytes) -> None:
    """``key_id`` is the fingerprint of ``public_key`` (a real Ed25519 key)."""
    check_text(key_id_field, key_id, 64, required=True)
    _check_len("public_key", public_key, 32)
    try:
        fingerprint = key_id_for(load_public_key(public_key))
    except ValueError as exc:  # cryptography refuses some 32-byte strings
        raise LocalProtocolError("not an Ed25519 public key", code="bad_key", field="public_key") from exc
    if fingerprint != key_id:
        raise LocalProtocolError(f"{key_id_field} is not the public key's fingerprint", code="bad_key",
                                 field=key_id_field)


@dataclass(frozen=True, slots=True)
class Claim:
    """An edge asks to enroll with a one-time token, for the key that signs the claim."""

    token: str
    key_id: str
    public_key: bytes
    nonce: bytes
    at: int

    def __post_init__(self) -> None:
        check_types(self)
        check_text("token", self.token, MAX_TOKEN_LEN, required=True)
        _check_key("key_id", self.key_id, self.public_key)
        _check_len("nonce", self.nonce, NONCE_LEN)
        _check_time("at", self.at)


@dataclass(frozen=True, slots=True)
class Enrollment:
    """The cloud's answer to a claim: who the store is and which cloud key to pin."""

    store_id: str
    brand_id: str
    key_id: str  # the store key now registered
    nonce: bytes  # the claim's
    at: int
    cloud_key_version: int
    cloud_key_id: str
    cloud_public_key: bytes

    def __post_init__(self) -> None:
        check_types(self)
        check_slug("store_id", self.store_id)
        check_slug("brand_id", self.brand_id)
        check_text("key_id", self.key_id, 64, required=True)
        _check_len("nonce", self.nonce, NONCE_LEN)
        _check_time("at", self.at)
        check_range("cloud_key_version", self.cloud_key_version, 1, 2**31)
        _check_key("cloud_key_id", self.cloud_key_id, self.cloud_public_key)


@dataclass(frozen=True, slots=True)
class StoreKeyRotation:
    """A store names its next key; sealed by ``old_key_id``, with the new key's ``proof``."""

    store_id: str
    old_key_id: str
    key_id: str
    public_key: bytes
    nonce: bytes
    at: int
    proof: bytes

    def __post_init__(self) -> None:
        check_types(self)
        check_slug("store_id", self.store_id)
        check_text("old_key_id", self.old_key_id, 64, required=True)
        _check_key("key_id", self.key_id, self.public_key)
        if self.key_id == self.old_key_id:
            raise LocalProtocolError("the new key is the old key", code="same_key", field="key_id")
        _check_len("nonce", self.nonce, NONCE_LEN)
        _check_time("at", self.at)
        _check_len("proof", self.proof, SIGNATURE_LEN)


@dataclass(frozen=True, slots=True)
class StoreKeyRotated:
    """The cloud registered ``key_id``; ``old_key_id`` works until ``old_key_expires_at``."""

    store_id: str
    old_key_id: str
    key_id: str
    old_key_expires_at: int
    nonce: bytes  # the rotation's
    at: int

    def __post_init__(self) -> None:
        check_types(self)
        check_slug("store_id", self.store_id)
        check_text("old_key_id", self.old_key_id, 64, required=True)
        check_text("key_id", self.key_id, 64, required=True)
        _check_time("old_key_expires_at", self.old_key_expires_at)
        _check_len("nonce", self.nonce, NONCE_LEN)
        _check_time("at", self.at)


@dataclass(frozen=True, slots=True)
class CloudKeyAnnouncement:
    """Cloud key ``version`` succeeds ``previous_key_id``, which signs the envelope.

    Once an edge has seen the new key in use, the keys before it stay good
    for ``overlap_ms`` (acks already sealed, processes not yet restarted).
    """

    version: int
    previous_key_id: str
    key_id: str
    public_key: bytes
    overlap_ms: int
    at: int
    proof: bytes

    def __post_init__(self) -> None:
        check_types(self)
        check_range("version", self.version, 2, 2**31)
        check_text("previous_key_id", self.previous_key_id, 64, required=True)
        _check_key("key_id", self.key_id, self.public_key)
        if self.key_id == self.previous_key_id:
            raise LocalProtocolError("the new key is the previous key", code="same_key", field="key_id")
        check_range("overlap_ms", self.overlap_ms, 0, MAX_OVERLAP_MS)
        _check_time("at", self.at)
        _check_len("proof", self.proof, SIGNATURE_LEN)


# ---------------------------------------------------------------- codecs

_Proven = StoreKeyRotation | CloudKeyAnnouncement


def _statement(message: _Proven) -> bytes:
    """What the new key signs: the body with ``proof`` zeroed."""
    return _pack(dataclasses.replace(message, proof=NO_PROOF))


def _proof_type(message: _Proven) -> MessageType:
    return MessageType.STORE_KEY if isinstance(message, StoreKeyRotation) else MessageType.CLOUD_KEY


def _prove(message: _Proven, new_key: Ed25519PrivateKey) -> Any:
    if key_id_for(new_key.public_key()) != message.key_id:
        raise LocalProtocolError("the proof must be made with the new key", code="bad_key", field="proof")
    return dataclasses.replace(message, proof=new_key.sign(PROOF_DOMAIN[_proof_type(message)] + _statement(message)))


def _check_proof(message: _Proven) -> None:
    try:
        load_public_key(message.public_key).verify(
            message.proof, PROOF_DOMAIN[_proof_type(message)] + _statement(message)
        )
    except InvalidSignature as exc:
        raise RemoteProtocolError("the new key's proof does not hold", status_hint=401, code="bad_proof",
                                  field="proof") from exc


def encode_claim(claim: Claim) -> bytes:
    return _pack(claim)


def decode_claim(body: bytes) -> Claim:
    return _build(Claim, _body_fields(Claim, body, MessageType.CLAIM))


def encode_enrollment(enrollment: Enrollment) -> bytes:
    return _pack(enrollment)


def decode_enrollment(body: bytes) -> Enrollment:
    return _build(Enrollment, _body_fields(Enrollment, body, MessageType.ENROLLMENT))


def encode_store_key_rotation(rotation: StoreKeyRotation) -> bytes:
    return _pack(rotation)


def decode_store_key_rotation(body: bytes) -> StoreKeyRotation:
    """The rotation, its new key's proof checked (401 ``bad_proof`` otherwise)."""
    rotation = _build(StoreKeyRotation, _body_fields(StoreKeyRotation, body, MessageType.STORE_KEY))
    _check_proof(rotation)
    return rotation


def encode_store_key_rotated(answer: StoreKeyRotated) -> bytes:
    return _pack(answer)


def decode_store_key_rotated(body: bytes) -> StoreKeyRotated:
    return _build(StoreKeyRotated, _body_fields(StoreKeyRotated, body, MessageType.STORE_KEY_ACK))


def encode_cloud_key(announcement: CloudKeyAnnouncement) -> bytes:
    return _pack(announcement)


def decode_cloud_key(body: bytes) -> CloudKeyAnnouncement:
    """The announcement, its new key's proof checked (401 ``bad_proof`` otherwise)."""
    announcement = _build(CloudKeyAnnouncement, _body_fields(CloudKeyAnnouncement, body, MessageType.CLOUD_KEY))
    _check_proof(announcement)
    return announcement


def encode_key_chain(envelopes: tuple[bytes, ...]) -> bytes:
    """CLOUD_KEY envelopes as one msgpack array (the answer of GET /v1/cloud-keys)."""
    check_envelopes("cloud_keys", envelopes, MessageType.CLOUD_KEY, MAX_CLOUD_KEYS)
    packed: bytes = msgpack.packb(list(envelopes), use_bin_type=True)
    return packed


def decode_key_chain(data: bytes) -> tuple[bytes, ...]:
    """The envelopes of a key chain, each still to be opened and verified on its own."""
    limit = MAX_CLOUD_KEYS * (MAX_ENVELOPE_BYTES[MessageType.CLOUD_KEY] + 8) + 8
    obj = safe_unpackb(data, max_len=limit, what="cloud key chain")
    if not isinstance(obj, tuple) or not all(isinstance(e, bytes) for e in obj):
        raise RemoteProtocolError("a cloud key chain is an array of envelopes", code="bad_shape")
    try:
        check_envelopes("cloud_keys", obj, MessageType.CLOUD_KEY, MAX_CLOUD_KEYS)
    except LocalProtocolError as exc:
        raise RemoteProtocolError(exc.message, code=exc.code, field=exc.field) from exc
    return obj


# ------------------------------------------------- sealed, one call each


def seal_claim(token: str, key: Ed25519PrivateKey, nonce: bytes, at: int) -> bytes:
    """A claim for ``token``, signed by the key it enrolls (proof of possession)."""
    public = key.public_key()
    claim = Claim(token, key_id_for(public), public_bytes(public), nonce, at)
    return seal(MessageType.CLAIM, encode_claim(claim), key, claim.key_id)


def _self_signed(envelope: Envelope, key_id: str, public_key: bytes) -> None:
    if envelope.key_id != key_id:
        raise RemoteProtocolError(f"the {envelope.type.value} is signed by another key than it names",
                                  status_hint=401, code="bad_signature", field="key_id")
    envelope.verify(load_public_key(public_key))


def open_claim(data: bytes) -> Claim:
    """A claim whose signature holds under the key it carries."""
    envelope = open_envelope(data, MessageType.CLAIM)
    claim = decode_claim(envelope.body)
    _self_signed(envelope, claim.key_id, claim.public_key)
    return claim


def seal_enrollment(enrollment: Enrollment, cloud_key: Ed25519PrivateKey) -> bytes:
    if key_id_for(cloud_key.public_key()) != enrollment.cloud_key_id:
        raise LocalProtocolError("an enrollment is signed by the cloud key it names", field="cloud_key_id")
    return seal(MessageType.ENROLLMENT, encode_enrollment(enrollment), cloud_key, enrollment.cloud_key_id)


def open_enrollment(data: bytes, pinned: bytes | None = None) -> Enrollment:
    """The cloud's answer to a claim, signed by the cloud key it names; with ``pinned``
    (the operator's --cloud-public-key) that key must be the pinned one."""
    envelope = open_envelope(data, MessageType.ENROLLMENT)
    enrollment = decode_enrollment(envelope.body)
    if pinned is not None and enrollment.cloud_public_key != pinned:
        raise RemoteProtocolError(
            f"the cloud signs with {enrollment.cloud_key_id}, not the pinned {key_id_for(load_public_key(pinned))}",
            status_hint=401, code="unexpected_cloud_key", field="cloud_public_key")
    _self_signed(envelope, enrollment.cloud_key_id, enrollment.cloud_public_key)
    return enrollment


def seal_store_key_rotation(
    store_id: str, old_key: Ed25519PrivateKey, new_key: Ed25519PrivateKey, nonce: bytes, at: int
) -> bytes:
    """The announcement of ``new_key``: proven by it, sealed by ``old_key``."""
    old_key_id = key_id_for(old_key.public_key())
    public = new_key.public_key()
    unsigned = StoreKeyRotation(store_id, old_key_id, key_id_for(public), public_bytes(public), nonce, at, NO_PROOF)
    rotation: StoreKeyRotation = _prove(unsigned, new_key)
    return seal(MessageType.STORE_KEY, encode_store_key_rotation(rotation), old_key, old_key_id)


def seal_cloud_key(
    version: int, previous: Ed25519PrivateKey, new_key: Ed25519PrivateKey, overlap_ms: int, at: int
) -> bytes:
    """The announcement of cloud key ``version``: proven by it, sealed by the key before it."""
    previous_key_id = key_id_for(previous.public_key())
    public = new_key.public_key()
    unsigned = CloudKeyAnnouncement(version, previous_key_id, key_id_for(public), public_bytes(public), overlap_ms,
                                    at, NO_PROOF)
    announcement: CloudKeyAnnouncement = _prove(unsigned, new_key)
    return seal(MessageType.CLOUD_KEY, encode_cloud_key(announcement), previous, previous_key_id)


def open_cloud_key(data: bytes, previous: Ed25519PublicKey) -> CloudKeyAnnouncement:
    """An announcement signed by ``previous`` (the key its envelope names), naming it as the previous key."""
    envelope = open_envelope(data, MessageType.CLOUD_KEY)
    announcement = decode_cloud_key(envelope.verify(previous))
    if announcement.previous_key_id != envelope.key_id or key_id_for(previous) != envelope.key_id:
        raise RemoteProtocolError("the announcement is not signed by the key it succeeds", status_hint=401,
                                  code="bad_signature", field="previous_key_id")
    return announcement
