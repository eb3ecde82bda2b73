"""A Python load generator: N terminals, each one aiohttp connection.

The issue's reference figures (a bare aiohttp handler at 6,000-9,000 req/s)
come from a Python client sharing the machine's two cores; this reproduces
that setting next to wrk's. Bounded by a request count and a deadline.
Prints one JSON line.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import random
import time

import aiohttp


async def terminal(session: aiohttp.ClientSession, args: argparse.Namespace, n: int, deadline: float,
                   latencies: list[float], errors: list[int]) -> None:
    rng = random.Random(n)
    headers = {"Authorization": f"Bearer {args.token}"} if args.token else {}
    for i in range(args.max_requests):
        if time.perf_counter() > deadline:
            return
        if args.mode == "bare":
            method, path, body = "GET", "/bare", None
        elif args.mode == "lookup":
            method, path, body = "GET", f"/v1/customers?phone=%2B1555{rng.randrange(args.customers):07d}", None
        else:
            sale = f"{args.run}-{n}-{i}"
            headers = {**headers, "Idempotency-Key": sale}
            customer = f"00000000-0000-7000-8000-{rng.randrange(args.customers):012d}"
            method, path = "POST", "/v1/earns"
            body = {"customer_id": customer, "sale_id": sale, "amount": rng.randint(100, 100_000), "state": "paid"}
        started = time.perf_counter()
        async with session.request(method, args.url + path, json=body, headers=headers) as response:
            await response.read()
            if response.status >= 400:
                errors.append(response.status)
        latencies.append(time.perf_counter() - started)


async def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--url", required=True)
    parser.add_argument("--mode", choices=["bare", "lookup", "earn"], required=True)
    parser.add_argument("--conns", type=int, default=8)
    parser.add_argument("--seconds", type=float, default=3.0)
    parser.add_argument("--max-requests", type=int, default=200_000)
    parser.add_argument("--token", default="")
    parser.add_argument("--customers", type=int, default=100_000)
    parser.add_argument("--run", default="py")
    args = parser.parse_args()
    latencies: list[float] = []
    errors: list[int] = []
    connector = aiohttp.TCPConnector(limit=args.conns)
    async with aiohttp.ClientSession(connector=connector) as session:
        started = time.perf_counter()
        deadline = started + args.seconds
        await asyncio.gather(*(terminal(session, args, n, deadline, latencies, errors) for n in range(args.conns)))
        elapsed = time.perf_counter() - started
    latencies.sort()

    def pct(p: float) -> int:
        return int(latencies[min(len(latencies) - 1, int(len(latencies) * p))] * 1e6) if latencies else 0

    print(json.dumps({"requests": len(latencies), "rps": len(latencies) / elapsed, "p50_us": pct(0.5),
                      "p99_us": pct(0.99), "errors_status": len(errors), "errors_other": 0,
                      "connections": args.conns}))


if __name__ == "__main__":
    asyncio.run(main())
