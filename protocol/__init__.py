"""What edge and cloud share: ops, loyalty rules and the signed wire format.

Pure code: it takes bytes and values and returns frozen, validated
dataclasses. It never touches a socket, a file or the clock.
"""

from .claim_ops import NO_CUSTOMER, Claim, UnclaimedSale
from .envelope import (
    DOMAIN,
    Envelope,
    MessageType,
    key_id_for,
    load_public_key,
    open_envelope,
    private_key_from_seed,
    private_seed,
    public_bytes,
    seal,
)
from .errors import LocalProtocolError, ProtocolError, RemoteProtocolError
from .ids import is_uuid, is_uuid7, uuid7
from .messages import (
    GENESIS_HASH,
    MAX_BATCH_OPS,
    Ack,
    Balance,
    Batch,
    CustomerRecord,
    Downlink,
    OpResult,
    OpStatus,
    Pull,
    body_hash,
    decode_ack,
    decode_batch,
    decode_downlink,
    decode_pull,
    encode_ack,
    encode_batch,
    encode_downlink,
    encode_pull,
    open_ack,
    open_downlink,
    seal_batch,
)
from .ops import (
    OP_TYPES,
    Adjust,
    Consent,
    Earn,
    Enroll,
    Op,
    OpKind,
    Redeem,
    Refund,
    UpdateProfile,
    Void,
    op_from_wire,
)
from .rules import Program, available_points, earn_points

__all__ = [
    "DOMAIN", "GENESIS_HASH", "MAX_BATCH_OPS", "OP_TYPES", "Ack", "Adjust", "Balance", "Batch",
    "Claim", "NO_CUSTOMER", "UnclaimedSale",
    "Consent", "CustomerRecord", "Downlink", "Earn", "Enroll", "Envelope", "LocalProtocolError",
    "MessageType", "Op", "OpKind", "OpResult", "OpStatus", "Program", "ProtocolError", "Pull",
    "Redeem", "Refund", "RemoteProtocolError", "UpdateProfile", "Void", "available_points", "body_hash",
    "decode_ack", "decode_batch", "decode_downlink", "decode_pull", "earn_points", "encode_ack",
    "encode_batch", "encode_downlink", "encode_pull", "is_uuid", "is_uuid7", "key_id_for",
    "load_public_key", "op_from_wire", "open_ack", "open_downlink", "open_envelope",
    "private_key_from_seed", "private_seed", "public_bytes", "seal", "seal_batch", "uuid7",
]
