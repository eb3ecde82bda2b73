"""The portal in a real headless Chromium with a phone-sized screen, driven through
chromedriver the way a customer uses it: open the link from a receipt, fill the
sign-up form, type the code from the message, see the account page, withdraw a
consent, sign out. Pages carry no script (the Content-Security-Policy would block
one anyway) and every form works as plain HTML. A screenshot of each step is
saved in the test's tmp dir."""

from __future__ import annotations

from pathlib import Path

from . import cloudkit as k
from .msgkit import enroll_with
from .portalkit import portal_cloud
from .test_ops_status_page import ById, check_screenshot
from .webdriver import Browser, chromium


def parse(source: str) -> ById:
    parsed = ById()
    parsed.feed(source)
    return parsed


async def shot(browser: Browser, tmp: Path, name: str) -> None:
    check_screenshot(await browser.screenshot(tmp / name))


async def test_a_customer_joins_from_a_receipt_link_on_a_phone(tmp_path: Path, backend: k.Backend) -> None:
    async with portal_cloud(tmp_path, backend) as portal, chromium(tmp_path) as browser:
        cloud = portal.cloud
        base = str(cloud.client.make_url("/")).rstrip("/")
        await browser.open(base + portal.link(store="store-a"))
        page = parse(await browser.source())
        assert await browser.title() == "Join or sign in · Acme Coffee"
        assert {"signup", "signin", "name", "contact", "terms"} <= set(page.attrs)
        assert "script" not in page.tags and "img" not in page.tags and "link" not in page.tags
        await shot(browser, tmp_path, "1-join.png")

        # A form sent without ticking the terms comes back with the reason and the typed values.
        await browser.type("#name", "Hélène")
        await browser.type("#contact", "06 12 34 56 78")
        await browser.click("#signup button")
        # `required` stops the browser itself from sending the form without the box ticked.
        assert await browser.exists("#signup") and portal.codes_sent() == 0
        await browser.click("#terms")
        await browser.click("#messages")
        await browser.click("#signup button")
        await browser.wait_for("#sent-to")
        assert await browser.text("#sent-to") == "We sent a code to +33612345678."
        await shot(browser, tmp_path, "2-code.png")

        await browser.type("#code", "000000" if portal.last_code() != "000000" else "111111")
        await browser.click("#verify button")
        await browser.wait_for("#error")
        assert "tries left" in await browser.text("#error")
        await browser.type("#code", portal.last_code())
        await browser.click("#verify button")
        await browser.wait_for("#balance")
        assert (await browser.current_url()).endswith("/portal/acme/account")
        assert await browser.text("#balance") == "25 points"
        assert await browser.text("#consent-status-phone") == "on"
        earn = await browser.text("#earn")
        assert "1 point for every 1.00 spent (before tax)" in earn and "3 points for each latte" in earn
        assert "25 points when you join" in earn
        redeem = await browser.text("#redeem")
        assert "Free coffee: 20 points you can take it now" in redeem and "Lunch: 300 points" in redeem
        assert "expire by" in await browser.text("#expiring")  # the bonus lot lapses within a month
        cookies = {c["name"]: c for c in await browser.cookies()}
        assert cookies["lp_session"]["httpOnly"] is True and cookies["lp_session"]["sameSite"] == "Strict"
        await shot(browser, tmp_path, "3-account.png")

        await browser.click("#consent-phone")
        await browser.wait_for("#notice")
        assert await browser.text("#notice") == "Your message settings are saved."
        assert await browser.text("#consent-status-phone") == "off"
        (customer,) = await cloud.backend.rows(cloud.db_path, "SELECT customer_id FROM customers")
        history = await cloud.storage.consent_history(customer[0])
        assert [(c.channel, c.granted, c.source) for c in history] == [("phone", True, "portal"),
                                                                       ("phone", False, "portal")]
        await shot(browser, tmp_path, "4-consent.png")

        await browser.click("#signout button")
        await browser.wait_for("#signin")
        assert await browser.exists("#signin") and not await browser.exists("#balance")


async def test_a_member_signs_in_and_sees_points_expiring(tmp_path: Path, backend: k.Backend) -> None:
    async with portal_cloud(tmp_path, backend) as portal, chromium(tmp_path) as browser:
        cloud = portal.cloud
        cid = k.any_uuid()
        await cloud.send(cloud.stores["store-a"], [enroll_with(cid, email="ada@example.org", channels=("email",),
                                                               name="Ada <Lovelace>"), k.earn(cid, "s1", 45)])
        base = str(cloud.client.make_url("/")).rstrip("/")
        await browser.open(f"{base}/portal/{k.BRAND}")
        assert not await browser.exists("#signup")  # joining needs a link from a receipt or a flyer
        await browser.type("#signin-contact", "Ada@Example.org")
        await browser.click("#signin button")
        await browser.wait_for("#code")
        await browser.type("#code", portal.last_code())
        await browser.click("#verify button")
        await browser.wait_for("#balance")
        assert await browser.text("#summary h2") == "Hello Ada <Lovelace>"
        assert await browser.text("#balance") == "45 points"
        assert (await browser.text("#expiring")).startswith("45 points expire by ")
        assert await browser.text("#consent-status-email") == "on"
        assert "no text messages (sms) address on file" in await browser.text("#consent-row-phone")
        await shot(browser, tmp_path, "member.png")


async def test_a_member_claims_a_receipt_from_its_qr_code(tmp_path: Path, backend: k.Backend) -> None:
    from protocol import UnclaimedSale, uuid7
    from protocol.claim_ops import NO_CUSTOMER
    from protocol.claims import DAY_MS, claim_url, code_hash, new_code

    from .test_cloud_erasure import card_sale

    async with portal_cloud(tmp_path, backend) as portal, chromium(tmp_path) as browser:
        cloud = portal.cloud
        cid, code, now = k.any_uuid(), new_code(), k.now_ms()
        receipt = UnclaimedSale(op_id=uuid7(now), at=now, terminal_id=k.TERMINAL, customer_id=NO_CUSTOMER,
                                sale_id="r-qr", amount=1000, program_version=1, sale=card_sale("r-qr", "tok_qr"),
                                claim_hash=code_hash(code), expires_at=now + 30 * DAY_MS)
        await cloud.send(cloud.stores["store-a"], [enroll_with(cid, email="ada@example.org", channels=("email",)),
                                                   k.earn(cid, "s1", 45), receipt])
        base = str(cloud.client.make_url("/")).rstrip("/")
        qr = claim_url(base, k.BRAND, code)
        await browser.open(qr)  # scanned before signing in: the page says what to do
        assert "Sign in (or join) first" in await browser.text("body") and not await browser.exists("#code")
        await browser.open(f"{base}/portal/{k.BRAND}")
        await browser.type("#signin-contact", "ada@example.org")
        await browser.click("#signin button")
        await browser.wait_for("#code")
        await browser.type("#code", portal.last_code())
        await browser.click("#verify button")
        await browser.wait_for("#balance")
        await browser.open(qr)
        await browser.wait_for("#claim")
        page = parse(await browser.source())
        assert "script" not in page.tags and "img" not in page.tags
        await browser.click("#claim button")
        await browser.wait_for("#claimed")
        claimed = await browser.text("#claimed")
        points = (await cloud.storage.get_customer(cid)).balance - 45  # type: ignore[union-attr]
        assert points > 0 and claimed == f"You earned {points} points. Your balance is {45 + points} points."
        await shot(browser, tmp_path, "claimed.png")
        await browser.open(qr)  # the same receipt again: refused, and nothing changes
        await browser.click("#claim button")
        await browser.wait_for("#error")
        assert "already claimed" in await browser.text("#error")
        assert (await cloud.storage.get_customer(cid)).balance == 45 + points  # type: ignore[union-attr]
