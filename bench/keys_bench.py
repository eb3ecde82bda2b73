"""Latency of the key operations against a real ``loyalty-cloud serve`` on loopback (SQLite ledger).

    .venv/bin/python bench/keys_bench.py [--n 200] [--seconds 60]

Times, over HTTP on 127.0.0.1, with the cloud otherwise idle: a claim (token spent, key registered),
a store key rotation, the pull of a downlink that carries a cloud key announcement, and the cloud
key chain. Prints a table and a ``BENCH_JSON`` line. Each loop is bounded in count and in time.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from edge.cloud_client import CloudClient
from protocol import MessageType, Pull, encode_pull, key_id_for, seal
from protocol.key_messages import seal_claim, seal_store_key_rotation

BIN = Path(sys.executable).parent


def _cli(*args: str) -> str:
    return subprocess.run([str(BIN / args[0]), *args[1:]], capture_output=True, text=True, check=True).stdout


def _now_ms() -> int:
    return time.time_ns() // 1_000_000


async def _timed(n: int, limit_s: float, step: Callable[[int], Awaitable[None]]) -> dict[str, Any]:
    samples: list[float] = []
    deadline = time.perf_counter() + limit_s
    for i in range(n):
        if time.perf_counter() > deadline:
            break
        started = time.perf_counter()
        await step(i)
        samples.append((time.perf_counter() - started) * 1000)
    samples.sort()
    return {"n": len(samples), "p50_ms": round(statistics.median(samples), 2),
            "p99_ms": round(samples[min(len(samples) - 1, int(len(samples) * 0.99))], 2)}


async def _run(url: str, tokens: list[str], limit_s: float) -> dict[str, Any]:
    keys = [Ed25519PrivateKey.generate() for _ in tokens]
    results: dict[str, Any] = {}
    async with CloudClient(url) as client:
        async def claim(i: int) -> None:
            await client.post_envelope("/v1/claim", seal_claim(tokens[i], keys[i], os.urandom(16), _now_ms()))

        results["claim"] = await _timed(len(tokens), limit_s, claim)
        stores = [f"bench-{i}" for i in range(results["claim"]["n"])]

        async def rotate(i: int) -> None:
            new = Ed25519PrivateKey.generate()
            await client.post_envelope("/v1/store-keys", seal_store_key_rotation(
                stores[i], keys[i], new, os.urandom(16), _now_ms()))
            keys[i] = new

        results["store_key_rotation"] = await _timed(len(stores), limit_s, rotate)

        async def pull(i: int) -> None:  # names cloud key v1: the downlink carries v2's announcement
            key = keys[i % len(stores)]
            body = encode_pull(Pull(stores[i % len(stores)], key_id_for(key.public_key()), 0, os.urandom(16),
                                    _now_ms(), 100, "ed25519:0000000000000000"))
            await client.post_envelope("/v1/pull", seal(MessageType.PULL, body, key, key_id_for(key.public_key())))

        results["pull_with_announcement"] = await _timed(len(stores), limit_s, pull)

        async def chain(_: int) -> None:
            await client.get_bytes("/v1/cloud-keys")

        results["cloud_key_chain"] = await _timed(len(stores), limit_s, chain)
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=200, help="operations of each kind")
    parser.add_argument("--seconds", type=float, default=60.0, help="time limit of each loop")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        data = Path(tmp) / "cloud"
        _cli("loyalty-cloud", "init", "--data", str(data))
        _cli("loyalty-cloud", "brand", "add", "bench", "--name", "Bench", "--data", str(data))
        _cli("loyalty-cloud", "program", "set", "bench", "--name", "Bench", "--points-per-unit", "1",
             "--unit-amount", "100", "--data", str(data))
        _cli("loyalty-cloud", "key", "rotate", "--data", str(data))  # version 2, announced on downlinks
        tokens = [json.loads(_cli("loyalty-cloud", "store", "add", f"bench-{i}", "--brand", "bench", "--json",
                                  "--data", str(data)))["claim_token"] for i in range(args.n)]
        proc = subprocess.Popen([str(BIN / "loyalty-cloud"), "serve", "--data", str(data), "--port", "0",
                                 "--no-dispatch"], stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
        try:
            assert proc.stdout is not None
            url = proc.stdout.readline().strip().rsplit(" ", 1)[-1]
            results = asyncio.run(_run(url, tokens, args.seconds))
        finally:
            proc.send_signal(signal.SIGTERM)
            proc.wait(timeout=30)
    print(f"{'operation':<24} {'n':>5} {'p50 ms':>8} {'p99 ms':>8}")
    for name, row in results.items():
        print(f"{name:<24} {row['n']:>5} {row['p50_ms']:>8} {row['p99_ms']:>8}")
    print("BENCH_JSON " + json.dumps({"keys": results}))


if __name__ == "__main__":
    main()
