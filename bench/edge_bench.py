"""Edge benchmark: lookups and durable earns under wrk, and a 100,000-op sync.

Run with ``bench/run``. Prints a table and one line ``BENCH_JSON {...}``.
Every load is bounded: wrk runs for a fixed number of seconds, the sync for
a fixed op count with a time limit.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from contextlib import contextmanager
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from edge.config import EdgeConfig, build_config, write_config  # noqa: E402
from edge.db import connect, migrate  # noqa: E402
from edge.keyfile import create_key  # noqa: E402
from edge.store import save_program, set_meta  # noqa: E402
from edge.terminals import create_pairing_code  # noqa: E402
from protocol import Program, uuid7  # noqa: E402

VENV_BIN = Path(sys.executable).parent


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def customer_id(n: int) -> str:
    return f"00000000-0000-7000-8000-{n:012d}"


def wait_http(url: str, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(url, timeout=2):
                return
        except OSError:
            time.sleep(0.1)
    raise RuntimeError(f"{url} did not come up")


@contextmanager
def process(args: list[str], url: str, env: dict[str, str] | None = None) -> Any:
    proc = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, env=env)
    try:
        wait_http(url)
        yield proc
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()


def populate_edge(data: Path, customers: int, cloud_url: str, cloud_key_hex: str, port: int) -> EdgeConfig:
    config = build_config({
        "data_dir": str(data), "store_id": "bench-store", "cloud_url": cloud_url, "cloud_public_key": cloud_key_hex,
        "port": port, "zeroconf": False, "sync_interval": 3600.0,
    }, env={})
    data.mkdir(parents=True, exist_ok=True)
    create_key(config.key_path)
    write_config(data / "edge.toml", config)
    conn = connect(config.db_path)
    migrate(conn)
    from bench.rules_bench import SETTINGS as RULES_SETTINGS
    from protocol.normalize import name_key

    now = int(time.time() * 1000)
    conn.execute("BEGIN IMMEDIATE")
    set_meta(conn, "node_id", uuid7(now))
    # The rules benchmark's program: whole-sale earns run every rule on every earn.
    save_program(conn, Program("bench", 1, "Bench", 1, 100, RULES_SETTINGS))
    conn.executemany(
        "INSERT INTO customers (customer_id, name, name_key, phone, email, card_code, confirmed, version, "
        "created_at, updated_at) VALUES (?, ?, ?, ?, ?, ?, ?, 1, ?, ?)",
        ((customer_id(n), f"Customer {n}", name_key(f"Customer {n}"), f"+1555{n:07d}", f"c{n}@example.com",
          f"CARD{n:07d}", 1000, now, now) for n in range(customers)),
    )
    code = create_pairing_code(conn, now)
    conn.execute("COMMIT")
    conn.close()
    config_code[str(data)] = code
    return config


config_code: dict[str, str] = {}


def pair(base: str, code: str) -> str:
    request = urllib.request.Request(base + "/v1/pair", data=json.dumps({"code": code, "name": "bench"}).encode(),
                                     headers={"Content-Type": "application/json"}, method="POST")
    with urllib.request.urlopen(request, timeout=10) as response:
        return str(json.load(response)["token"])


def wrk(script: str, url: str, connections: int, seconds: int, env: dict[str, str]) -> dict[str, Any]:
    threads = 2 if connections >= 2 else 1
    out = subprocess.run(
        ["wrk", f"-t{threads}", f"-c{connections}", f"-d{seconds}s", "--timeout", "5s",
         "-s", str(ROOT / "bench" / "lua" / script), url],
        capture_output=True, text=True, env={**os.environ, **env}, timeout=seconds + 60, check=True,
    )
    line = next(line for line in out.stdout.splitlines() if line.startswith("WRK_JSON "))
    data: dict[str, Any] = json.loads(line[len("WRK_JSON "):])
    data["rps"] = data["requests"] / (data["duration_us"] / 1e6)
    data["connections"] = connections
    return data


def pyload(mode: str, url: str, connections: int, seconds: int, token: str, customers: int, run: str) -> dict[str, Any]:
    out = subprocess.run(
        [sys.executable, str(ROOT / "bench" / "pyload.py"), "--url", url, "--mode", mode, "--conns", str(connections),
         # --token=: a token may start with "-" (URL-safe base64), which argparse would take for an option
         "--seconds", str(seconds), f"--token={token}", "--customers", str(customers), "--run", run],
        capture_output=True, text=True, timeout=seconds + 60, check=True,
    )
    data: dict[str, Any] = json.loads(out.stdout.strip().splitlines()[-1])
    return data


def median_run(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """The run with the median throughput, so figures come from one real run."""
    ordered = sorted(runs, key=lambda r: r["rps"])
    return ordered[len(ordered) // 2]


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--customers", type=int, default=100_000)
    parser.add_argument("--seconds", type=int, default=5)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--sync-ops", type=int, default=100_000)
    parser.add_argument("--skip-sync", action="store_true")
    args = parser.parse_args()
    if shutil.which("wrk") is None:
        print("wrk is required: apt-get install -y wrk", file=sys.stderr)
        return 2
    results: dict[str, Any] = {"customers": args.customers, "seconds": args.seconds, "repeats": args.repeats}
    with tempfile.TemporaryDirectory(prefix="loyalty-bench-") as tmp:
        root = Path(tmp)
        from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

        from protocol import public_bytes

        cloud_hex = public_bytes(Ed25519PrivateKey.generate().public_key()).hex()
        edge_port, bare_port = free_port(), free_port()
        t0 = time.perf_counter()
        config = populate_edge(root / "edge", args.customers, f"http://127.0.0.1:{free_port()}", cloud_hex, edge_port)
        results["populate_s"] = round(time.perf_counter() - t0, 1)
        edge_url = f"http://127.0.0.1:{edge_port}"
        bare_url = f"http://127.0.0.1:{bare_port}"
        edge_cmd = [str(VENV_BIN / "loyalty-edge"), "--log-level", "ERROR", "serve", "--data", str(config.data_dir)]
        with process([sys.executable, str(ROOT / "bench" / "bare_server.py"), str(bare_port)], bare_url + "/bare"), \
                process(edge_cmd, edge_url + "/healthz"):
            token = pair(edge_url, config_code[str(config.data_dir)])
            env = {"BENCH_TOKEN": token, "BENCH_CUSTOMERS": str(args.customers), "BENCH_RUN": "warm"}
            wrk("lookup.lua", edge_url, 8, 1, env)  # warm the page cache and the auth cache
            for conns in (8, 64):
                bare = [wrk("lookup.lua", bare_url, conns, args.seconds, {**env, "BENCH_PATH": "/bare"})
                        for _ in range(args.repeats)]
                look = [wrk("lookup.lua", edge_url, conns, args.seconds, env) for _ in range(args.repeats)]
                b, lk = median_run(bare), median_run(look)
                results[f"bare_{conns}"] = b
                results[f"lookup_{conns}"] = lk
                results[f"lookup_ratio_{conns}"] = round(lk["rps"] / b["rps"], 3)
            for conns in (8, 64):
                runs = [wrk("earn.lua", edge_url, conns, args.seconds, {**env, "BENCH_RUN": f"r{conns}-{i}"})
                        for i in range(args.repeats)]
                results[f"earn_{conns}"] = median_run(runs)
            for conns in (8, 64):
                runs = [wrk("earn_sale.lua", edge_url, conns, args.seconds, {**env, "BENCH_RUN": f"s{conns}-{i}"})
                        for i in range(args.repeats)]
                results[f"sale_earn_{conns}"] = median_run(runs)
            # The same figures with a Python client sharing the cores, as the references were taken.
            for conns in (8, 64):
                bare = [pyload("bare", bare_url, conns, args.seconds, "", args.customers, "b")
                        for _ in range(args.repeats)]
                look = [pyload("lookup", edge_url, conns, args.seconds, token, args.customers, "l")
                        for _ in range(args.repeats)]
                b, lk = median_run(bare), median_run(look)
                results[f"py_bare_{conns}"] = b
                results[f"py_lookup_{conns}"] = lk
                results[f"py_lookup_ratio_{conns}"] = round(lk["rps"] / b["rps"], 3)
                runs = [pyload("earn", edge_url, conns, args.seconds, token, args.customers, f"py{conns}-{i}")
                        for i in range(args.repeats)]
                results[f"py_earn_{conns}"] = median_run(runs)
        from bench.rules_bench import run as run_rules

        results["rules"] = run_rules()
        if not args.skip_sync:
            from bench.sync_bench import run_sync_bench

            results["sync"] = run_sync_bench(root / "sync", args.sync_ops)
    print_report(results)
    return 0


def print_report(r: dict[str, Any]) -> None:
    def ms(us: int) -> str:
        return f"{us / 1000:.2f} ms"

    lines = [f"Edge benchmark, {r['customers']:,} customers, {r['seconds']} s per run, median of {r['repeats']} runs",
             "  with wrk (C) as load generator:"]
    for conns in (8, 64):
        b, lk = r[f"bare_{conns}"], r[f"lookup_{conns}"]
        lines.append(f"  lookup by phone, {conns:>2} terminals: {lk['rps']:>8.0f} req/s  p50 {ms(lk['p50_us'])}"
                     f"  p99 {ms(lk['p99_us'])}  | bare handler {b['rps']:.0f} req/s"
                     f"  ratio {r[f'lookup_ratio_{conns}']:.0%}  errors {lk['errors_status'] + lk['errors_other']}")
    for conns in (8, 64):
        e = r[f"earn_{conns}"]
        lines.append(f"  durable earns,   {conns:>2} terminals: {e['rps']:>8.0f} req/s  p50 {ms(e['p50_us'])}"
                     f"  p99 {ms(e['p99_us'])}  errors {e['errors_status'] + e['errors_other']}")
    for conns in (8, 64):
        e = r[f"sale_earn_{conns}"]
        lines.append(f"  whole-sale earns (rules, sale kept), {conns:>2} terminals: {e['rps']:>6.0f} req/s"
                     f"  p50 {ms(e['p50_us'])}  p99 {ms(e['p99_us'])}  errors {e['errors_status'] + e['errors_other']}")
    lines.append("  with a Python aiohttp client as load generator instead of wrk:")
    for conns in (8, 64):
        b, lk, e = r[f"py_bare_{conns}"], r[f"py_lookup_{conns}"], r[f"py_earn_{conns}"]
        lines.append(f"  lookup by phone, {conns:>2} terminals: {lk['rps']:>8.0f} req/s  p50 {ms(lk['p50_us'])}"
                     f"  p99 {ms(lk['p99_us'])}  | bare handler {b['rps']:.0f} req/s"
                     f"  ratio {r[f'py_lookup_ratio_{conns}']:.0%}  errors {lk['errors_status']}")
        lines.append(f"  durable earns,   {conns:>2} terminals: {e['rps']:>8.0f} req/s  p50 {ms(e['p50_us'])}"
                     f"  p99 {ms(e['p99_us'])}  errors {e['errors_status']}")
    lines.append(f"  earning rules, {r['rules']['lines']}-line basket with promotions: "
                 f"{r['rules']['rules_us_per_earn_median']} µs per earn, its basis for refunds"
                 f" {r['rules']['basis_us_per_earn_median']} µs, a one-line refund"
                 f" {r['rules']['refund_us_median']} µs (medians)")
    if "sync" in r:
        s = r["sync"]
        lines.append(f"  sync of {s['ops']:,} queued ops to the cloud: {s['seconds']:.1f} s"
                     f" ({s['ops'] / s['seconds']:.0f} ops/s, {s['batches']} batches, all acked: {s['all_acked']})")
    print("\n".join(lines))
    print("BENCH_JSON " + json.dumps(r, sort_keys=True))


if __name__ == "__main__":
    sys.exit(main())
