"""Enrollment: trade a one-time claim token for the store's identity, keeping the private key here.

``loyalty-edge init --claim-token`` makes (or reuses) the node's key pair,
sends the cloud only the public key, in a claim signed by the private key
(proof of possession), and hears back the store id, the brand and the
cloud's public key, which the node then pins. With --cloud-public-key the
answer must come from that key. The same claim again (a lost answer) is
answered again; a used, expired or unknown token is the cloud's refusal.
"""

from __future__ import annotations

import os
from collections.abc import Callable

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from protocol import RemoteProtocolError, key_id_for
from protocol.key_messages import Enrollment, open_enrollment, seal_claim

from .sync import CloudTransport


async def claim(
    client: CloudTransport, token: str, key: Ed25519PrivateKey, now_ms: Callable[[], int], *,
    pinned: bytes | None = None,
) -> Enrollment:
    """The enrollment answering our claim; CloudRefused, CloudUnavailable or a ProtocolError otherwise."""
    nonce = os.urandom(16)
    reply = await client.post_envelope("/v1/claim", seal_claim(token, key, nonce, now_ms()))
    enrollment = open_enrollment(reply, pinned)
    if enrollment.nonce != nonce or enrollment.key_id != key_id_for(key.public_key()):
        raise RemoteProtocolError("the enrollment does not answer our claim", code="wrong_enrollment")
    return enrollment
