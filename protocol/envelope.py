"""Signed envelopes: the outer layer of every message between edge and cloud.

An envelope is the msgpack array ``[version, type, key_id, body, signature]``.
The signature is Ed25519 over ``DOMAIN[type] + body``: the prefix names the
message type and version, so a signed batch can never be replayed as an ack,
a pull request or a downlink, even under the same key.

The receiver parses the outer array (bounded), looks the key up by ``key_id``
(that is the caller's I/O), verifies the signature over the exact body bytes,
and only then decodes the body. Nothing of an unverified body is ever parsed.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from enum import StrEnum
from typing import Any

import msgpack
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from .errors import LocalProtocolError, RemoteProtocolError

ENVELOPE_VERSION = 1


class MessageType(StrEnum):
    BATCH = "batch"
    ACK = "ack"
    PULL = "pull"
    DOWNLINK = "downlink"
    # Keys (protocol/key_messages.py): enrollment, a store key's rotation, the cloud key's announcements.
    CLAIM = "claim"
    ENROLLMENT = "enrollment"
    STORE_KEY = "store-key"
    STORE_KEY_ACK = "store-key-ack"
    CLOUD_KEY = "cloud-key"


DOMAIN: dict[MessageType, bytes] = {
    t: f"loyalty-edge/{t.value}/v{ENVELOPE_VERSION}\x00".encode() for t in MessageType
}

#: Largest envelope accepted per type, checked before a single byte is parsed.
MAX_ENVELOPE_BYTES: dict[MessageType, int] = {
    MessageType.BATCH: 4 * 1024 * 1024,
    MessageType.ACK: 2 * 1024 * 1024,
    MessageType.PULL: 4 * 1024,
    MessageType.DOWNLINK: 8 * 1024 * 1024,
    MessageType.CLAIM: 4 * 1024,
    MessageType.ENROLLMENT: 4 * 1024,
    MessageType.STORE_KEY: 4 * 1024,
    MessageType.STORE_KEY_ACK: 4 * 1024,
    MessageType.CLOUD_KEY: 4 * 1024,
}
MAX_KEY_ID_LEN = 64


def key_id_for(public_key: Ed25519PublicKey) -> str:
    """A short, stable name for a public key: the key fingerprint."""
    return "ed25519:" + hashlib.sha256(public_bytes(public_key)).hexdigest()[:16]


def public_bytes(public_key: Ed25519PublicKey) -> bytes:
    return public_key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)


def load_public_key(raw: bytes) -> Ed25519PublicKey:
    if len(raw) != 32:
        raise LocalProtocolError("an Ed25519 public key is 32 bytes", field="public_key")
    return Ed25519PublicKey.from_public_bytes(raw)


def private_key_from_seed(seed: bytes) -> Ed25519PrivateKey:
    if len(seed) != 32:
        raise LocalProtocolError("an Ed25519 seed is 32 bytes", field="private_key")
    return Ed25519PrivateKey.from_private_bytes(seed)


def private_seed(key: Ed25519PrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.Raw, serialization.PrivateFormat.Raw, serialization.NoEncryption()
    )


def safe_unpackb(data: bytes, *, max_len: int, what: str) -> Any:
    """msgpack.unpackb with every container bounded by the input size.

    Any failure of the C decoder (truncated, extra data, bad UTF-8, deep
    nesting, unhashable keys, ext types) becomes one RemoteProtocolError.
    """
    if len(data) > max_len:
        raise RemoteProtocolError(
            f"{what} is {len(data)} bytes, more than {max_len}", status_hint=413, code="too_large"
        )
    try:
        return msgpack.unpackb(
            data,
            raw=False,
            use_list=False,
            strict_map_key=True,
            max_str_len=max_len,
            max_bin_len=max_len,
            max_array_len=max_len,
            max_map_len=max_len,
            max_ext_len=0,
            timestamp=0,
        )
    except Exception as exc:
        raise RemoteProtocolError(f"{what} is not valid msgpack: {exc}", code="bad_encoding") from exc


@dataclass(frozen=True, slots=True)
class Envelope:
    """A parsed but not yet verified envelope."""

    type: MessageType
    key_id: str
    body: bytes
    signature: bytes

    def verify(self, public_key: Ed25519PublicKey) -> bytes:
        """Return the body if the signature holds, else RemoteProtocolError (401)."""
        try:
            public_key.verify(self.signature, DOMAIN[self.type] + self.body)
        except InvalidSignature as exc:
            raise RemoteProtocolError(
                f"bad signature on {self.type.value}", status_hint=401, code="bad_signature"
            ) from exc
        return self.body


def seal(type_: MessageType, body: bytes, private_key: Ed25519PrivateKey, key_id: str) -> bytes:
    """Sign ``body`` for ``type_`` and wrap it in an envelope."""
    if len(body) + 256 > MAX_ENVELOPE_BYTES[type_]:
        raise LocalProtocolError(f"{type_.value} body too large ({len(body)} bytes)", code="too_large")
    signature = private_key.sign(DOMAIN[type_] + body)
    packed: bytes = msgpack.packb(
        [ENVELOPE_VERSION, type_.value, key_id, body, signature], use_bin_type=True
    )
    return packed


def open_envelope(data: bytes, expected: MessageType) -> Envelope:
    """Parse the outer array of an envelope of the expected type; no verification yet."""
    if not isinstance(data, bytes):
        raise RemoteProtocolError("envelope must be bytes", code="bad_encoding")
    obj = safe_unpackb(data, max_len=MAX_ENVELOPE_BYTES[expected], what=f"{expected.value} envelope")
    if not (isinstance(obj, tuple) and len(obj) == 5):
        raise RemoteProtocolError("envelope must be an array of 5", code="bad_envelope")
    version, type_, key_id, body, signature = obj
    if version != ENVELOPE_VERSION or isinstance(version, bool):
        raise RemoteProtocolError(
            f"unsupported envelope version {version!r}", status_hint=400, code="bad_version"
        )
    if type_ != expected.value:
        raise RemoteProtocolError(
            f"expected a {expected.value} envelope, got {type_!r}", code="wrong_type"
        )
    if not isinstance(key_id, str) or not 0 < len(key_id) <= MAX_KEY_ID_LEN:
        raise RemoteProtocolError("bad key id", code="bad_envelope", field="key_id")
    if not isinstance(body, bytes) or not isinstance(signature, bytes) or len(signature) != 64:
        raise RemoteProtocolError("body and 64-byte signature must be binary", code="bad_envelope")
    return Envelope(expected, key_id, body, signature)
