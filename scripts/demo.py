"""Run the product on loopback: a cloud and one edge on SQLite, a demo program,
a paired demo terminal and a demo customer. Ctrl-C stops everything.

State lives in ./demo-data (delete it for a fresh start).
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
BIN = Path(sys.executable).parent
DATA = Path(os.environ.get("DEMO_DATA", ROOT / "demo-data")).resolve()
CLOUD_PORT = int(os.environ.get("DEMO_CLOUD_PORT", "8600"))
EDGE_PORT = int(os.environ.get("DEMO_EDGE_PORT", "8700"))
PHONE = "+15145550123"


def run(*args: str) -> str:
    out = subprocess.run([str(BIN / args[0]), *args[1:]], check=False, capture_output=True, text=True)
    if out.returncode != 0:
        sys.exit(f"{' '.join(args[:3])} failed:\n{out.stderr}")
    return out.stdout


def http(method: str, url: str, body: Any = None, headers: dict[str, str] | None = None) -> tuple[int, Any]:
    data = None if body is None else json.dumps(body).encode()
    request = urllib.request.Request(url, data=data, method=method,
                                     headers={"Content-Type": "application/json", **(headers or {})})
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            return response.status, json.load(response)
    except urllib.error.HTTPError as exc:
        return exc.code, json.load(exc)


def wait_for(url: str, what: str, ok: Any = lambda data: True, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            status, data = http("GET", url)
            if status == 200 and ok(data):
                return
        except OSError:
            pass
        time.sleep(0.2)
    sys.exit(f"{what} did not come up at {url}")


def provision() -> dict[str, str]:
    cloud, edge = DATA / "cloud", DATA / "edge"
    marker = DATA / "provisioned.json"
    if marker.exists():
        return dict(json.loads(marker.read_text()))
    DATA.mkdir(parents=True, exist_ok=True)
    cloud_key = json.loads(run("loyalty-cloud", "init", "--data", str(cloud), "--json"))
    run("loyalty-cloud", "brand", "add", "demo", "--name", "Demo Coffee", "--data", str(cloud))
    settings = DATA / "program.json"
    settings.write_text(json.dumps({"signup_bonus": 20, "rewards": [
        {"reward_id": "coffee", "name": "Free coffee", "points": 50, "kind": "free_item", "sku": "coffee"},
        {"reward_id": "pastry", "name": "Free pastry", "points": 80, "kind": "free_item", "sku": "pastry"}]}))
    run("loyalty-cloud", "program", "set", "demo", "--name", "Demo points", "--points-per-unit", "1",
        "--unit-amount", "100", "--settings", str(settings), "--data", str(cloud))
    edge_key = json.loads(run(
        "loyalty-edge", "init", "--data", str(edge), "--store-id", "demo-store",
        "--cloud-url", f"http://127.0.0.1:{CLOUD_PORT}", "--cloud-public-key", cloud_key["public_key"],
        "--port", str(EDGE_PORT), "--interface", "127.0.0.1", "--sync-interval", "2", "--default-region", "CA",
    ))
    run("loyalty-cloud", "store", "add", "demo-store", "--brand", "demo", "--public-key", edge_key["public_key"],
        "--data", str(cloud))
    info = {"cloud_key_id": cloud_key["key_id"], "edge_key_id": edge_key["key_id"]}
    marker.write_text(json.dumps(info))
    return info


def main() -> int:
    info = provision()
    logs = DATA / "logs"
    logs.mkdir(exist_ok=True)
    procs = [
        subprocess.Popen([str(BIN / "loyalty-cloud"), "serve", "--data", str(DATA / "cloud"), "--port", str(CLOUD_PORT),
                          "--log-level", "INFO"], stdout=subprocess.DEVNULL, stderr=(logs / "cloud.log").open("ab")),
    ]

    def stop(*_: object) -> None:
        for proc in reversed(procs):
            proc.send_signal(signal.SIGTERM)
        for proc in procs:
            proc.wait(timeout=20)
        sys.exit(0)

    signal.signal(signal.SIGTERM, stop)
    try:
        cloud_url, edge_url = f"http://127.0.0.1:{CLOUD_PORT}", f"http://127.0.0.1:{EDGE_PORT}"
        wait_for(cloud_url + "/healthz", "the cloud")
        procs.append(subprocess.Popen([str(BIN / "loyalty-edge"), "serve", "--data", str(DATA / "edge")],
                                      stdout=subprocess.DEVNULL, stderr=(logs / "edge.log").open("ab")))
        wait_for(edge_url + "/healthz", "the edge", ok=lambda d: not any("program" in r for r in d["reasons"]))
        token_file = DATA / "terminal.token"
        if not token_file.exists():
            code = json.loads(run("loyalty-edge", "pair", "--data", str(DATA / "edge"), "--json"))["code"]
            status, paired = http("POST", edge_url + "/v1/pair", {"code": code, "name": "Demo till"})
            assert status == 201, paired
            token_file.write_text(paired["token"])
            token_file.chmod(0o600)
        token = token_file.read_text().strip()
        auth = {"Authorization": f"Bearer {token}"}
        status, customer = http("POST", edge_url + "/v1/customers", {
            "name": "Demo Customer", "phone": PHONE, "email": "demo@example.com",
            "consent": {"terms_accepted": True, "channels": ["email"], "staff": "demo"},
        }, {**auth, "Idempotency-Key": "demo-enroll"})
        if status == 201:
            http("POST", edge_url + "/v1/earns", {"customer_id": customer["customer_id"], "sale_id": "demo-sale-1",
                                                  "amount": 2_500, "state": "paid"},
                 {**auth, "Idempotency-Key": "demo-earn-1"})
        signup = run("loyalty-cloud", "portal", "link", "demo", "--store", "demo-store", "--receipt",
                     "--portal-url", cloud_url, "--data", str(DATA / "cloud")).strip()
        print(f"""
Loyalty Edge demo is running (cloud key {info['cloud_key_id']}, edge key {info['edge_key_id']}).
  cloud:        {cloud_url}
  edge API:     {edge_url}   (OpenAPI: {edge_url}/openapi.json)
  status page:  {edge_url}/status
  portal:       {cloud_url}/portal/demo   (sign in as demo@example.com or {PHONE})
  sign-up link: {signup}
                (as printed on a receipt: valid for 7 days)
  messages:     {DATA / 'cloud' / 'messages.jsonl'}   (the file sender: codes and messages land here)
  terminal token in {token_file}; logs in {logs}

Look the demo customer up, as a terminal would:
  curl -H "Authorization: Bearer {token}" '{edge_url}/v1/customers?phone=%2B15145550123'

Ctrl-C stops the cloud and the edge.""", flush=True)
        while all(proc.poll() is None for proc in procs):
            time.sleep(0.5)
        print("a process exited; see the logs", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        stop()
        return 0
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)


if __name__ == "__main__":
    sys.exit(main())
