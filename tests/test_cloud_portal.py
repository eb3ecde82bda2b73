"""The self-enrollment portal over HTTP, on both backends: sign-up from a signed link
creates a customer every edge of the brand receives, sign-in finds an existing one,
consent withdrawn on the portal stops messages, and every refused form changes
nothing (CSRF, size, content type, bad input, expired or foreign links)."""

from __future__ import annotations

import re
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from cloud.cloud_keyring import rotate_cloud_key
from cloud.dispatcher import Dispatcher
from cloud.keys import create_key
from cloud.senders import FileSender, Senders
from protocol.signup_link import RECEIPT_LINK_MS, LinkKind

from . import cloudkit as k
from .linkkit import linked_edge
from .msgkit import enroll_with, mailbox
from .portalkit import Browser, PortalCloud, element_text, field, portal_cloud, session_cookie

EMAIL = "helene.marchetti@example.org"


@pytest.fixture
async def portal(tmp_path: Path, backend: k.Backend) -> AsyncIterator[PortalCloud]:
    async with portal_cloud(tmp_path, backend) as running:
        yield running


async def test_sign_up_creates_a_customer_that_the_edge_then_receives(portal: PortalCloud, tmp_path: Path) -> None:
    cloud = portal.cloud
    edge = await linked_edge(tmp_path, cloud, "store-e", seed=4)
    try:
        browser = Browser(portal)
        await browser.sign_up(portal.link(store="store-e"), " Helene.Marchetti@Example.org ", name="Hélène")
        assert element_text(browser.html, "balance") == "25 points"  # the signup bonus
        assert "Hello Hélène" in browser.html
        (welcome,) = [m for m in await cloud.storage.list_messages() if m.kind == "welcome"]
        row = await cloud.storage.get_customer(welcome.customer_id)
        assert row is not None and (row.email, row.phone, row.enrolled_store, row.balance) == (
            EMAIL, None, "store-e", 25)
        consents = await cloud.storage.consent_history(row.customer_id)
        assert [(c.channel, c.granted, c.source) for c in consents] == [("email", True, "portal")]
        assert await cloud.storage.audit_balances() == []

        await edge.sync.attempt_once()  # the edge pulls: the new customer comes down with its balance
        seen = edge.store.customer(row.customer_id)
        assert (seen["email"], seen["name"], seen["balance"]["confirmed"]) == (EMAIL, "Hélène", 25)

        # Signing up again with the same email signs in: no second customer, no second bonus or welcome.
        again = Browser(portal)
        await again.sign_up(portal.link(store="store-e"), EMAIL, name="Someone Else")
        assert element_text(again.html, "balance") == "25 points" and "Hello Hélène" in again.html
        assert len([m for m in await cloud.storage.list_messages() if m.kind == "welcome"]) == 1
        assert len(await cloud.backend.rows(cloud.db_path, "SELECT * FROM customers")) == 1
    finally:
        await edge.close()


async def test_sign_in_then_withdrawing_consent_stops_messages(portal: PortalCloud, tmp_path: Path) -> None:
    cloud = portal.cloud
    cid = k.any_uuid()
    store = cloud.stores["store-a"]
    await cloud.send(store, [enroll_with(cid, phone="+33611223344", channels=("phone",), name="Ada"),
                             k.earn(cid, "s1", 40)])
    browser = Browser(portal)
    await browser.sign_in("06 11 22 33 44")  # national format: the portal's default region is FR
    assert browser.status == 200, browser.html
    assert element_text(browser.html, "balance") == "40 points"
    assert element_text(browser.html, "consent-status-phone") == "on"
    assert "you can take it now" in browser.html and "Free coffee" in browser.html  # 20-point reward
    assert "no email address on file" in browser.html

    await browser.post(f"/portal/{k.BRAND}/consent", {"channel": "phone", "action": "withdraw"})
    assert browser.status == 200 and element_text(browser.html, "notice") == "Your message settings are saved."
    assert element_text(browser.html, "consent-status-phone") == "off"
    history = await cloud.storage.consent_history(cid)
    assert [(c.channel, c.granted, c.source) for c in history] == [("phone", True, "pos"), ("phone", False, "portal")]

    earn = k.earn(cid, "s2", 10)
    await cloud.send(store, [earn])
    sent = tmp_path / "dispatched.jsonl"
    sender = FileSender(sent)
    await Dispatcher(cloud.storage, Senders(sender, sender)).tick(k.now_ms())
    by_key = {m.dedupe_key: m for m in await cloud.storage.list_messages()}
    assert (by_key[f"earned:{earn.op_id}"].status, by_key[f"earned:{earn.op_id}"].last_error) == ("skipped",
                                                                                                  "no_consent")
    assert mailbox(sent) == []

    # Giving it back: the next message goes again. Giving consent on a channel with no address is refused.
    await browser.post(f"/portal/{k.BRAND}/consent", {"channel": "email", "action": "give"})
    assert browser.status == 400 and "nothing was changed" in browser.html
    await browser.get(f"/portal/{k.BRAND}/account")
    await browser.post(f"/portal/{k.BRAND}/consent", {"channel": "phone", "action": "give"})
    next_earn = k.earn(cid, "s3", 10)
    await cloud.send(store, [next_earn])
    await Dispatcher(cloud.storage, Senders(sender, sender)).tick(k.now_ms())
    assert [line["to"] for line in mailbox(sent)] == ["+33611223344"]


async def test_session_cookie_is_private_and_sign_out_ends_it(portal: PortalCloud) -> None:
    cloud = portal.cloud
    browser = Browser(portal)
    await browser.get(portal.link())
    await browser.ask_code("+33 6 99 88 77 66", signup=True)
    response = await browser.enter_code(portal.last_code())
    cookie = session_cookie(response)
    assert "HttpOnly" in cookie and "SameSite=Strict" in cookie and "Path=/portal/" in cookie
    token = cookie.split(";")[0].split("=", 1)[1]
    rows = await cloud.backend.rows(cloud.db_path, "SELECT * FROM portal_sessions")
    assert len(rows) == 1 and token not in repr(rows)  # only a keyed hash is stored
    await browser.post(f"/portal/{k.BRAND}/signout", {})
    assert browser.status == 200 and 'id="signin"' in browser.html
    assert await cloud.backend.rows(cloud.db_path, "SELECT * FROM portal_sessions") == []
    await browser.get(f"/portal/{k.BRAND}/account")
    assert 'id="balance"' not in browser.html and 'id="signin"' in browser.html


async def test_a_wrong_code_says_how_many_tries_are_left(portal: PortalCloud) -> None:
    browser = Browser(portal)
    await browser.get(portal.link())
    await browser.ask_code("ada@example.org", signup=True)
    code = portal.last_code()
    await browser.enter_code(f"{(int(code) + 1) % 1_000_000:06d}")
    assert browser.status == 400 and element_text(browser.html, "error") == "That code is not right. 4 tries left."
    await browser.enter_code(code)
    assert browser.status == 200 and 'id="balance"' in browser.html


async def test_refused_forms_change_nothing(portal: PortalCloud) -> None:
    cloud = portal.cloud
    browser = Browser(portal)
    await browser.get(portal.link())
    before = await cloud.snapshot()
    code = f"/portal/{k.BRAND}/code"
    token = field(browser.html, "t")
    base = {"intent": "signup", "t": token, "name": "Ada", "contact": "ada@example.org", "terms": "1"}
    cases = [
        ({**base, "csrf": "forged"}, 403, "out of date"),
        ({k_: v for k_, v in base.items() if k_ != "terms"}, 400, "accept the program terms"),
        ({**base, "name": "  "}, 400, "Enter your first name"),
        ({**base, "name": "4111 1111 1111 1111"}, 400, "card number"),
        ({**base, "contact": "4111111111111111"}, 400, "card number"),
        ({**base, "contact": "not a phone"}, 400, "phone number does not look right"),
        ({**base, "contact": "ada@"}, 400, "email address does not look right"),
        ({**base, "intent": "other"}, 400, "Send the form from the page"),
        ({**base, "t": token[:-3] + "AAA"}, 400, "not valid"),
    ]
    for fields, status, text in cases:
        await browser.get(portal.link())
        await browser.post(code, fields)
        assert browser.status == status and text in browser.html, (fields, browser.html[-800:])
    response = await cloud.client.post(code, data="x" * 5000,
                                       headers={"Content-Type": "application/x-www-form-urlencoded"})
    assert response.status == 413 and "text/html" in response.headers["Content-Type"]
    response = await cloud.client.post(code, json=base)
    assert response.status == 415
    assert await cloud.snapshot() == before and portal.codes_sent() == 0
    # No GET changes anything; POST-only routes refuse it.
    assert (await cloud.client.get(code)).status == 405
    assert (await cloud.client.get(f"/portal/{k.BRAND}/signout")).status == 405
    response = await cloud.client.get("/portal/nobrand")
    assert response.status == 404 and "no rewards program" in await response.text()


async def test_expired_and_foreign_links_cannot_sign_up(portal: PortalCloud) -> None:
    cloud = portal.cloud
    browser = Browser(portal)
    eight_days_ago = k.now_ms() - RECEIPT_LINK_MS - 86_400_000
    await browser.get(portal.link(issued_at=eight_days_ago))
    assert browser.status == 410 and "expired" in element_text(browser.html, "link-problem")
    assert 'id="signup"' not in browser.html and 'id="signin"' in browser.html
    # A flyer link of the same age still works; a store's own key signs links for its store only.
    await browser.get(portal.link(kind=LinkKind.FLYER, issued_at=eight_days_ago))
    assert browser.status == 200 and 'id="signup"' in browser.html
    store_key = Ed25519PrivateKey.generate()
    await cloud.storage.add_store("store-q", k.BRAND, store_key.public_key().public_bytes_raw(), k.now_ms())
    await browser.get(portal.link(store="store-q", key=store_key))
    assert browser.status == 200 and 'id="signup"' in browser.html
    await browser.get(portal.link(store="store-a", key=store_key))
    assert browser.status == 400 and 'id="signup"' not in browser.html
    (key,) = [s for s in await cloud.storage.list_stores() if s.store_id == "store-q"]
    await cloud.storage.revoke_key(key.key_ids[0], k.now_ms())
    await browser.get(portal.link(store="store-q", key=store_key))
    assert browser.status == 400 and 'id="signup"' not in browser.html
    # Links signed by another version of the cloud key stay valid (flyers outlive a key rotation).
    next_version = create_key(cloud.db_path.parent / "cloud.key.next")
    await rotate_cloud_key(cloud.storage, cloud.key, next_version, 3_600_000, k.now_ms())
    await browser.get(portal.link(kind=LinkKind.FLYER, key=next_version.private))
    assert browser.status == 200 and 'id="signup"' in browser.html
    # A sign-up form posted with an expired token is refused before any code is sent.
    await browser.get(portal.link())
    before = await cloud.snapshot()
    expired = portal.link(issued_at=eight_days_ago).split("t=", 1)[1]
    await browser.post(f"/portal/{k.BRAND}/code", {"intent": "signup", "t": expired, "name": "Ada",
                                                   "contact": "ada@example.org", "terms": "1"})
    assert browser.status == 410 and await cloud.snapshot() == before


async def test_sign_in_with_an_unknown_contact_creates_nobody(portal: PortalCloud) -> None:
    browser = Browser(portal)
    await browser.sign_in("nobody@example.org")
    assert browser.status == 404 and "no member with this phone or email" in browser.html
    assert await portal.cloud.backend.rows(portal.cloud.db_path, "SELECT * FROM customers") == []


async def test_text_from_people_is_escaped(portal: PortalCloud) -> None:
    browser = Browser(portal)
    await browser.sign_up(portal.link(), "+33612121212", name='<b onmouseover="x">Zoë</b>')
    assert "<b onmouseover" not in browser.html
    assert "Hello &lt;b onmouseover=&quot;x&quot;&gt;Zoë&lt;/b&gt;" in browser.html
    assert re.search(r"<script", browser.html) is None
