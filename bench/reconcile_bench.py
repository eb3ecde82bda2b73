"""Micro-benchmark of the pure apply step: ``reconcile``, ``versioned`` and ``batch_effects`` per op.

Run with ``.venv/bin/python bench/reconcile_bench.py``. No database: one store
of one brand with ``--customers`` customers (balance 200) and ``--batches``
batches of ``--ops`` ops in ``cloud_bench.make_workload``'s mix (65% earn, 25%
redeem, 7% adjust, 3% void, 1% enroll). Each batch is decided against the
ledger as the batches before it left it, and its outcome gets its versions and
effects as ``worker.Worker.apply_next`` does. Prints the median µs/op of each
step (CPU time of the process) over ``--reps`` repetitions, a digest of everything decided (equal digests:
equal results, rows, notes and messages), and a last line ``BENCH_JSON {...}``.

``--compare DIR`` runs the same measurement, interleaved, on another checkout
(e.g. ``git worktree``/``git archive`` of main) in a child process each time, to
compare on a noisy machine. ``--breakdown`` prints what the pieces of an op
cost alone (µs per op): the protocol calls and the frozen rows every op needs.
"""

from __future__ import annotations

import argparse
import gc
import hashlib
import json
import os
import random
import statistics
import subprocess
import sys
import time
import timeit
import uuid
from pathlib import Path
from typing import Any

ROOT = Path(os.environ.get("RECONCILE_BENCH_ROOT") or Path(__file__).resolve().parent.parent)
sys.path.insert(0, str(ROOT))

from bench import cloud_bench  # noqa: E402
from bench.cloud_bench import OPENING_BALANCE, make_workload  # noqa: E402
from cloud.messages import batch_effects, needs_program  # noqa: E402
from cloud.model import BatchOutcome, CustomerState, LedgerState, versioned  # noqa: E402
from cloud.reconciler import reconcile  # noqa: E402
from protocol import MessageType, Op, Program, decode_batch, ids, open_envelope  # noqa: E402

SETTINGS = json.dumps({"point_value": {"amount": 1, "points": 1}})
STEPS = ("reconcile", "versioned", "batch_effects")
#: CPU time of this process: on shared, noisy cores the time another process holds the core is not ours.
_clock = time.process_time
#: A fixed clock and fixed random ids, so that two checkouts decide the very same ops (equal digests).
AT = 1_767_225_600_000


def _deterministic_workload() -> None:
    rng = random.Random(11)
    setattr(cloud_bench, "now_ms", lambda: AT)  # noqa: B010 (a module's globals, patched for this process)
    setattr(cloud_bench, "uuid7", lambda at: ids.uuid7(at, rng.randbytes))  # noqa: B010
    setattr(uuid, "uuid4", lambda: uuid.UUID(int=rng.getrandbits(128), version=4))  # noqa: B010


def _states(n_customers: int, n_batches: int, n_ops: int) -> tuple[str, str, list[tuple[int, tuple[Op, ...],
                                                                                         LedgerState, int]]]:
    """(store, brand, [(seq, ops, state, counter before)]): every batch with the ledger it sees."""
    _deterministic_workload()
    workload = make_workload(1, 1, n_batches, n_ops, n_customers)
    store = workload.stores[0]
    consent = json.dumps({"terms_accepted": True, "channels": [], "source": "import", "staff": None, "at": 0})
    customers = {
        cid: CustomerState(cid, store.brand_id, "Seeded", None, None, f"SEED-{n:06d}", consent, OPENING_BALANCE,
                           n + 1, store.store_id, 0, 0)
        for n, cid in enumerate(store.customers[:n_customers])
    }
    counter = n_customers
    sales: dict[str, Any] = {}
    program = Program(store.brand_id, 1, "Bench", 1, 100, SETTINGS)
    out = []
    for seq, (sealed,) in enumerate(workload.rounds, start=1):
        ops = decode_batch(open_envelope(sealed, MessageType.BATCH).body).ops
        named = {op.customer_id for op in ops}
        sale_ids = {sid for op in ops if isinstance(sid := getattr(op, "sale_id", None), str)}
        state = LedgerState(
            program_version=1, counter=0,
            customers={cid: customers[cid] for cid in named if cid in customers},
            sales={sid: sales[sid] for sid in sale_ids if sid in sales}, ops={},
        )
        out.append((seq, ops, state, counter))
        outcome = versioned(reconcile(store_id=store.store_id, brand_id=store.brand_id, seq=seq, ops=ops,
                                      state=state, now=1, programs={1: program}), counter)
        customers.update((c.customer_id, c) for c in outcome.customers)
        sales.update((s.sale_id, s) for s in outcome.sales)
        counter = outcome.counter
    return store.store_id, store.brand_id, out


def measure(args: argparse.Namespace) -> dict[str, Any]:
    store_id, brand_id, batches = _states(args.customers, args.batches, args.ops)
    program = Program(brand_id, 1, "Bench", 1, 100, SETTINGS)
    programs = {1: program}
    n_ops = sum(len(ops) for _, ops, _, _ in batches)
    per_rep: dict[str, list[float]] = {step: [] for step in STEPS}
    digest = hashlib.sha256()
    for rep in range(args.reps):
        spent = dict.fromkeys(STEPS, 0.0)
        for seq, ops, state, base in batches:
            gc.collect()
            t0 = _clock()
            decided = reconcile(store_id=store_id, brand_id=brand_id, seq=seq, ops=ops, state=state, now=1,
                                programs=programs)
            t1 = _clock()
            outcome: BatchOutcome = versioned(decided, base)
            t2 = _clock()
            effects = batch_effects(outcome, program if needs_program(outcome) else None)
            t3 = _clock()
            spent["reconcile"] += t1 - t0
            spent["versioned"] += t2 - t1
            spent["batch_effects"] += t3 - t2
            if rep == 0:
                digest.update(repr((decided, outcome, effects)).encode())
        for step in STEPS:
            per_rep[step].append(spent[step] / n_ops * 1e6)
    result: dict[str, Any] = {f"{step}_us_per_op": round(statistics.median(per_rep[step]), 2) for step in STEPS}
    result["total_us_per_op"] = round(sum(result[f"{step}_us_per_op"] for step in STEPS), 2)
    # The least a repetition took: what the code costs when the neighbours leave the core alone.
    result.update({f"{step}_min_us_per_op": round(min(per_rep[step]), 2) for step in STEPS})
    result["total_min_us_per_op"] = round(sum(result[f"{step}_min_us_per_op"] for step in STEPS), 2)
    result["ops"] = n_ops
    result["reps"] = args.reps
    result["digest"] = digest.hexdigest()[:16]
    result["root"] = str(ROOT)
    return result


def breakdown(args: argparse.Namespace) -> dict[str, float]:
    """What the pieces of an op cost alone (least of many runs, in this process): the protocol
    calls every op makes, and the frozen rows the apply step must build; what reconcile costs
    beyond them is its own."""
    from cloud.model import LedgerEntry, OpRecord, SaleState
    from protocol import Balance, OpResult, OpStatus

    store_id, brand_id, batches = _states(args.customers, args.batches, args.ops)
    programs = {1: Program(brand_id, 1, "Bench", 1, 100, SETTINGS)}
    seq, ops, state, _ = batches[-1]
    decided = reconcile(store_id=store_id, brand_id=brand_id, seq=seq, ops=ops, state=state, now=1,
                        programs=programs)
    row = next(iter(state.customers.values()))

    def cost(fn: Any) -> float:
        return round(min(timeit.repeat(fn, number=3, repeat=args.reps * 2)) / 3 / len(ops) * 1e6, 2)

    return {
        "reconcile": cost(lambda: reconcile(store_id=store_id, brand_id=brand_id, seq=seq, ops=ops, state=state,
                                            now=1, programs=programs)),
        "protocol Op.digest": cost(lambda: [op.digest() for op in ops]),
        "protocol OpResult": cost(lambda: [OpResult(op.op_id, OpStatus.APPLIED, None, 5) for op in ops]),
        "protocol Balance": cost(lambda: [Balance(op.customer_id, 5, 7) for op in ops]),
        "row OpRecord": cost(lambda: [OpRecord(op.op_id, b"", store_id, seq, "earn", op.terminal_id, op.customer_id,
                                               "applied", None, 5, 1, None, op.at, 1) for op in ops]),
        "row LedgerEntry": cost(lambda: [LedgerEntry(op.customer_id, op.op_id, store_id, None, "earn", 5, op.at)
                                         for op in ops]),
        "row SaleState": cost(lambda: [SaleState(store_id, op.op_id, op.customer_id, 5, 0, None, None)
                                       for op in ops]),
        "row CustomerState": cost(lambda: [CustomerState(
            row.customer_id, row.brand_id, row.name, row.phone, row.email, row.card_code, row.consent, row.balance, 9,
            row.enrolled_store, row.created_at, row.updated_at, row.groups, row.opted_out) for _ in ops]),
        "changed customers per op": round(len(decided.customers) / len(ops), 2),
    }


def _child(root: Path, args: argparse.Namespace) -> dict[str, Any]:
    cmd = [sys.executable, str(Path(__file__).resolve()), "--customers", str(args.customers), "--batches",
           str(args.batches), "--ops", str(args.ops), "--reps", str(args.reps)]
    done = subprocess.run(cmd, env={**os.environ, "RECONCILE_BENCH_ROOT": str(root)}, check=True,
                          capture_output=True, text=True, timeout=600)
    line = next(x for x in reversed(done.stdout.splitlines()) if x.startswith("BENCH_JSON "))
    result: dict[str, Any] = json.loads(line.removeprefix("BENCH_JSON "))
    return result


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--customers", type=int, default=5000)
    parser.add_argument("--batches", type=int, default=3)
    parser.add_argument("--ops", type=int, default=1000)
    parser.add_argument("--reps", type=int, default=7)
    parser.add_argument("--compare", type=Path, help="another checkout to measure, interleaved, as the baseline")
    parser.add_argument("--rounds", type=int, default=3, help="with --compare: child runs per checkout")
    parser.add_argument("--breakdown", action="store_true", help="what the pieces of an op cost alone")
    args = parser.parse_args()
    if args.breakdown:
        pieces = breakdown(args)
        for name, value in pieces.items():
            print(f"{name:>26}: {value:8.2f}")
        print("BENCH_JSON " + json.dumps(pieces))
        return 0
    if args.compare is None:
        result = measure(args)
        for step in (*STEPS, "total"):
            print(f"{step:>14}: {result[f'{step}_us_per_op']:8.2f} µs/op (min {result[f'{step}_min_us_per_op']:.2f})")
        print(f"{'digest':>14}: {result['digest']} ({result['ops']} ops x {result['reps']} reps)")
        print("BENCH_JSON " + json.dumps(result))
        return 0
    runs: dict[str, list[dict[str, Any]]] = {"before": [], "after": []}
    for _ in range(args.rounds):
        runs["before"].append(_child(args.compare.resolve(), args))
        runs["after"].append(_child(ROOT, args))
    summary: dict[str, Any] = {}
    for label, results in runs.items():
        summary[label] = {key: round(statistics.median(r[key] for r in results), 2)
                          for step in (*STEPS, "total") for key in (f"{step}_us_per_op", f"{step}_min_us_per_op")}
        summary[label]["digests"] = sorted({r["digest"] for r in results})
    print(f"{'µs/op':>14}  {'before':>8}  {'after':>8}  speed-up  (min: before, after, speed-up)")
    for step in (*STEPS, "total"):
        key, low = f"{step}_us_per_op", f"{step}_min_us_per_op"
        before, after = summary["before"][key], summary["after"][key]
        least = summary["before"][low], summary["after"][low]
        print(f"{step:>14}: {before:8.2f}  {after:8.2f}  {before / after:6.2f}x"
              f"    ({least[0]:.2f}, {least[1]:.2f}, {least[0] / least[1]:.2f}x)")
    same = summary["before"]["digests"] == summary["after"]["digests"] and len(summary["after"]["digests"]) == 1
    print(f"{'same outcome':>14}: {same} {summary['before']['digests']} {summary['after']['digests']}")
    summary["same_outcome"] = same
    print("BENCH_JSON " + json.dumps(summary))
    return 0 if same else 1


if __name__ == "__main__":
    sys.exit(main())
