"""Merchant CSV files on both ledger backends: balance imports (matching or enrolling
customers), bulk opt-out and adjustments, the export, their bounds, and that every
change reaches the edges' pulls; through storage, the admin API and the real CLI."""

from __future__ import annotations

import asyncio
import csv
import dataclasses
import io
import json
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from cloud import csv_api, csv_rows
from cloud.csv_rows import CsvRejected, Kind, parse
from cloud.errors import ConfigError, NotFound, Refused
from cloud.model import CLOUD_ORIGIN

from . import cloudkit as k
from .test_cloud_admin_api import call, make_operator

ADA_PHONE = "+33600000000"


@pytest.fixture
async def cloud(tmp_path: Path, backend: k.Backend) -> AsyncIterator[k.Cloud]:
    async with k.running_cloud(tmp_path, backend) as cloud:
        yield cloud


async def customer(cloud: k.Cloud, name: str, phone: str | None, *, card: str | None = None,
                   points: int = 0) -> str:
    """A customer enrolled at store-a (and earning ``points``), through a real signed batch."""
    cid = k.any_uuid()
    ops: list[Any] = [dataclasses.replace(k.enroll(cid, name=name, phone=phone), card_code=card)]
    if points:
        ops.append(k.earn(cid, f"sale-{cid}", points, amount=points * 100))
    await cloud.send(cloud.stores["store-a"], ops)
    return cid


async def rows(cloud: k.Cloud, sql: str) -> list[tuple[Any, ...]]:
    return sorted(await cloud.backend.rows(cloud.db_path, sql), key=repr)


async def whole_state(cloud: k.Cloud) -> dict[str, list[tuple[Any, ...]]]:
    return {**await cloud.snapshot(), "csv_files": await rows(cloud, "SELECT * FROM csv_files")}


def apply(cloud: k.Cloud, kind: Kind, text: str, *, actor: str = "Maria", reason: str | None = None,
          region: str | None = None) -> Any:
    parsed = parse(kind, text.encode(), region=region, default_reason=reason if kind is Kind.ADJUST else None)
    return cloud.storage.apply_csv(k.BRAND, parsed, actor, k.now_ms(), reason=reason)


IMPORT = (
    "customer_code,phone,email,name,balance,consent_email\n"
    f",{ADA_PHONE},,,120,\n"
    "CARD-2,,Bob@Example.com,Bob,50,yes\n"
    ",06 12 34 56 78,,Chloé,0,\n"
)


async def test_an_import_credits_known_customers_enrolls_new_ones_and_goes_down(cloud: k.Cloud) -> None:
    ada = await customer(cloud, "Ada", ADA_PHONE, points=10)
    store_b = cloud.stores["store-b"]
    first, _ = await cloud.pull(store_b)
    result = await apply(cloud, Kind.IMPORT, IMPORT, reason="move from PaperCard", region="FR")
    assert (result.rows, result.created, result.changed, result.points) == (3, 2, 3, 170)

    people = {r[0]: r[1:] for r in await rows(cloud, "SELECT name, customer_id, card_code, email, phone, balance,"
                                                       " enrolled_store FROM customers")}
    assert people["Ada"][0] == ada and people["Ada"][4] == 130  # 10 earned here + 120 from the old program
    assert people["Bob"][1:] == ("CARD-2", "bob@example.com", None, 50, CLOUD_ORIGIN)
    assert people["Chloé"][3:] == ("+33612345678", 0, CLOUD_ORIGIN)
    bob, chloe = people["Bob"][0], people["Chloé"][0]
    assert await rows(cloud, "SELECT customer_id, kind, points, store_id FROM ledger_entries WHERE kind = 'import'") \
        == sorted([(ada, "import", 120, CLOUD_ORIGIN), (bob, "import", 50, CLOUD_ORIGIN)], key=repr)
    assert await rows(cloud, "SELECT customer_id, points, reason, actor, balance_after, csv_line FROM adjustments") \
        == sorted([(ada, 120, "move from PaperCard", "Maria", 130, 2), (bob, 50, "move from PaperCard", "Maria",
                                                                         50, 3)], key=repr)
    assert await rows(cloud, f"SELECT customer_id, channel, source, staff FROM consents WHERE customer_id IN"
                             f" ('{bob}', '{chloe}')") == [(bob, "email", "import", "Maria")]
    assert await cloud.storage.audit_balances() == []
    assert await rows(cloud, f"SELECT kind FROM messages WHERE customer_id IN ('{bob}', '{chloe}')") == []

    # Every customer the file touched has a new version: the next pull carries exactly them.
    page, _ = await cloud.pull(store_b, cursor=first.to_cursor)
    assert {(c.customer_id, c.balance) for c in page.customers} == {(ada, 130), (bob, 50), (chloe, 0)}
    assert page.to_cursor == first.to_cursor + 3
    assert [c.name for c in page.customers if c.customer_id == bob] == ["Bob"]


async def test_bad_rows_are_all_reported_with_their_lines_and_nothing_changes(cloud: k.Cloud) -> None:
    await customer(cloud, "Ada", ADA_PHONE)
    before = await whole_state(cloud)
    with pytest.raises(CsvRejected) as caught:
        parse(Kind.IMPORT, (
            "phone,name,balance\n"
            f"{ADA_PHONE},,10\n"
            "+33611111111,Eve,-5\n"
            "\n"
            ",Nobody,5\n"
            "not a phone,Zed,5\n"
            "+33622222222,Max,12x\n"
            "+33633333333,Too,1,2\n"
        ).encode())
    assert [(e.line, e.field, e.code) for e in caught.value.errors] == [
        (3, "balance", "out_of_range"), (5, None, "missing"), (6, "phone", "invalid_value"),
        (7, "balance", "invalid_type"), (8, None, "wrong_columns")]
    assert caught.value.total == 5

    with pytest.raises(CsvRejected) as caught:
        parse(Kind.ADJUST, b"phone,points,why,Phone\n+33600000000,5,x,\n")
    assert {(e.line, e.field) for e in caught.value.errors} == {(1, "header")} and caught.value.total == 2

    # Rows that parse but do not fit the ledger: every one reported, nothing written.
    with pytest.raises(CsvRejected) as caught:
        await apply(cloud, Kind.IMPORT, (
            "phone,email,name,balance\n"
            f"{ADA_PHONE},,,10\n"
            "+33644444444,new@example.com,,5\n"
            f"{ADA_PHONE},,,3\n"
            "+33655555555,,Dan,5\n"
            "+33655555555,,Dan again,5\n"
        ))
    assert [(e.line, e.field, e.code) for e in caught.value.errors] == [
        (3, "name", "cannot_enroll"), (4, None, "duplicate"), (6, "phone", "duplicate")]
    with pytest.raises(CsvRejected) as caught:
        await apply(cloud, Kind.OPT_OUT, f"phone,customer_id\n{ADA_PHONE},\n+33699999999,\n,{k.any_uuid()}\n")
    assert [(e.line, e.code) for e in caught.value.errors] == [(3, "unknown_customer"), (4, "unknown_customer")]
    assert await whole_state(cloud) == before


async def test_the_same_rows_twice_are_refused_however_the_file_is_spelt(cloud: k.Cloud) -> None:
    await customer(cloud, "Ada", ADA_PHONE)
    await apply(cloud, Kind.IMPORT, IMPORT, region="FR")
    before = await whole_state(cloud)
    resaved = ("\ufeffBALANCE,Name,Phone,Email,Customer_Code,consent_email\r\n"
               "0,Chloé,+33612345678,,,\r\n"
               f'"120",,"{ADA_PHONE[:3]} 6 00 00 00 00",,,no\r\n'
               "50,Bob,,bob@example.com,CARD-2,YES\r\n")
    for text in (IMPORT, resaved):
        with pytest.raises(Refused) as caught:
            await apply(cloud, Kind.IMPORT, text, actor="Someone else", region="FR")
        assert caught.value.code == "file_already_applied"
    assert await whole_state(cloud) == before
    # Other rows are another file: applied (the same customer may get a second opening balance).
    await apply(cloud, Kind.IMPORT, f"phone,balance\n{ADA_PHONE},1\n")
    with pytest.raises(NotFound):
        await cloud.storage.apply_csv("nobody", parse(Kind.IMPORT, b"phone,balance\n+33600000000,1\n"), "M",
                                      k.now_ms())


async def test_two_uploads_of_one_file_at_once_apply_it_once(cloud: k.Cloud) -> None:
    ada = await customer(cloud, "Ada", ADA_PHONE)
    file = parse(Kind.IMPORT, f"phone,balance\n{ADA_PHONE},40\n".encode())
    outcomes = await asyncio.gather(*(cloud.storage.apply_csv(k.BRAND, file, f"clerk {n}", k.now_ms())
                                      for n in range(2)), return_exceptions=True)
    assert sorted(type(o).__name__ for o in outcomes) == ["CsvResult", "Refused"]
    assert await cloud.balances() == {ada: 40}


async def test_bulk_opt_out_sets_the_flag_and_goes_down(cloud: k.Cloud) -> None:
    ada = await customer(cloud, "Ada", ADA_PHONE, card="CARD-1")
    bob = await customer(cloud, "Bob", "+33611111111")
    store_b = cloud.stores["store-b"]
    first, _ = await cloud.pull(store_b)
    result = await apply(cloud, Kind.OPT_OUT, f"customer_code,customer_id\nCARD-1,\n,{bob}\n")
    assert (result.rows, result.changed, result.points) == (2, 2, 0)
    page, _ = await cloud.pull(store_b, cursor=first.to_cursor)
    assert {(c.customer_id, c.opted_out) for c in page.customers} == {(ada, True), (bob, True)}
    # Back in for Ada; Bob stays out: only Ada takes a new version.
    result = await apply(cloud, Kind.OPT_OUT, f"phone,opted_out\n{ADA_PHONE},no\n+33611111111,yes\n")
    assert result.changed == 1
    again, _ = await cloud.pull(store_b, cursor=page.to_cursor)
    assert [(c.customer_id, c.opted_out) for c in again.customers] == [(ada, False)]
    # An opted-out customer earns nothing from then on (the cloud's rules read the flag).
    assert await rows(cloud, f"SELECT opted_out FROM customers WHERE customer_id = '{bob}'") in ([(1,)], [(True,)])


async def test_bulk_adjustments_with_reasons_and_an_actor(cloud: k.Cloud) -> None:
    ada = await customer(cloud, "Ada", ADA_PHONE, points=40)
    bob = await customer(cloud, "Bob", "+33611111111", card="B-7", points=5)
    store_b = cloud.stores["store-b"]
    first, _ = await cloud.pull(store_b)
    before = await whole_state(cloud)
    with pytest.raises(CsvRejected) as caught:
        await apply(cloud, Kind.ADJUST, f"phone,customer_code,points,reason\n{ADA_PHONE},,-30,a\n{ADA_PHONE},,-11,b\n"
                                        ",B-7,-6,c\n,B-7,0,d\n")
    assert [(e.line, e.code) for e in caught.value.errors] == [(5, "out_of_range")]  # parsing comes first
    assert await whole_state(cloud) == before
    with pytest.raises(CsvRejected) as caught:
        await apply(cloud, Kind.ADJUST, f"phone,customer_code,points,reason\n{ADA_PHONE},,-30,a\n"
                                        f"{ADA_PHONE},,-11,b\n,B-7,-6,c\n")
    assert [(e.line, e.field, e.code) for e in caught.value.errors] == [
        (3, "points", "insufficient_balance"), (4, "points", "insufficient_balance")]
    with pytest.raises(CsvRejected) as caught:
        await apply(cloud, Kind.ADJUST, f"phone,points\n{ADA_PHONE},5\n")
    assert [(e.line, e.field, e.code) for e in caught.value.errors] == [(2, "reason", "missing")]
    assert await whole_state(cloud) == before

    result = await apply(cloud, Kind.ADJUST, f"phone,customer_code,points,reason\n{ADA_PHONE},,-30,double scan\n"
                                             f"{ADA_PHONE},,+7,goodwill\n,B-7,-5,\n", reason="spring clean-up")
    assert (result.rows, result.changed, result.points) == (3, 2, -28)
    assert await cloud.balances() == {ada: 17, bob: 0}
    assert await rows(cloud, "SELECT customer_id, points, reason, actor, balance_after, csv_line FROM adjustments") \
        == sorted([(ada, -30, "double scan", "Maria", 10, 2), (ada, 7, "goodwill", "Maria", 17, 3),
                   (bob, -5, "spring clean-up", "Maria", 0, 4)], key=repr)
    assert len(await rows(cloud, "SELECT 1 FROM ledger_entries WHERE kind = 'adjust'")) == 3
    assert await cloud.storage.audit_balances() == []
    page, _ = await cloud.pull(store_b, cursor=first.to_cursor)
    assert {(c.customer_id, c.balance) for c in page.customers} == {(ada, 17), (bob, 0)}


async def test_the_export_round_trips_into_another_brand(cloud: k.Cloud) -> None:
    ada = await customer(cloud, "Ada", ADA_PHONE, card="CARD-1", points=40)
    mallory = await customer(cloud, "=HYPERLINK(\"http://x\")", "+33611111111", points=3)
    await apply(cloud, Kind.OPT_OUT, f"customer_id\n{mallory}\n")
    rows_ = await cloud.storage.export_balances(k.BRAND)
    plain = list(csv.reader(io.StringIO(csv_rows.export_text(rows_, False))))
    assert plain == [["customer_id", "customer_code", "balance", "opted_out"],
                     *sorted([[ada, "CARD-1", "40", "false"], [mallory, "", "3", "true"]])]
    text = csv_rows.export_text(rows_, True)
    assert "'=HYPERLINK" in text  # a spreadsheet shows the name, it does not run it
    parsed = parse(Kind.IMPORT, text.encode())
    result = await cloud.storage.apply_csv(k.OTHER_BRAND, parsed, "Maria", k.now_ms())
    assert (result.created, result.points) == (2, 43)
    zeta = await cloud.storage.export_balances(k.OTHER_BRAND)
    assert sorted((r[1:] for r in zeta), key=repr) == sorted((r[1:] for r in rows_), key=repr)  # new ids
    assert {r[0] for r in zeta}.isdisjoint({ada, mallory})
    with pytest.raises(NotFound):
        await cloud.storage.export_balances("nobody")


async def test_files_are_bounded_before_parsing(cloud: k.Cloud, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(csv_rows, "MAX_ROWS", 3)
    ok = "phone,balance\n" + "".join(f"+3361111111{n},1\n" for n in range(3))
    assert len(parse(Kind.IMPORT, ok.encode()).rows) == 3
    with pytest.raises(ConfigError) as caught:
        parse(Kind.IMPORT, (ok + "+33611111119,1").encode())
    assert caught.value.code == "too_large"
    monkeypatch.setattr(csv_rows, "MAX_BYTES", 40)
    with pytest.raises(ConfigError) as caught:
        parse(Kind.IMPORT, b"phone,balance\n" + b" " * 30 + b"\n")
    assert caught.value.code == "too_large"
    with pytest.raises(ConfigError) as caught:
        parse(Kind.IMPORT, b"phone,balance\n\xff,1\n")
    assert caught.value.code == "invalid_encoding"


async def test_csv_over_the_admin_api(cloud: k.Cloud, monkeypatch: pytest.MonkeyPatch) -> None:
    ada = await customer(cloud, "Ada", ADA_PHONE, points=10)
    operator, token = await make_operator(cloud, "Acme manager", k.BRAND)
    _, other = await make_operator(cloud, "Zeta manager", k.OTHER_BRAND)
    base = f"/v1/admin/brands/{k.BRAND}/csv"
    good = f"phone,points,reason\n{ADA_PHONE},5,birthday\n".encode()
    status, body = await call(cloud, "POST", base + "/adjust", token, good, **{"Content-Type": "text/csv"})
    assert status == 201, body
    assert (body["changed"], body["points"], body["actor"], body["operator_id"]) == (
        1, 5, "Acme manager", operator.operator_id)
    before = await whole_state(cloud)
    monkeypatch.setattr(csv_api, "MAX_BYTES", 64)
    for who, path, data, content_type, expected in (
        (token, base + "/adjust", good, "text/csv", (409, "file_already_applied", "file")),
        (other, base + "/adjust", good, "text/csv", (403, "forbidden_brand", "brand_id")),
        (token, base + "/adjust", good, "application/json", (415, "unsupported_media_type", "content_type")),
        (token, base + "/adjust?when=now", good, "text/csv", (400, "unknown_parameter", "when")),
        (token, base + "/merge", good, "text/csv", (404, "not_found", "action")),
        (token, base + "/adjust", b"phone,points\n" + b"+33600000000,1\n" * 5, "text/csv", (413, "too_large", None)),
        (token, base + "/import-balances", b"phone,balance\n+33600000000,x\n,1\n", "text/csv",
         (422, "invalid_rows", "file")),
    ):
        status, body = await call(cloud, "POST", path, who, data, **{"Content-Type": content_type})
        assert (status, body["error"]["code"], body["error"]["field"]) == expected, body
    assert body["error"]["total"] == 2
    assert [(r["line"], r["field"]) for r in body["error"]["rows"]] == [(2, "balance"), (3, None)]
    assert await whole_state(cloud) == before

    resp = await cloud.client.get(base + "/export?contacts=true", headers={"Authorization": f"Bearer {token}"})
    assert resp.status == 200 and resp.content_type == "text/csv"
    assert list(csv.reader(io.StringIO(await resp.text()))) == [
        ["customer_id", "customer_code", "balance", "opted_out", "name", "phone", "email"],
        [ada, "", "15", "false", "Ada", ADA_PHONE, ""]]
    status, body = await call(cloud, "GET", base + "/export?contacts=maybe", token)
    assert (status, body["error"]["field"]) == (400, "contacts")


def test_the_cli_imports_exports_and_refuses(tmp_path: Path, backend: k.Backend) -> None:
    data = tmp_path / "data"
    run = backend.cli(data)

    run("init")
    run("brand", "add", "acme", "--name", "Acme")
    good = tmp_path / "import.csv"
    good.write_text("customer_code,name,email,balance\nC-1,Ada,ada@example.com,100\nC-2,Bob,,25\n")
    result = json.loads(run("csv", "import-balances", "acme", good, "--actor", "Maria",
                            "--reason", "from PaperCard").stdout)
    assert (result["created"], result["points"], result["actor"], result["reason"]) == (2, 125, "Maria",
                                                                                       "from PaperCard")
    assert "already applied" in run("csv", "import-balances", "acme", good, "--actor", "Maria", expect=2).stderr
    bad = tmp_path / "bad.csv"
    bad.write_text("customer_code,points\nC-1,-101\nC-3,5\nC-2,abc\n")
    proc = run("csv", "adjust", "acme", bad, "--actor", "Maria", "--reason", "fix", expect=2)
    assert proc.stderr.splitlines()[:1] == ["line 4 (points): points must be a whole number"]
    bad.write_text("customer_code,points\nC-1,-101\nC-3,5\n")
    proc = run("csv", "adjust", "acme", bad, "--actor", "Maria", "--reason", "fix", expect=2)
    assert [line.split(":")[0] for line in proc.stderr.splitlines()[:2]] == ["line 2 (points)", "line 3"]
    run("csv", "opt-out", "acme", "-", "--actor", "Maria", stdin="customer_code\nC-2\n")
    out = tmp_path / "out.csv"
    run("csv", "export", "acme", out)
    assert out.stat().st_mode & 0o077 == 0
    exported = list(csv.DictReader(out.open()))
    assert sorted((r["customer_code"], r["balance"], r["opted_out"]) for r in exported) == [
        ("C-1", "100", "false"), ("C-2", "25", "true")]
    assert "email" not in exported[0]  # no contact fields unless asked
    with_contacts = run("csv", "export", "acme", "-", "--contacts").stdout
    assert "ada@example.com" in with_contacts
    assert "no brand" in run("csv", "export", "nobody", "-", expect=2).stderr
