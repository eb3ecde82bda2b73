"""The privacy scan: a full run through the real `loyalty-cloud` and `loyalty-edge` processes on
loopback, then a byte scan of every SQLite file (with its -wal and -shm) and of every log line,
metrics page and status page they produced.

Customers with distinctive names, phones and emails enroll at an edge (their consent lets the
file sender deliver their welcome), earn with card tokens, one tries a card number (refused),
another edge changes a profile, everything syncs; then one customer is erased with the CLI and
both edges scrub it. Then: no card number (13-19 digits passing Luhn) anywhere; none of the
erased customer's data in any database file or its WAL; no customer's data in any log, metrics
output or status page (cloud logs in JSON, one edge in text, the other in JSON, all at DEBUG).
"""

from __future__ import annotations

import json
import re
import time
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from urllib.parse import quote

import aiohttp
import pytest

from protocol.sale import looks_like_card_number

from .processkit import CloudProcess, EdgeProcess, cli, eventually, paired

pytestmark = pytest.mark.slow
RUN = uuid.uuid4().hex[:8]
CARD_NUMBER = "4111 1111 1111 1111"  # a test Visa number: passes Luhn
#: A digit run not inside a longer one, nor the fraction of a decimal (metrics print floats).
DIGITS = re.compile(rb"(?<![0-9.])[0-9][0-9 -]{11,22}[0-9](?![0-9])")

PEOPLE = {
    "erased": {"name": "Ophelia Wrenfield", "phone": "+15145557301", "email": "ophelia.wren@example.com",
               "card_code": "OPH-7301"},
    "kept1": {"name": "Tiberius Quillon", "phone": "+15145557302", "email": "tib.quillon@example.com",
              "card_code": "TIB-7302"},
    "kept2": {"name": "Marisol Vantrees", "phone": "+15145557303", "email": "marisol.v@example.com",
              "card_code": "MAR-7303"},
}
TOKENS = {"erased": "tok_ophelia_001", "kept1": "tok_tiberius_002", "kept2": "tok_marisol_003"}
NEW_PHONE = "+15145557399"  # the erased customer's phone, changed at the second edge before the erasure



@pytest.fixture
async def session() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as session:
        yield session



def sale(sale_id: str, token: str) -> dict[str, object]:
    return {"sale_id": sale_id, "sale_discount": 0, "state": "paid",
            "lines": [{"line_id": "1", "sku": "scone", "quantity": 2, "unit_price": 450}],
            "tenders": [{"kind": "card", "amount": 900, "card_token": token}]}


def card_numbers(data: bytes, window: tuple[int, int]) -> list[bytes]:
    """Runs of 13-19 digits (spaces and dashes allowed between) passing Luhn, leaving out the
    clock readings of this run (ms, µs and ns since 1970 look like 13, 16 and 19 digits)."""
    found = []
    for match in DIGITS.finditer(data):
        text = match.group().decode()
        digits = text.replace(" ", "").replace("-", "")
        if not looks_like_card_number(text):
            continue
        value = int(digits)
        if any(window[0] * scale <= value <= window[1] * scale for scale in (1, 1000, 1_000_000)):
            continue
        found.append(match.group())
    return found


def db_files(root: Path) -> list[Path]:
    return sorted(p for p in root.rglob("*") if p.is_file() and re.search(r"\.sqlite3(-wal|-shm)?$", p.name))


async def text_of(session: aiohttp.ClientSession, url: str) -> str:
    async with session.get(url) as response:
        assert response.status == 200, url
        return await response.text()


async def test_privacy_scan(tmp_path: Path, session: aiohttp.ClientSession) -> None:
    started = int(time.time() * 1000) - 86_400_000
    cloud = CloudProcess(tmp_path)
    cloud.service.argv += ["--log-level", "DEBUG", "--log-format", "json"]
    a = EdgeProcess(tmp_path, cloud, f"store-pa-{RUN}")
    b = EdgeProcess(tmp_path, cloud, f"store-pb-{RUN}")
    a.service.argv[1:1] = ["--log-level", "DEBUG"]
    b.service.argv[1:1] = ["--log-level", "DEBUG"]
    b.service.env["LOYALTY_EDGE_LOG_FORMAT"] = "json"
    outputs: list[str] = []  # everything shown to a person or a scraper: CLI output, metrics, status pages
    try:
        cloud.service.start()
        a.service.start()
        b.service.start()
        ta, tb = await paired(session, a), await paired(session, b)

        ids: dict[str, str] = {}
        for n, (who, person) in enumerate(PEOPLE.items()):
            body = {**person, "consent": {"terms_accepted": True, "channels": ["email", "phone"]}}
            status, data = await ta.call("POST", "/v1/customers", body)
            assert status == 201, data
            ids[who] = data["customer_id"]
            status, data = await ta.call("POST", "/v1/earns", {"customer_id": ids[who], "sale": sale(f"s{n}",
                                                                                                  TOKENS[who])})
            assert status == 201, data
            # Looked up by each contact, as a till does (query strings must not reach a log).
            for key in ("phone", "email"):
                status, found = await ta.call("GET", f"/v1/customers?{key}={quote(person[key], safe='')}")
                assert status == 200 and found["customers"][0]["customer_id"] == ids[who], found
        status, data = await ta.call("POST", "/v1/earns", {"customer_id": ids["kept1"],
                                                           "sale": sale("s-card", CARD_NUMBER)})
        assert status in (400, 422) and data["error"]["code"] == "card_number_refused", data
        assert "4111" not in json.dumps(data)

        async def at_b() -> bool:
            status, _ = await tb.call("GET", f"/v1/customers/{ids['erased']}")
            return status == 200

        await eventually(at_b, 60, "the customers to reach the second edge")
        status, data = await tb.call("PATCH", f"/v1/customers/{ids['erased']}", {"phone": NEW_PHONE})
        assert status == 200, data

        messages = cloud.data / "messages.jsonl"

        async def delivered() -> bool:
            if not messages.exists():
                return False
            kinds = [json.loads(line)["kind"] for line in messages.read_text().splitlines() if line.endswith("}")]
            return kinds.count("welcome") >= len(PEOPLE)

        await eventually(delivered, 60, "the welcome messages to be sent by the file sender")

        async def profile_synced() -> bool:
            return cloud.query("SELECT phone FROM customers WHERE customer_id = ?", ids["erased"]) == [(NEW_PHONE,)]

        await eventually(profile_synced, 60, "the second edge's profile change to reach the cloud")

        outputs.append(cli("loyalty-cloud", "customer", "erase", "acme", ids["erased"], "--actor", "Privacy desk",
                           "--reason", "request R-1", "--data", str(cloud.data)))

        async def scrubbed() -> bool:
            return all(edge.query("SELECT erased_at IS NOT NULL FROM customers WHERE customer_id = ?",
                                  ids["erased"]) == [(1,)] for edge in (a, b))

        await eventually(scrubbed, 60, "both edges to scrub the erased customer")
        status, data = await ta.call("GET", f"/v1/customers/{ids['erased']}")
        assert status == 200 and data["name"] == "" and data["phone"] is None and data["balance"]["confirmed"] == 9

        for edge in (a, b):
            outputs.append(await text_of(session, edge.url + "/status"))
            outputs.append(await text_of(session, edge.url + "/metrics"))
        outputs.append(await text_of(session, cloud.url + "/metrics"))

        # The files as they are while everything runs (the WALs are live), then after a clean stop.
        scans = [b"".join(p.read_bytes() for p in db_files(tmp_path))]
        for service in (a.service, b.service, cloud.service):
            assert service.stop() == 0
        scans.append(b"".join(p.read_bytes() for p in db_files(tmp_path)))
    finally:
        for service in (a.service, b.service, cloud.service):
            service.ensure_stopped()

    logs = "\n".join(p.read_text() for p in (tmp_path / "cloud.log", tmp_path / f"{a.store_id}.log",
                                              tmp_path / f"{b.store_id}.log"))
    assert '"level": "DEBUG"' in logs or '"level":"DEBUG"' in logs or "DEBUG" in logs
    assert any(line.startswith("{") for line in logs.splitlines())  # JSON lines are among them
    assert f"customer {ids['erased']} erased" in logs  # the erasure is logged, by id only
    seen = "\n".join([logs, *outputs])
    assert "<html" in seen.lower()

    window = (started, int(time.time() * 1000) + 86_400_000)
    for data in scans:
        assert card_numbers(data, window) == []
        for value in [*PEOPLE["erased"].values(), TOKENS["erased"], NEW_PHONE]:
            assert value.encode() not in data, value
        assert PEOPLE["kept1"]["name"].encode() in data  # the scan does see what is stored
    assert card_numbers(seen.encode(), window) == []
    for who, person in PEOPLE.items():
        for value in [*person.values(), TOKENS[who], NEW_PHONE]:
            assert value not in seen and quote(value, safe="") not in seen, (who, value)
