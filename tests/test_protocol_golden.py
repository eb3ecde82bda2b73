"""Golden vectors of the signed wire format, and the envelope's security properties.

The hex literals below were generated once from the values built here and
checked by eye: ``95`` (array of 5), ``01`` (version), the type string, the
24-character key id, the body as msgpack bin, ``c440`` + 64 signature bytes;
the bodies are maps that start with ``v=1``. Ed25519 signatures are
deterministic, so the bytes are too. If a test here fails, the wire format
changed: that breaks every deployed edge and must be a deliberate, versioned
decision, never a side effect.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable
from dataclasses import replace
from typing import Any

import msgpack
import pytest

from protocol import (
    GENESIS_HASH,
    Ack,
    Balance,
    Batch,
    Consent,
    CustomerRecord,
    Downlink,
    Earn,
    Enroll,
    LocalProtocolError,
    MessageType,
    OpResult,
    OpStatus,
    Program,
    Pull,
    Redeem,
    Refund,
    RemoteProtocolError,
    body_hash,
    decode_ack,
    decode_batch,
    decode_downlink,
    decode_pull,
    encode_ack,
    encode_batch,
    encode_downlink,
    encode_pull,
    key_id_for,
    open_ack,
    open_downlink,
    open_envelope,
    private_key_from_seed,
    public_bytes,
    seal,
    seal_batch,
    uuid7,
)
from protocol.envelope import MAX_ENVELOPE_BYTES
from protocol.key_messages import (
    PROOF_DOMAIN,
    Claim,
    Enrollment,
    StoreKeyRotated,
    decode_claim,
    decode_cloud_key,
    decode_enrollment,
    decode_key_chain,
    decode_store_key_rotated,
    decode_store_key_rotation,
    encode_claim,
    encode_cloud_key,
    encode_enrollment,
    encode_key_chain,
    encode_store_key_rotated,
    encode_store_key_rotation,
    open_claim,
    open_cloud_key,
    open_enrollment,
    seal_cloud_key,
    seal_store_key_rotation,
)
from protocol.messages import MAX_CLOUD_KEYS
from protocol.sale import Sale, SaleLine, SaleState, Tender, TenderKind

T0 = 1_767_225_600_000  # 2026-01-01T00:00:00Z
KEY = private_key_from_seed(bytes(range(32)))
OTHER_KEY = private_key_from_seed(bytes(range(32, 64)))
KEY_ID = key_id_for(KEY.public_key())
TERMINAL = "01234567-89ab-4cde-8f01-23456789abcd"
CUSTOMER = "11111111-2222-4333-8444-555555555555"
NODE = "0f0e0d0c-0b0a-4908-8706-050403020100"
NONCE = bytes(range(16))
OTHER_KEY_ID = key_id_for(OTHER_KEY.public_key())
WEEK_MS = 7 * 24 * 3600 * 1000
#: Cloud key 2 (OTHER_KEY) announced by cloud key 1 (KEY): rides in the downlink below.
CLOUD_KEY_ENVELOPE = seal_cloud_key(2, KEY, OTHER_KEY, WEEK_MS, T0 + 25)


def counting_randbytes() -> Callable[[int], bytes]:
    counter = itertools.count()
    return lambda n: bytes((next(counter) + i) % 256 for i in range(n))


def build_messages() -> tuple[Batch, Ack, Pull, Downlink]:
    randbytes = counting_randbytes()
    ids = [uuid7(T0 + i, randbytes) for i in range(4)]
    common: dict[str, Any] = {"terminal_id": TERMINAL, "customer_id": CUSTOMER}
    sale = Sale("S-1", (SaleLine("1", "latte", "drink", 2, 450, 0, 50), SaleLine("2", "mug", None, 1, 300, 0, 0)),
                0, (Tender(TenderKind.LOYALTY, 250), Tender(TenderKind.CARD, 1000, "tok_1")), SaleState.PAID)
    ops = (
        Enroll(
            op_id=ids[0], at=T0, **common, name="Ana Lima", phone="+351912345678", email=None,
            card_code=None,
            consent=Consent(terms_accepted=True, channels=("phone",), source="pos", staff=None, at=T0),
            groups=("staff",), opted_out=False, signup_bonus=50, program_version=1,
        ),
        Earn(op_id=ids[1], at=T0 + 1, **common, sale_id="S-1", amount=1250, points=12, program_version=1,
             sale=sale),
        Redeem(op_id=ids[2], at=T0 + 2, **common, sale_id="S-2", points=10, program_version=1,
               rewards=(("coffee", 1),)),
        Refund(op_id=ids[3], at=T0 + 3, **common, sale_id="S-1", lines=(("2", 1),), reversed_points=2,
               returned_points=0, program_version=1),
    )
    batch = Batch(
        store_id="store-1", node_id=NODE, key_id=KEY_ID, seq=1, prev_hash=GENESIS_HASH, at=T0 + 4, ops=ops
    )
    ack = Ack(
        store_id="store-1",
        seq=1,
        batch_hash=body_hash(encode_batch(batch)),
        at=T0 + 10,
        results=(
            OpResult(ids[0], OpStatus.APPLIED, None, 0),
            OpResult(ids[1], OpStatus.APPLIED, None, 12),
            OpResult(ids[2], OpStatus.REFUSED, "insufficient_points", 0),
            OpResult(ids[3], OpStatus.APPLIED, None, -2),
        ),
        balances=(Balance(CUSTOMER, 12, 7),),
    )
    pull = Pull(store_id="store-1", key_id=KEY_ID, cursor=6, nonce=NONCE, at=T0 + 20, limit=500,
                cloud_key_id=KEY_ID)
    downlink = Downlink(
        store_id="store-1",
        nonce=NONCE,
        from_cursor=6,
        to_cursor=7,
        more=False,
        at=T0 + 21,
        customers=(CustomerRecord(CUSTOMER, "Ana Lima", "+351912345678", None, None, 12, 7, ("staff",), False,
                                  ((T0 + 86_400_000, 12),)),),
        program=Program("brand-1", 1, "Points", 1, 100, '{"kind":"points","signup_bonus":50}'),
        cloud_keys=(CLOUD_KEY_ENVELOPE,),
    )
    return batch, ack, pull, downlink


BATCH, ACK, PULL, DOWNLINK = build_messages()

# Keys: the claim and the enrollment are self-signed by KEY; the rotation and the
# announcement are sealed by KEY (the old key) and proven by OTHER_KEY (the new one).
CLAIM = Claim("lck_golden-token", KEY_ID, public_bytes(KEY.public_key()), NONCE, T0 + 30)
ENROLLMENT = Enrollment("store-1", "brand-1", KEY_ID, NONCE, T0 + 31, 1, KEY_ID, public_bytes(KEY.public_key()))
STORE_KEY_ROTATION = decode_store_key_rotation(
    open_envelope(seal_store_key_rotation("store-1", KEY, OTHER_KEY, NONCE, T0 + 40), MessageType.STORE_KEY).body
)
STORE_KEY_ROTATED = StoreKeyRotated("store-1", KEY_ID, OTHER_KEY_ID, T0 + 40 + WEEK_MS, NONCE, T0 + 41)
CLOUD_KEY_ANNOUNCEMENT = open_cloud_key(CLOUD_KEY_ENVELOPE, KEY.public_key())

PUBLIC_KEY_HEX = "03a107bff3ce10be1d70dd18e74bc09967e4d6309ba50d5f1ddc8664125531b8"
BATCH_HASH_HEX = "3bf0a2ce6bc08b1260d86463256801389dd30fd07e915fe57998ad30e0bf210c"

GOLDEN_BATCH = bytes.fromhex(  # 1582 bytes
    "9501a56261746368b8656432353531393a35363437356161373534363334373463c505c888a17601a873746f72655f69"
    "64a773746f72652d31a76e6f64655f6964d92430663065306430632d306230612d343930382d383730362d3035303430"
    "33303230313030a66b65795f6964b8656432353531393a35363437356161373534363334373463a373657101a9707265"
    "765f68617368c4200000000000000000000000000000000000000000000000000000000000000000a26174cf0000019b"
    "76daa804a36f7073948ea46b696e64a6656e726f6c6ca56f705f6964d92430313962373664612d613830302d37303030"
    "2d383430362d303830613063306531303132a26174cf0000019b76daa800ab7465726d696e616c5f6964d92430313233"
    "343536372d383961622d346364652d386630312d323334353637383961626364ab637573746f6d65725f6964d9243131"
    "3131313131312d323232322d343333332d383434342d353535353535353535353535a46e616d65a8416e61204c696d61"
    "a570686f6e65ad2b333531393132333435363738a5656d61696cc0a9636172645f636f6465c0a7636f6e73656e7485ae"
    "7465726d735f6163636570746564c3a86368616e6e656c7391a570686f6e65a6736f75726365a3706f73a57374616666"
    "c0a26174cf0000019b76daa800a667726f75707391a57374616666a96f707465645f6f7574c2ac7369676e75705f626f"
    "6e757332af70726f6772616d5f76657273696f6e018aa46b696e64a46561726ea56f705f6964d9243031396237366461"
    "2d613830312d373061302d386531302d313231343136313831613163a26174cf0000019b76daa801ab7465726d696e61"
    "6c5f6964d92430313233343536372d383961622d346364652d386630312d323334353637383961626364ab637573746f"
    "6d65725f6964d92431313131313131312d323232322d343333332d383434342d353535353535353535353535a773616c"
    "655f6964a3532d31a6616d6f756e74cd04e2a6706f696e74730caf70726f6772616d5f76657273696f6e01a473616c65"
    "85a773616c655f6964a3532d31a56c696e65739287a76c696e655f6964a131a3736b75a56c61747465a863617465676f"
    "7279a56472696e6ba87175616e7469747902aa756e69745f7072696365cd01c2ad6c696e655f646973636f756e7400a3"
    "7461783287a76c696e655f6964a132a3736b75a36d7567a863617465676f7279c0a87175616e7469747901aa756e6974"
    "5f7072696365cd012cad6c696e655f646973636f756e7400a374617800ad73616c655f646973636f756e7400a774656e"
    "646572739283a46b696e64a76c6f79616c7479a6616d6f756e74ccfaaa636172645f746f6b656ec083a46b696e64a463"
    "617264a6616d6f756e74cd03e8aa636172645f746f6b656ea5746f6b5f31a57374617465a47061696489a46b696e64a6"
    "72656465656da56f705f6964d92430313962373664612d613830322d373134312d393831612d31633165323032323234"
    "3236a26174cf0000019b76daa802ab7465726d696e616c5f6964d92430313233343536372d383961622d346364652d38"
    "6630312d323334353637383961626364ab637573746f6d65725f6964d92431313131313131312d323232322d34333333"
    "2d383434342d353535353535353535353535a773616c655f6964a3532d32a6706f696e74730aaf70726f6772616d5f76"
    "657273696f6e01a7726577617264739192a6636f66666565018aa46b696e64a6726566756e64a56f705f6964d9243031"
    "3962373664612d613830332d373165322d613232342d323632383261326332653330a26174cf0000019b76daa803ab74"
    "65726d696e616c5f6964d92430313233343536372d383961622d346364652d386630312d323334353637383961626364"
    "ab637573746f6d65725f6964d92431313131313131312d323232322d343333332d383434342d35353535353535353535"
    "3535a773616c655f6964a3532d31a56c696e65739192a13201af72657665727365645f706f696e747302af7265747572"
    "6e65645f706f696e747300af70726f6772616d5f76657273696f6e01c44020f774c087179133157951da50fe97455e84"
    "fee5997cfb29ead302a04c91676444881f17626353633aa5f7be0727e62ee2a7c8b727388777c31b3b8bf4179702"
)
GOLDEN_ACK = bytes.fromhex(  # 585 bytes
    "9501a361636bb8656432353531393a35363437356161373534363334373463c501e587a17601a873746f72655f6964a7"
    "73746f72652d31a373657101aa62617463685f68617368c4203bf0a2ce6bc08b1260d86463256801389dd30fd07e915f"
    "e57998ad30e0bf210ca26174cf0000019b76daa80aa7726573756c74739484a56f705f6964d92430313962373664612d"
    "613830302d373030302d383430362d303830613063306531303132a6737461747573a76170706c696564a4636f6465c0"
    "a6706f696e74730084a56f705f6964d92430313962373664612d613830312d373061302d386531302d31323134313631"
    "3831613163a6737461747573a76170706c696564a4636f6465c0a6706f696e74730c84a56f705f6964d9243031396237"
    "3664612d613830322d373134312d393831612d316331653230323232343236a6737461747573a772656675736564a463"
    "6f6465b3696e73756666696369656e745f706f696e7473a6706f696e74730084a56f705f6964d9243031396237366461"
    "2d613830332d373165322d613232342d323632383261326332653330a6737461747573a76170706c696564a4636f6465"
    "c0a6706f696e7473fea862616c616e6365739183ab637573746f6d65725f6964d92431313131313131312d323232322d"
    "343333332d383434342d353535353535353535353535a6706f696e74730ca776657273696f6e07c440775b548afce2b8"
    "bf46e207a5632ae0bf79902a476c4dfe93952ae7d2c09ea6188710cd6e52e7f7a166ca730fa60e7875e7faa807bcf800"
    "cd8e25487003a8170d"
)
GOLDEN_PULL = bytes.fromhex(  # 244 bytes
    "9501a470756c6cb8656432353531393a35363437356161373534363334373463c49088a17601a873746f72655f6964a7"
    "73746f72652d31a66b65795f6964b8656432353531393a35363437356161373534363334373463a6637572736f7206a5"
    "6e6f6e6365c410000102030405060708090a0b0c0d0e0fa26174cf0000019b76daa814a56c696d6974cd01f4ac636c6f"
    "75645f6b65795f6964b8656432353531393a35363437356161373534363334373463c440d2a35b8828ee2fc0307cd2be"
    "53553f05ede729fe229aec750402a23dfa5e0eaab08f582ba8a0bf4ae7f99b951028dbfaeae0f5bf146be9373e22d893"
    "44f83902"
)
GOLDEN_DOWNLINK = bytes.fromhex(  # 857 bytes
    "9501a8646f776e6c696e6bb8656432353531393a35363437356161373534363334373463c502f08aa17601a873746f72"
    "655f6964a773746f72652d31a56e6f6e6365c410000102030405060708090a0b0c0d0e0fab66726f6d5f637572736f72"
    "06a9746f5f637572736f7207a46d6f7265c2a26174cf0000019b76daa815a9637573746f6d657273918bab637573746f"
    "6d65725f6964d92431313131313131312d323232322d343333332d383434342d353535353535353535353535a46e616d"
    "65a8416e61204c696d61a570686f6e65ad2b333531393132333435363738a5656d61696cc0a9636172645f636f6465c0"
    "a762616c616e63650ca776657273696f6e07a667726f75707391a57374616666a96f707465645f6f7574c2a865787069"
    "72696e679192cf0000019b7c0104000cab6d65726765645f696e746fc0a770726f6772616d86a86272616e645f6964a7"
    "6272616e642d31a776657273696f6e01a46e616d65a6506f696e7473af706f696e74735f7065725f756e697401ab756e"
    "69745f616d6f756e7464a873657474696e6773d9237b226b696e64223a22706f696e7473222c227369676e75705f626f"
    "6e7573223a35307daa636c6f75645f6b65797391c501509501a9636c6f75642d6b6579b8656432353531393a35363437"
    "356161373534363334373463c4e788a17601a776657273696f6e02af70726576696f75735f6b65795f6964b865643235"
    "3531393a35363437356161373534363334373463a66b65795f6964b8656432353531393a323466366564366163626665"
    "31303039aa7075626c69635f6b6579c42029acbae141bccaf0b22e1a94d34d0bc7361e526d0bfe12c89794bc9322966d"
    "d7aa6f7665726c61705f6d73ce240c8400a26174cf0000019b76daa819a570726f6f66c4405cd33c1c371a6b1e6cb5c8"
    "cda46ebc1eb26f3ea08a00a66a99d39f3ff98cf760737ea9a6ca4ab6afa859c640d630504b8bdcef8a541eef41cf6ad8"
    "1e38da7e0bc4409a549009ebe1063a0b45ee59edc521ced903f60f94052791447be9a6e270d0ac38a73d788e465bd971"
    "92b5745b6d7d35e5656ceda94df79b59e64330bb75f805c4401de2742ab0b95b2ed7e001e33d7ed4521abb619daa3314"
    "e859f6a15641e48e2a3862fce227d69e96efc0b14114ea2de96787f5f0a7419449421aa3c7a98d4803"
)
GOLDEN_CLAIM = bytes.fromhex(  # 241 bytes
    "9501a5636c61696db8656432353531393a35363437356161373534363334373463c48c86a17601a5746f6b656eb06c63"
    "6b5f676f6c64656e2d746f6b656ea66b65795f6964b8656432353531393a35363437356161373534363334373463aa70"
    "75626c69635f6b6579c42003a107bff3ce10be1d70dd18e74bc09967e4d6309ba50d5f1ddc8664125531b8a56e6f6e63"
    "65c410000102030405060708090a0b0c0d0e0fa26174cf0000019b76daa81ec440b0ad4287e9ffc70a8957342236335c"
    "17895a2b1f681b8a363247ba332beba4e4afd3832ff52150e4fae0f1a32993a39586f8095aa115af9fe76b2e4082d9fa"
    "03"
)
GOLDEN_ENROLLMENT = bytes.fromhex(  # 320 bytes
    "9501aa656e726f6c6c6d656e74b8656432353531393a35363437356161373534363334373463c4d689a17601a873746f"
    "72655f6964a773746f72652d31a86272616e645f6964a76272616e642d31a66b65795f6964b8656432353531393a3536"
    "3437356161373534363334373463a56e6f6e6365c410000102030405060708090a0b0c0d0e0fa26174cf0000019b76da"
    "a81fb1636c6f75645f6b65795f76657273696f6e01ac636c6f75645f6b65795f6964b8656432353531393a3536343735"
    "6161373534363334373463b0636c6f75645f7075626c69635f6b6579c42003a107bff3ce10be1d70dd18e74bc09967e4"
    "d6309ba50d5f1ddc8664125531b8c44086f05d2691974326bc43c3fd5454f77af8738ca71167dcc80563773e55fa4cd0"
    "b0200f2b19f29bb6caa2c6d9238ddf1f6fd8258e8ac799a8af7dc493a19ad903"
)
GOLDEN_STORE_KEY = bytes.fromhex(  # 347 bytes
    "9501a973746f72652d6b6579b8656432353531393a35363437356161373534363334373463c4f288a17601a873746f72"
    "655f6964a773746f72652d31aa6f6c645f6b65795f6964b8656432353531393a35363437356161373534363334373463"
    "a66b65795f6964b8656432353531393a32346636656436616362666531303039aa7075626c69635f6b6579c42029acba"
    "e141bccaf0b22e1a94d34d0bc7361e526d0bfe12c89794bc9322966dd7a56e6f6e6365c410000102030405060708090a"
    "0b0c0d0e0fa26174cf0000019b76daa828a570726f6f66c440570d30e16a38aeb55f47cbbf26175763fa57fc1a896bb8"
    "de7819a3d17597e6d914cddbce64c534cec1911b683a63bde8030549fb6096a2ed008778dff156c900c4409bcfd994bd"
    "8be1cc4fa2637cf50ad8bb50d0bdb91f25d8f24d7354f66da13e5b5e7745036006fa9038ff03cb99910cd751b59a6dd8"
    "4fa67d3dfd6761f4ce9d0d"
)
GOLDEN_STORE_KEY_ACK = bytes.fromhex(  # 262 bytes
    "9501ad73746f72652d6b65792d61636bb8656432353531393a35363437356161373534363334373463c49987a17601a8"
    "73746f72655f6964a773746f72652d31aa6f6c645f6b65795f6964b8656432353531393a353634373561613735343633"
    "34373463a66b65795f6964b8656432353531393a32346636656436616362666531303039b26f6c645f6b65795f657870"
    "697265735f6174cf0000019b9ae72c28a56e6f6e6365c410000102030405060708090a0b0c0d0e0fa26174cf0000019b"
    "76daa829c4402ecb3d24b508f1efd46ce625de7d77d2d057dcc521be0e81f6df6adf1eadb5507bedf9505001bc8e4b66"
    "e6a7994d0fe8cee14122737cc9d51df1eb7c36d8140a"
)
GOLDEN_CLOUD_KEY = bytes.fromhex(  # 336 bytes
    "9501a9636c6f75642d6b6579b8656432353531393a35363437356161373534363334373463c4e788a17601a776657273"
    "696f6e02af70726576696f75735f6b65795f6964b8656432353531393a35363437356161373534363334373463a66b65"
    "795f6964b8656432353531393a32346636656436616362666531303039aa7075626c69635f6b6579c42029acbae141bc"
    "caf0b22e1a94d34d0bc7361e526d0bfe12c89794bc9322966dd7aa6f7665726c61705f6d73ce240c8400a26174cf0000"
    "019b76daa819a570726f6f66c4405cd33c1c371a6b1e6cb5c8cda46ebc1eb26f3ea08a00a66a99d39f3ff98cf760737e"
    "a9a6ca4ab6afa859c640d630504b8bdcef8a541eef41cf6ad81e38da7e0bc4409a549009ebe1063a0b45ee59edc521ce"
    "d903f60f94052791447be9a6e270d0ac38a73d788e465bd97192b5745b6d7d35e5656ceda94df79b59e64330bb75f805"
)

DECODERS: dict[MessageType, Callable[[bytes], object]] = {
    MessageType.BATCH: decode_batch,
    MessageType.ACK: decode_ack,
    MessageType.PULL: decode_pull,
    MessageType.DOWNLINK: decode_downlink,
    MessageType.CLAIM: decode_claim,
    MessageType.ENROLLMENT: decode_enrollment,
    MessageType.STORE_KEY: decode_store_key_rotation,
    MessageType.STORE_KEY_ACK: decode_store_key_rotated,
    MessageType.CLOUD_KEY: decode_cloud_key,
}
ENCODERS: dict[MessageType, Callable[[Any], bytes]] = {
    MessageType.BATCH: encode_batch,
    MessageType.ACK: encode_ack,
    MessageType.PULL: encode_pull,
    MessageType.DOWNLINK: encode_downlink,
    MessageType.CLAIM: encode_claim,
    MessageType.ENROLLMENT: encode_enrollment,
    MessageType.STORE_KEY: encode_store_key_rotation,
    MessageType.STORE_KEY_ACK: encode_store_key_rotated,
    MessageType.CLOUD_KEY: encode_cloud_key,
}
CASES = [
    pytest.param(MessageType.BATCH, BATCH, GOLDEN_BATCH, id="batch"),
    pytest.param(MessageType.ACK, ACK, GOLDEN_ACK, id="ack"),
    pytest.param(MessageType.PULL, PULL, GOLDEN_PULL, id="pull"),
    pytest.param(MessageType.DOWNLINK, DOWNLINK, GOLDEN_DOWNLINK, id="downlink"),
    pytest.param(MessageType.CLAIM, CLAIM, GOLDEN_CLAIM, id="claim"),
    pytest.param(MessageType.ENROLLMENT, ENROLLMENT, GOLDEN_ENROLLMENT, id="enrollment"),
    pytest.param(MessageType.STORE_KEY, STORE_KEY_ROTATION, GOLDEN_STORE_KEY, id="store-key"),
    pytest.param(MessageType.STORE_KEY_ACK, STORE_KEY_ROTATED, GOLDEN_STORE_KEY_ACK, id="store-key-ack"),
    pytest.param(MessageType.CLOUD_KEY, CLOUD_KEY_ANNOUNCEMENT, GOLDEN_CLOUD_KEY, id="cloud-key"),
]


def test_fixed_key() -> None:
    assert public_bytes(KEY.public_key()).hex() == PUBLIC_KEY_HEX
    assert KEY_ID == "ed25519:56475aa75463474c"


def test_golden_batch_via_seal_batch() -> None:
    envelope, batch_hash = seal_batch(BATCH, KEY)
    assert envelope.hex() == GOLDEN_BATCH.hex()
    assert batch_hash.hex() == BATCH_HASH_HEX
    assert ACK.batch_hash == batch_hash


@pytest.mark.parametrize(("type_", "message", "golden"), CASES)
def test_golden_envelope_bytes(type_: MessageType, message: object, golden: bytes) -> None:
    # comparing hex gives a readable diff when the format drifts
    assert seal(type_, ENCODERS[type_](message), KEY, KEY_ID).hex() == golden.hex()


@pytest.mark.parametrize(("type_", "message", "golden"), CASES)
def test_golden_envelope_decodes_to_the_equal_object(
    type_: MessageType, message: object, golden: bytes
) -> None:
    envelope = open_envelope(golden, type_)
    assert envelope.type is type_
    assert envelope.key_id == KEY_ID
    body = envelope.verify(KEY.public_key())
    assert DECODERS[type_](body) == message


def test_open_ack_and_open_downlink() -> None:
    assert open_ack(GOLDEN_ACK, KEY.public_key()) == ACK
    assert open_downlink(GOLDEN_DOWNLINK, KEY.public_key()) == DOWNLINK


# ------------------------------------------------------------- signatures


def relabel(data: bytes, new_type: str) -> bytes:
    version, _, key_id, body, signature = msgpack.unpackb(data, raw=False)
    packed: bytes = msgpack.packb([version, new_type, key_id, body, signature], use_bin_type=True)
    return packed


@pytest.mark.parametrize(
    ("golden", "source", "target"),
    [
        (GOLDEN_BATCH, MessageType.BATCH, MessageType.ACK),
        (GOLDEN_BATCH, MessageType.BATCH, MessageType.DOWNLINK),
        (GOLDEN_ACK, MessageType.ACK, MessageType.BATCH),
        (GOLDEN_PULL, MessageType.PULL, MessageType.BATCH),
        (GOLDEN_DOWNLINK, MessageType.DOWNLINK, MessageType.ACK),
        (GOLDEN_CLAIM, MessageType.CLAIM, MessageType.PULL),
        (GOLDEN_ENROLLMENT, MessageType.ENROLLMENT, MessageType.DOWNLINK),
        (GOLDEN_STORE_KEY, MessageType.STORE_KEY, MessageType.BATCH),
        (GOLDEN_STORE_KEY_ACK, MessageType.STORE_KEY_ACK, MessageType.ACK),
        (GOLDEN_CLOUD_KEY, MessageType.CLOUD_KEY, MessageType.STORE_KEY),
    ],
    ids=lambda v: v.value if isinstance(v, MessageType) else None,
)
def test_domain_separation(golden: bytes, source: MessageType, target: MessageType) -> None:
    relabelled = relabel(golden, target.value)
    # same body, same signature: the envelope parses as the new type ...
    envelope = open_envelope(relabelled, target)
    assert envelope.body == open_envelope(golden, source).body
    # ... but the signature only covers the original type's domain
    with pytest.raises(RemoteProtocolError) as info:
        envelope.verify(KEY.public_key())
    assert info.value.status_hint == 401
    assert info.value.code == "bad_signature"


@pytest.mark.parametrize(("type_", "message", "golden"), CASES)
def test_envelope_of_another_type_is_refused_before_verification(
    type_: MessageType, message: object, golden: bytes
) -> None:
    for other in MessageType:
        if other is not type_:
            with pytest.raises(RemoteProtocolError) as info:
                open_envelope(golden, other)
            assert info.value.code == "wrong_type"


@pytest.mark.parametrize(("type_", "message", "golden"), CASES)
def test_signature_by_another_key_fails(type_: MessageType, message: object, golden: bytes) -> None:
    forged = seal(type_, ENCODERS[type_](message), OTHER_KEY, KEY_ID)
    with pytest.raises(RemoteProtocolError) as info:
        open_envelope(forged, type_).verify(KEY.public_key())
    assert info.value.status_hint == 401
    # and the real envelope does not verify under the other key either
    with pytest.raises(RemoteProtocolError):
        open_envelope(golden, type_).verify(OTHER_KEY.public_key())


@pytest.mark.parametrize(("type_", "message", "golden"), CASES)
def test_every_single_byte_flip_of_the_body_fails(type_: MessageType, message: object, golden: bytes) -> None:
    envelope = open_envelope(golden, type_)
    public_key = KEY.public_key()
    body = bytearray(envelope.body)
    for index in range(len(body)):
        for mask in (0x01, 0x80, 0xFF):
            flipped = bytearray(body)
            flipped[index] ^= mask
            tampered = open_envelope(
                msgpack.packb([1, type_.value, KEY_ID, bytes(flipped), envelope.signature], use_bin_type=True),
                type_,
            )
            with pytest.raises(RemoteProtocolError) as info:
                tampered.verify(public_key)
            assert info.value.status_hint == 401


@pytest.mark.parametrize(("type_", "message", "golden"), CASES)
def test_every_single_byte_flip_of_the_signature_fails(
    type_: MessageType, message: object, golden: bytes
) -> None:
    envelope = open_envelope(golden, type_)
    for index in range(64):
        signature = bytearray(envelope.signature)
        signature[index] ^= 0x01
        tampered = open_envelope(
            msgpack.packb([1, type_.value, KEY_ID, envelope.body, bytes(signature)], use_bin_type=True), type_
        )
        with pytest.raises(RemoteProtocolError):
            tampered.verify(KEY.public_key())


@pytest.mark.parametrize("type_", list(MessageType), ids=lambda t: t.value)
def test_oversized_envelope_is_refused_before_parsing(type_: MessageType) -> None:
    limit = MAX_ENVELOPE_BYTES[type_]
    # 0xc1 is never valid msgpack: parsing would answer 400 bad_encoding, not 413
    with pytest.raises(RemoteProtocolError) as info:
        open_envelope(b"\xc1" * (limit + 1), type_)
    assert info.value.status_hint == 413
    assert info.value.code == "too_large"
    with pytest.raises(RemoteProtocolError) as info:
        open_envelope(b"\xc1" * limit, type_)
    assert info.value.status_hint == 400
    assert info.value.code == "bad_encoding"


def test_oversized_but_well_formed_envelope_is_refused() -> None:
    limit = MAX_ENVELOPE_BYTES[MessageType.PULL]
    body = encode_pull(PULL) + b"\x00" * limit
    data = msgpack.packb([1, "pull", KEY_ID, body, bytes(64)], use_bin_type=True)
    with pytest.raises(RemoteProtocolError) as info:
        open_envelope(data, MessageType.PULL)
    assert info.value.status_hint == 413


def test_seal_refuses_a_body_that_could_not_be_opened() -> None:
    limit = MAX_ENVELOPE_BYTES[MessageType.PULL]
    with pytest.raises(LocalProtocolError) as info:
        seal(MessageType.PULL, b"\x00" * limit, KEY, KEY_ID)
    assert info.value.code == "too_large"


@pytest.mark.parametrize(
    ("envelope", "code"),
    [
        ([1, "pull", KEY_ID, b"x"], "bad_envelope"),
        ([1, "pull", KEY_ID, b"x", bytes(64), 0], "bad_envelope"),
        ({"v": 1}, "bad_envelope"),
        ([2, "pull", KEY_ID, b"x", bytes(64)], "bad_version"),
        ([True, "pull", KEY_ID, b"x", bytes(64)], "bad_version"),
        ([1, "pull", "", b"x", bytes(64)], "bad_envelope"),
        ([1, "pull", "k" * 65, b"x", bytes(64)], "bad_envelope"),
        ([1, "pull", KEY_ID, "x", bytes(64)], "bad_envelope"),
        ([1, "pull", KEY_ID, b"x", bytes(63)], "bad_envelope"),
    ],
)
def test_malformed_envelopes(envelope: object, code: str) -> None:
    with pytest.raises(RemoteProtocolError) as info:
        open_envelope(msgpack.packb(envelope, use_bin_type=True), MessageType.PULL)
    assert info.value.code == code


# ---------------------------------------------------------- body checks


def test_downlink_to_cursor_is_range_checked() -> None:
    with pytest.raises(LocalProtocolError) as info:
        Downlink(**{**_fields(DOWNLINK), "to_cursor": 5})  # before from_cursor=6
    assert info.value.field == "to_cursor"
    with pytest.raises(LocalProtocolError) as info:
        Downlink(**{**_fields(DOWNLINK), "to_cursor": 2**64})
    assert info.value.field == "to_cursor"


@pytest.mark.parametrize("store_id", ["store-1\n", "Store-1", "-store", "s" * 64, "store_1"])
def test_store_id_must_be_a_slug(store_id: str) -> None:
    with pytest.raises(LocalProtocolError) as info:
        Pull(**{**_fields(PULL), "store_id": store_id})
    assert info.value.field == "store_id"


def _fields(obj: Any) -> dict[str, Any]:
    return {name: getattr(obj, name) for name in obj.__dataclass_fields__}


# ------------------------------------------------------------------ keys


def test_downlink_carries_the_announcement_of_the_next_cloud_key() -> None:
    downlink = open_downlink(GOLDEN_DOWNLINK, KEY.public_key())
    assert downlink.cloud_keys == (GOLDEN_CLOUD_KEY,)
    assert open_cloud_key(downlink.cloud_keys[0], KEY.public_key()) == CLOUD_KEY_ANNOUNCEMENT
    assert CLOUD_KEY_ANNOUNCEMENT.key_id == OTHER_KEY_ID and CLOUD_KEY_ANNOUNCEMENT.previous_key_id == KEY_ID


def test_claim_and_enrollment_are_checked_with_the_key_they_carry() -> None:
    assert open_claim(GOLDEN_CLAIM) == CLAIM
    assert open_enrollment(GOLDEN_ENROLLMENT) == ENROLLMENT
    assert open_enrollment(GOLDEN_ENROLLMENT, public_bytes(KEY.public_key())) == ENROLLMENT
    with pytest.raises(RemoteProtocolError) as info:  # the operator pinned another cloud key
        open_enrollment(GOLDEN_ENROLLMENT, public_bytes(OTHER_KEY.public_key()))
    assert info.value.code == "unexpected_cloud_key" and info.value.status_hint == 401
    # a claim for KEY's public key signed by another key (someone who saw the token, not the key)
    forged = seal(MessageType.CLAIM, encode_claim(CLAIM), OTHER_KEY, KEY_ID)
    with pytest.raises(RemoteProtocolError) as info:
        open_claim(forged)
    assert info.value.code == "bad_signature"
    # ... or in an envelope naming the signer's key instead of the claimed one
    relabelled = seal(MessageType.CLAIM, encode_claim(CLAIM), OTHER_KEY, OTHER_KEY_ID)
    with pytest.raises(RemoteProtocolError) as info:
        open_claim(relabelled)
    assert info.value.code == "bad_signature" and info.value.field == "key_id"


def test_claim_key_id_must_be_the_fingerprint_of_its_key() -> None:
    with pytest.raises(LocalProtocolError) as info:
        Claim("t", OTHER_KEY_ID, public_bytes(KEY.public_key()), NONCE, T0)
    assert info.value.field == "key_id" and info.value.code == "bad_key"


@pytest.mark.parametrize(("type_", "message"), [(MessageType.STORE_KEY, STORE_KEY_ROTATION),
                                                (MessageType.CLOUD_KEY, CLOUD_KEY_ANNOUNCEMENT)],
                         ids=["store-key", "cloud-key"])
def test_a_new_key_must_prove_itself(type_: MessageType, message: Any) -> None:
    encode, decode = ENCODERS[type_], DECODERS[type_]
    assert decode(encode(message)) == message
    for index in (0, 31, 63):  # any flipped bit of the proof
        proof = bytearray(message.proof)
        proof[index] ^= 0x01
        with pytest.raises(RemoteProtocolError) as info:
            decode(encode(replace(message, proof=bytes(proof))))
        assert info.value.code == "bad_proof" and info.value.status_hint == 401
    statement = encode(replace(message, proof=bytes(64)))
    # the old key's signature where the new key's belongs
    with pytest.raises(RemoteProtocolError):
        decode(encode(replace(message, proof=KEY.sign(PROOF_DOMAIN[type_] + statement))))
    # a proof is bound to its purpose: a store-key proof is no cloud-key proof, and back
    (other,) = (t for t in PROOF_DOMAIN if t is not type_)
    with pytest.raises(RemoteProtocolError):
        decode(encode(replace(message, proof=OTHER_KEY.sign(PROOF_DOMAIN[other] + statement))))
    assert decode(encode(replace(message, proof=OTHER_KEY.sign(PROOF_DOMAIN[type_] + statement)))) == message


def test_cloud_key_announcement_must_come_from_the_key_it_succeeds() -> None:
    with pytest.raises(RemoteProtocolError) as info:
        open_cloud_key(GOLDEN_CLOUD_KEY, OTHER_KEY.public_key())
    assert info.value.code == "bad_signature"
    # signed by the new key itself, naming KEY as its predecessor: not from KEY
    self_made = seal(MessageType.CLOUD_KEY, encode_cloud_key(CLOUD_KEY_ANNOUNCEMENT), OTHER_KEY, OTHER_KEY_ID)
    with pytest.raises(RemoteProtocolError) as info:
        open_cloud_key(self_made, OTHER_KEY.public_key())
    assert info.value.field == "previous_key_id"


def test_key_chain_round_trip_and_bounds() -> None:
    assert decode_key_chain(encode_key_chain((GOLDEN_CLOUD_KEY,) * 3)) == (GOLDEN_CLOUD_KEY,) * 3
    assert decode_key_chain(encode_key_chain(())) == ()
    with pytest.raises(LocalProtocolError):
        encode_key_chain((GOLDEN_CLOUD_KEY,) * (MAX_CLOUD_KEYS + 1))
    too_many: bytes = msgpack.packb([GOLDEN_CLOUD_KEY] * (MAX_CLOUD_KEYS + 1), use_bin_type=True)
    for data in (too_many, msgpack.packb(["text"]), msgpack.packb({"a": 1}), b"\xc1"):
        with pytest.raises(RemoteProtocolError):
            decode_key_chain(data)
