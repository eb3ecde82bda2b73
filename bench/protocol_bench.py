"""Micro-benchmark of the sans-I/O protocol work the cloud reconciler does per op.

Run with ``.venv/bin/python bench/protocol_bench.py``. One realistic batch of
``--ops`` ops (65 % earns with amount and points, 25 % redemptions, 7 %
adjustments, 3 % voids, 1 % enrollments, as ``bench/cloud_bench.py`` builds
them) is encoded once; then each step is timed ``--repeat`` times and the
median CPU time is printed in µs per op:

* ``decode_batch``: the batch body to a validated ``Batch``;
* ``digest``: ``Op.digest()`` of every op (the cloud's idempotency check);
* ``results``: building one ``OpResult`` per op and one ``Balance`` per
  distinct customer (the reconciler's answer), divided by the ops;
* ``encode_ack``: the ``Ack`` of those to msgpack.

The last line is ``BENCH_JSON {...}``; its ``check`` holds SHA-256 prefixes of
the encoded batch, every digest and the encoded ack, so that two runs (say the
code before and after a change, e.g. with ``PYTHONPATH`` pointing at an older
copy of ``protocol``) can be compared for identical bytes.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import random
import statistics
import sys
import time
import uuid
from collections.abc import Callable, Sequence
from typing import Any

from protocol import (
    GENESIS_HASH,
    Ack,
    Adjust,
    Balance,
    Batch,
    Consent,
    Earn,
    Enroll,
    Op,
    OpResult,
    OpStatus,
    Redeem,
    Void,
    decode_batch,
    encode_ack,
    encode_batch,
    uuid7,
)

AT = 1_767_225_600_000  # a fixed clock: the same bytes on every run
TERMINAL = "3f1c2a9e-8b7d-4e6f-a5c4-1b2d3e4f5a6b"


def make_ops(n_ops: int, n_customers: int, seed: int = 7) -> list[Op]:
    """The op mix of ``cloud_bench.make_workload`` for one store and one batch."""
    rng = random.Random(seed)

    def op_id() -> str:
        return uuid7(AT, rng.randbytes)

    customers = [str(uuid.UUID(int=rng.getrandbits(128), version=4)) for _ in range(n_customers)]
    ops: list[Op] = []
    sales: list[tuple[str, str]] = []
    for _ in range(n_ops // 100):  # new customers, who earn in the same batch
        cid = str(uuid.UUID(int=rng.getrandbits(128), version=4))
        customers.append(cid)
        ops.append(Enroll(op_id=op_id(), at=AT, terminal_id=TERMINAL, customer_id=cid, name="Bench",
                          phone=None, email=None, card_code=f"BENCH-{len(customers):06d}",
                          consent=Consent(True, (), rng.choice(("pos", "kiosk")), None, AT)))
    while len(ops) < n_ops:
        cid = rng.choice(customers)
        roll = rng.random()
        sale = f"bench-001-0-{len(ops)}"
        if roll < 0.65:
            amount = rng.randint(100, 20_000)
            ops.append(Earn(op_id=op_id(), at=AT, terminal_id=TERMINAL, customer_id=cid, sale_id=sale,
                            amount=amount, points=amount // 100, program_version=1))
            sales.append((sale, cid))
        elif roll < 0.90:
            ops.append(Redeem(op_id=op_id(), at=AT, terminal_id=TERMINAL, customer_id=cid, sale_id=sale,
                              points=rng.randint(1, 120), program_version=1))
        elif roll < 0.97 or not sales:
            ops.append(Adjust(op_id=op_id(), at=AT, terminal_id=TERMINAL, customer_id=cid,
                              points=rng.choice((-1, 1)) * rng.randint(1, 40), reason="bench", actor="bench"))
        else:
            sale_id, owner = sales.pop(rng.randrange(len(sales)))
            ops.append(Void(op_id=op_id(), at=AT, terminal_id=TERMINAL, customer_id=owner, sale_id=sale_id,
                            reversed_points=0, returned_points=0))
    return ops


def timed(step: Callable[[], Any], repeat: int, per: int) -> tuple[float, Any]:
    """Median CPU µs per item over ``repeat`` runs of ``step``, and the last result.

    CPU time of this process rather than wall time: the cores are shared, and
    time spent descheduled is not the protocol's.
    """
    samples = []
    result = None
    for _ in range(repeat):
        started = time.process_time()
        result = step()
        samples.append((time.process_time() - started) * 1e6 / per)
    return statistics.median(samples), result


def prepare(n_ops: int = 1000, n_customers: int = 5000) -> tuple[dict[str, Callable[[], Any]], int]:
    """The four timed steps (name to a call without arguments), and the number of ops they work on."""
    ops = make_ops(n_ops, n_customers)
    batch = Batch(store_id="bench-001", node_id=TERMINAL, key_id="ed25519:0123456789abcdef", seq=1,
                  prev_hash=GENESIS_HASH, at=AT, ops=tuple(ops))
    body = encode_batch(batch)
    decoded = decode_batch(body)
    assert decoded == batch

    last: dict[str, int] = {}
    for op in decoded.ops:  # the balance each customer ends with, as the reconciler reports it
        last[op.customer_id] = len(last) + 1

    def results() -> tuple[tuple[OpResult, ...], tuple[Balance, ...]]:
        return (tuple(OpResult(op.op_id, OpStatus.APPLIED, None, 1) for op in decoded.ops),
                tuple(Balance(cid, points, 17) for cid, points in last.items()))

    op_results, balances = results()
    ack = Ack(store_id="bench-001", seq=1, batch_hash=hashlib.sha256(body).digest(), at=AT,
              results=op_results, balances=balances)
    steps: dict[str, Callable[[], Any]] = {
        "decode_batch": lambda: decode_batch(body),
        "digest": lambda: [op.digest() for op in decoded.ops],
        "results": results,
        "encode_ack": lambda: encode_ack(ack),
    }
    return steps, len(ops)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--ops", type=int, default=1000, help="ops in the batch")
    parser.add_argument("--customers", type=int, default=5000, help="customers the batch's ops pick from")
    parser.add_argument("--repeat", type=int, default=25, help="timed runs of each step (median taken)")
    args = parser.parse_args(argv)

    steps, n = prepare(args.ops, args.customers)
    figures: dict[str, float] = {}
    produced: dict[str, Any] = {}
    for name, step in steps.items():
        figures[name], produced[name] = timed(step, args.repeat, n)
    balances = len(produced["results"][1])

    def short(data: bytes) -> str:
        return hashlib.sha256(data).hexdigest()[:16]

    check = {"batch": short(encode_batch(produced["decode_batch"])), "digests": short(b"".join(produced["digest"])),
             "ack": short(produced["encode_ack"])}
    print(f"protocol, one batch of {n} ops ({balances} balances), median CPU time of {args.repeat} runs:")
    for name, value in figures.items():
        print(f"  {name:14} {value:8.2f} µs/op")
    print(f"  bytes: {check}")
    print("BENCH_JSON " + json.dumps({"ops": n, "balances": balances, "repeat": args.repeat,
                                      "us_per_op": {k: round(v, 2) for k, v in figures.items()},
                                      "check": check, "python": sys.version.split()[0]}, sort_keys=True))
    return 0


if __name__ == "__main__":
    sys.exit(main())
