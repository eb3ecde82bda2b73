"""``loyalty-cloud`` as operators run it: a real process per command, on each
ledger backend (PostgreSQL through ``LOYALTY_CLOUD_DSN`` in the environment)."""

from __future__ import annotations

import json
import os
import signal
import stat
import subprocess
import sys
import threading
import urllib.error
import urllib.request
from pathlib import Path

import pytest

from cloud.pg_schema import MIGRATIONS as PG_MIGRATIONS
from cloud.sqlite_schema import MIGRATIONS as SQLITE_MIGRATIONS
from protocol import load_public_key, open_ack

from . import cloudkit as k

CLI = str(Path(sys.executable).with_name("loyalty-cloud"))


def cli(*args: str | Path, expect: int = 0) -> subprocess.CompletedProcess[str]:
    proc = subprocess.run([CLI, *map(str, args)], capture_output=True, text=True, timeout=60, check=False)
    assert proc.returncode == expect, (proc.returncode, proc.stdout, proc.stderr)
    return proc


def reap(proc: subprocess.Popen[str]) -> None:
    """Kill a server a failed test left running, and close its pipes."""
    if proc.poll() is None:
        proc.kill()
        proc.wait()
    for stream in (proc.stdout, proc.stderr):
        if stream is not None:
            stream.close()


@pytest.fixture(autouse=True)
def ledger(backend: k.Backend, monkeypatch: pytest.MonkeyPatch) -> k.Backend:
    """Every command of a test talks to the test's backend; the env var is how an operator selects it too."""
    if backend.dsn is None:
        monkeypatch.delenv("LOYALTY_CLOUD_DSN", raising=False)
    else:
        monkeypatch.setenv("LOYALTY_CLOUD_DSN", backend.dsn)
    return backend


@pytest.fixture
def cloud_data(tmp_path: Path) -> Path:
    data = tmp_path / "data"
    cli("init", "--data", data)
    return data


def test_init_creates_private_files_and_is_idempotent(tmp_path: Path, ledger: k.Backend) -> None:
    data = tmp_path / "data"
    first = cli("init", "--data", data, "--json")
    info = json.loads(first.stdout)
    assert info["created"] is True and info["key_id"].startswith("ed25519:")
    assert stat.S_IMODE(data.stat().st_mode) == 0o700
    assert stat.S_IMODE((data / "cloud.key").stat().st_mode) == 0o600
    assert sorted(ledger.rows_sync(data / "cloud.sqlite3", "SELECT name FROM migrations")) == [
        (m.name,) for m in SQLITE_MIGRATIONS]
    assert [m.name for m in SQLITE_MIGRATIONS] == [m.name for m in PG_MIGRATIONS]
    # the ledger lives in exactly one place
    assert (data / "cloud.sqlite3").exists() == (ledger.dsn is None)
    again = cli("init", "--data", data)
    assert again.stdout.split() == [info["key_id"], info["public_key"]]
    assert cli("public-key", "--data", data).stdout.split() == [info["key_id"], info["public_key"]]
    assert json.loads(cli("public-key", "--data", data, "--json").stdout) == {
        "key_id": info["key_id"], "public_key": info["public_key"]}


def test_a_loose_key_file_is_refused(cloud_data: Path) -> None:
    os.chmod(cloud_data / "cloud.key", 0o644)
    proc = cli("public-key", "--data", cloud_data, expect=2)
    assert "0600" in proc.stderr and proc.stdout == ""
    cli("init", "--data", cloud_data, expect=2)
    assert stat.S_IMODE((cloud_data / "cloud.key").stat().st_mode) == 0o644  # reported, not silently fixed


def test_brand_program_store_setup(cloud_data: Path, ledger: k.Backend) -> None:
    signer = k.StoreSigner("store-a")
    cli("brand", "add", "acme", "--name", "Acme Coffee", "--data", cloud_data)
    cli("program", "set", "acme", "--name", "Acme Rewards", "--points-per-unit", "1", "--unit-amount", "100",
        "--data", cloud_data)
    out = cli("program", "set", "acme", "--name", "Double", "--points-per-unit", "2", "--unit-amount", "100",
              "--data", cloud_data)
    assert "v2" in out.stdout
    out = cli("store", "add", "store-a", "--brand", "acme", "--public-key", signer.public_raw.hex(),
              "--data", cloud_data)
    assert signer.key_id in out.stdout
    (row,) = [json.loads(line) for line in cli("store", "list", "--json", "--data", cloud_data).stdout.splitlines()]
    assert (row["store_id"], row["brand_id"], row["last_seq"], row["key_ids"]) == ("store-a", "acme", 0,
                                                                                   [signer.key_id])
    programs = ledger.rows_sync(
        cloud_data / "cloud.sqlite3", "SELECT version, name, points_per_unit FROM programs ORDER BY version"
    )
    assert programs == [(1, "Acme Rewards", 1), (2, "Double", 2)]
    assert cli("conflicts", "--data", cloud_data).stdout == ""

    good = cloud_data.parent / "settings.json"
    good.write_text(json.dumps({"kind": "points", "promotions": [
        {"kind": "spend_x", "min_spend": 5000, "bonus": 25}], "rewards": [
        {"reward_id": "coffee", "name": "Free coffee", "points": 50, "kind": "free_item", "sku": "coffee"}]}))
    out = cli("program", "set", "acme", "--name", "With rewards", "--points-per-unit", "1", "--unit-amount", "100",
              "--settings", good, "--data", cloud_data)
    assert "v3" in out.stdout
    (stored,) = ledger.rows_sync(cloud_data / "cloud.sqlite3", "SELECT settings FROM programs WHERE version = 3")
    assert json.loads(stored[0])["rewards"][0]["reward_id"] == "coffee"

    too_many = cloud_data.parent / "sixteen.json"
    too_many.write_text(json.dumps({"rewards": [
        {"reward_id": f"r{i}", "name": f"R{i}", "points": 10, "kind": "free_item", "sku": "t"} for i in range(16)]}))
    long_name = cloud_data.parent / "long.json"
    long_name.write_text(json.dumps({"rewards": [
        {"reward_id": "r", "name": "x" * 101, "points": 10, "kind": "free_item", "sku": "t"}]}))
    typo = cloud_data.parent / "typo.json"
    typo.write_text(json.dumps({"rewardz": []}))
    before = ledger.snapshot_sync(cloud_data / "cloud.sqlite3")
    for settings, field in ((too_many, "settings.rewards"), (long_name, "settings.rewards[0].name"),
                            (typo, "settings.rewardz"), (cloud_data.parent / "missing.json", "settings")):
        proc = cli("program", "set", "acme", "--name", "X", "--points-per-unit", "1", "--unit-amount", "100",
                   "--settings", settings, "--data", cloud_data, expect=2)
        assert field in proc.stderr, (field, proc.stderr)
    bad = [
        ("program", "set", "acme", "--name", "X", "--points-per-unit", "-1", "--unit-amount", "100"),
        ("program", "set", "acme", "--name", "X", "--points-per-unit", "1", "--unit-amount", "0"),
        ("program", "set", "acme", "--name", "X", "--points-per-unit", "one", "--unit-amount", "100"),
        ("program", "set", "nobody", "--name", "X", "--points-per-unit", "1", "--unit-amount", "100"),
        ("brand", "add", "acme", "--name", "Again"),
        ("brand", "add", "Not A Slug", "--name", "X"),
        ("brand", "add", "other"),
        ("store", "add", "store-b", "--brand", "acme", "--public-key", "zz"),
        ("store", "add", "store-b", "--brand", "nobody", "--public-key", k.StoreSigner("b").public_raw.hex()),
        ("store", "add", "store-b", "--brand", "acme", "--public-key", signer.public_raw.hex()),
        ("store", "revoke-key", "ed25519:0000000000000000"),
    ]
    for args in bad:
        proc = cli(*args, "--data", cloud_data, expect=2)
        assert "error" in proc.stderr and proc.stdout == "", args
    assert ledger.snapshot_sync(cloud_data / "cloud.sqlite3") == before


def test_operators_get_a_token_once_and_can_be_revoked(cloud_data: Path, ledger: k.Backend) -> None:
    cli("brand", "add", "acme", "--name", "Acme", "--data", cloud_data)
    made = json.loads(cli("operator", "add", "Acme accountant", "--brand", "acme", "--json",
                          "--data", cloud_data).stdout)
    assert made["brand_id"] == "acme" and made["token"].startswith("lec_")
    (listed,) = [json.loads(line) for line in cli("operator", "list", "--data", cloud_data).stdout.splitlines()]
    assert listed["operator_id"] == made["operator_id"] and "token" not in listed
    assert made["token"] not in cli("operator", "list", "--data", cloud_data).stdout
    before = ledger.snapshot_sync(cloud_data / "cloud.sqlite3")
    for args in (("operator", "add", "X", "--brand", "nobody"), ("operator", "add", ""),
                 ("operator", "revoke", "no-such-operator")):
        assert "error" in cli(*args, "--data", cloud_data, expect=2).stderr, args
    assert ledger.snapshot_sync(cloud_data / "cloud.sqlite3") == before
    out = cli("operator", "revoke", made["operator_id"], "--data", cloud_data).stdout
    assert "revoked" in out
    (row,) = ledger.rows_sync(cloud_data / "cloud.sqlite3", "SELECT revoked_at FROM operators")
    assert row[0] is not None


def test_commands_on_a_missing_data_dir_create_nothing(tmp_path: Path) -> None:
    missing = tmp_path / "nowhere"
    proc = cli("brand", "add", "acme", "--name", "Acme", "--data", missing, expect=2)
    assert "init" in proc.stderr
    cli("serve", "--data", missing, "--port", "0", expect=2)
    assert not missing.exists()


def test_serve_announces_its_port_answers_and_stops_on_sigterm(cloud_data: Path, ledger: k.Backend) -> None:
    signer = k.StoreSigner("store-a")
    cli("brand", "add", "acme", "--name", "Acme", "--data", cloud_data)
    cli("store", "add", "store-a", "--brand", "acme", "--public-key", signer.public_raw.hex(), "--data", cloud_data)
    key_id, public_hex = cli("public-key", "--data", cloud_data).stdout.split()

    proc = subprocess.Popen([CLI, "serve", "--data", str(cloud_data), "--host", "127.0.0.1", "--port", "0"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    watchdog = threading.Timer(60, proc.kill)
    watchdog.start()
    try:
        assert proc.stdout is not None
        line = proc.stdout.readline()
        assert line.startswith("listening on http://127.0.0.1:"), (line, proc.poll())
        url = line.split()[-1]
        assert not url.endswith(":0")
        with urllib.request.urlopen(f"{url}/healthz", timeout=10) as resp:
            health = json.load(resp)
        assert health["status"] == "ok" and health["key_id"] == key_id

        cid = k.any_uuid()
        over = k.redeem(cid, "sale-1", 20)
        data, batch_hash = signer.batch([k.enroll(cid), k.adjust(cid, 12), over])
        request = urllib.request.Request(f"{url}/v1/batches", data=data, method="POST",
                                         headers={"Content-Type": "application/x-msgpack"})
        with urllib.request.urlopen(request, timeout=10) as resp:
            assert resp.headers["Content-Type"] == "application/x-msgpack"
            ack = open_ack(resp.read(), load_public_key(bytes.fromhex(public_hex)))
        assert ack.batch_hash == batch_hash and ack.balances[0].points == 12
        assert [r.code for r in ack.results] == [None, None, "insufficient_balance"]

        bad = urllib.request.Request(f"{url}/v1/batches", data=b"\xc1", method="POST",
                                     headers={"Content-Type": "application/x-msgpack"})
        with pytest.raises(urllib.error.HTTPError) as info:
            urllib.request.urlopen(bad, timeout=10)
        with info.value as error:
            assert error.code == 400 and json.load(error)["error"]["code"] == "bad_encoding"

        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=30) == 0
    finally:
        watchdog.cancel()
        reap(proc)
    # what the server acknowledged is in the database after it stopped
    assert k.run_sync(ledger.balances(cloud_data / "cloud.sqlite3")) == {cid: 12}
    lines = cli("store", "list", "--data", cloud_data).stdout
    assert "seq=1" in lines
    (conflict,) = [json.loads(line) for line in cli("conflicts", "--data", cloud_data).stdout.splitlines()]
    assert (conflict["op_id"], conflict["points_requested"], conflict["balance_available"]) == (over.op_id, 20, 12)
    assert cli("audit", "--data", cloud_data).stdout.startswith("ok")


def test_dsn_flag_selects_postgres_and_bad_dsns_are_refused(tmp_path: Path, ledger: k.Backend,
                                                            monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("LOYALTY_CLOUD_DSN", raising=False)
    data = tmp_path / "data"
    if ledger.dsn is None:  # a DSN that is not PostgreSQL is operator error, before anything is created
        proc = cli("init", "--data", data, "--dsn", "mysql://root@127.0.0.1/x", expect=2)
        assert "(dsn)" in proc.stderr and "postgresql://" in proc.stderr
        assert not data.exists()
        return
    cli("init", "--data", data, "--dsn", ledger.dsn)
    assert not (data / "cloud.sqlite3").exists()
    cli("brand", "add", "acme", "--name", "Acme", "--data", data, "--dsn", ledger.dsn)
    assert ledger.rows_sync(data, "SELECT brand_id FROM brands") == [("acme",)]
    # the flag wins over the environment; without either, the verb looks for the SQLite ledger
    monkeypatch.setenv("LOYALTY_CLOUD_DSN", "postgresql://postgres@127.0.0.1:1/nowhere")
    assert cli("brand", "list", "--data", data, "--dsn", ledger.dsn).stdout.count('"acme"') == 1
    proc = cli("brand", "list", "--data", data, expect=1)
    assert proc.stderr.startswith("loyalty-cloud: database error: cannot open postgresql://postgres@127.0.0.1:1/")
    monkeypatch.delenv("LOYALTY_CLOUD_DSN")
    assert "not initialised" in cli("brand", "list", "--data", data, expect=2).stderr


def post_batch(url: str, data: bytes) -> tuple[int, bytes]:
    request = urllib.request.Request(f"{url}/v1/batches", data=data, method="POST",
                                     headers={"Content-Type": "application/x-msgpack"})
    try:
        with urllib.request.urlopen(request, timeout=10) as resp:
            return resp.status, resp.read()
    except urllib.error.HTTPError as error:
        with error:
            return error.code, error.read()


def test_separate_reconciler_processes_apply_what_serve_received(cloud_data: Path, ledger: k.Backend) -> None:
    """serve --workers 0 only receives (202); `reconcile --workers 2 --drain` applies; the resend gets the ack."""
    cli("brand", "add", "acme", "--name", "Acme", "--data", cloud_data)
    signers = [k.StoreSigner(f"store-{n}") for n in range(3)]
    for signer in signers:
        cli("store", "add", signer.store_id, "--brand", "acme", "--public-key", signer.public_raw.hex(),
            "--data", cloud_data)
    public_hex = cli("public-key", "--data", cloud_data).stdout.split()[1]
    proc = subprocess.Popen([CLI, "serve", "--data", str(cloud_data), "--port", "0", "--workers", "0",
                             "--ack-wait", "0.05"], stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    watchdog = threading.Timer(90, proc.kill)
    watchdog.start()
    try:
        assert proc.stdout is not None
        url = proc.stdout.readline().split()[-1]
        cid = k.any_uuid()
        sent = [signers[0].batch([k.enroll(cid), k.earn(cid, "s0", 10)])]
        sent += [s.batch([k.earn(cid, f"s-{s.store_id}", 5)]) for s in signers[1:]]
        for data, _ in sent:
            status, body = post_batch(url, data)
            assert status == 202 and json.loads(body)["error"]["code"] == "accepted"
        assert k.run_sync(ledger.balances(cloud_data / "cloud.sqlite3")) == {}
        out = cli("reconcile", "--workers", "2", "--drain", "--data", cloud_data)
        assert "drained by 2 workers" in out.stdout
        # stores 1 and 2 may have been applied before store 0 created the customer: then refused
        acks = []
        for data, batch_hash in sent:
            status, body = post_batch(url, data)
            assert status == 200
            ack = open_ack(body, load_public_key(bytes.fromhex(public_hex)))
            assert ack.batch_hash == batch_hash
            acks.append(ack)
        applied = sum(1 for ack in acks[1:] if ack.results[0].code is None)
        assert k.run_sync(ledger.balances(cloud_data / "cloud.sqlite3")) == {cid: 10 + 5 * applied}
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=30) == 0
    finally:
        watchdog.cancel()
        reap(proc)
    assert cli("reconcile", "--drain", "--data", cloud_data).stdout.strip() == "drained: 0 batches applied"


def test_the_periodic_job_and_reports_from_the_command_line(cloud_data: Path, ledger: k.Backend) -> None:
    cli("brand", "add", "acme", "--name", "Acme", "--data", cloud_data)
    cli("program", "set", "acme", "--name", "Acme", "--points-per-unit", "1", "--unit-amount", "100",
        "--data", cloud_data)
    ok = cli("reconcile", "--periodic", "--data", cloud_data)
    steps = [json.loads(line) for line in ok.stdout.splitlines()]
    assert [s["step"] for s in steps] == ["expire_points", "merge_duplicates", "audit_balances", "audit_chains",
                                          "liability_snapshot", "silent_stores"]
    assert all(s["ok"] for s in steps)
    out = cli("report", "liability", "--brand", "acme", "--format", "csv", "--data", cloud_data).stdout
    assert out.splitlines()[0] == "day,store_id,points,value,taken_at" and len(out.splitlines()) == 2
    body = json.loads(cli("report", "points", "--brand", "acme", "--period", "week", "--data", cloud_data).stdout)
    assert (body["report"], body["period"], body["rows"]) == ("points", "week", [])
    assert "(to)" in cli("report", "points", "--brand", "acme", "--to", "May 1st", "--data", cloud_data,
                         expect=2).stderr
    assert "nobody" in cli("report", "points", "--brand", "nobody", "--data", cloud_data, expect=2).stderr
    # a tampered balance fails the job (exit 1), and says which step
    cid = k.any_uuid()
    k.run_sync(ledger.execute(cloud_data / "cloud.sqlite3",
                              "INSERT INTO customers (customer_id, brand_id, name, consent, balance, version,"
                              f" enrolled_store, created_at, updated_at) VALUES ('{cid}', 'acme', 'X', '{{}}', 5, 1,"
                              " 'nowhere', 1, 1)"))
    failed = cli("reconcile", "--periodic", "--data", cloud_data, expect=1)
    assert "audit_balances" in failed.stderr


def test_reconciler_processes_run_until_sigterm(cloud_data: Path, ledger: k.Backend) -> None:
    """`reconcile --workers 2` keeps applying what arrives, and stops cleanly on SIGTERM."""
    cli("brand", "add", "acme", "--name", "Acme", "--data", cloud_data)
    signer = k.StoreSigner("store-a")
    cli("store", "add", "store-a", "--brand", "acme", "--public-key", signer.public_raw.hex(), "--data", cloud_data)
    serve = subprocess.Popen([CLI, "serve", "--data", str(cloud_data), "--port", "0", "--workers", "0"],
                             stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    workers = subprocess.Popen([CLI, "reconcile", "--workers", "2", "--data", str(cloud_data)],
                               stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    watchdog = threading.Timer(90, lambda: (serve.kill(), workers.kill()))
    watchdog.start()
    try:
        assert serve.stdout is not None
        url = serve.stdout.readline().split()[-1]
        cid = k.any_uuid()
        for ops in ([k.enroll(cid), k.earn(cid, "s1", 4)], [k.earn(cid, "s2", 6)]):
            data, batch_hash = signer.batch(ops)
            status, _ = post_batch(url, data)  # the separate workers apply it within the wait
            assert status == 200
            signer.advance(batch_hash)
        assert k.run_sync(ledger.balances(cloud_data / "cloud.sqlite3")) == {cid: 10}
        workers.send_signal(signal.SIGTERM)
        assert workers.wait(timeout=30) == 0, workers.stderr.read() if workers.stderr else ""
        serve.send_signal(signal.SIGTERM)
        assert serve.wait(timeout=30) == 0
    finally:
        watchdog.cancel()
        for proc in (serve, workers):
            if proc.poll() is None:
                proc.kill()
                proc.wait()
        assert serve.stdout is not None and workers.stderr is not None
        serve.stdout.close()
        workers.stderr.close()
