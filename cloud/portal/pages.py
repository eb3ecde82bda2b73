"""The portal's HTML: plain server-rendered pages, readable on a phone, no script.

Every value from a person or the database goes through ``esc`` (HTML
escaping, quotes included); the style is inline, there is no external
asset, and the Content-Security-Policy forbids everything else. Element ids
name what tests and people look for.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime
from html import escape
from urllib.parse import quote

from .view import AccountView, points

CSS = """
*{box-sizing:border-box}body{margin:0;font:17px/1.45 system-ui,-apple-system,"Segoe UI",Roboto,sans-serif;
color:#1b1f24;background:#f4f1ec}main{max-width:34rem;margin:0 auto;padding:1rem}
header{background:#23403a;color:#fff;margin:-1rem -1rem 1rem;padding:1.1rem 1rem}header h1{margin:0;font-size:1.35rem}
header p{margin:.2rem 0 0;opacity:.85}section{background:#fff;border-radius:12px;padding:1rem;margin:0 0 1rem;
box-shadow:0 1px 3px rgba(0,0,0,.08)}h2{font-size:1.15rem;margin:0 0 .6rem}label{display:block;margin:.7rem 0 .25rem;
font-weight:600}input[type=text],input[type=tel],input[type=email]{width:100%;font-size:1.1rem;padding:.7rem;
border:1px solid #9aa3ab;border-radius:8px}.check{display:flex;gap:.6rem;align-items:flex-start;font-weight:400}
.check input{flex:none;width:1.3rem;height:1.3rem;margin-top:.15rem}button{display:block;width:100%;margin-top:1rem;
padding:.8rem;font-size:1.05rem;font-weight:600;border:0;border-radius:8px;background:#23403a;color:#fff}
button.quiet{background:#e7e2da;color:#1b1f24}.error{background:#fde8e6;border-left:5px solid #b3261e;
padding:.7rem;margin:0 0 1rem}.notice{background:#e6f2ea;border-left:5px solid #23703a;padding:.7rem;
margin:0 0 1rem}.balance{font-size:2.2rem;font-weight:700;margin:.2rem 0}ul{padding-left:1.2rem;margin:.3rem 0}
li{margin:.25rem 0}.muted{color:#5b646c;font-size:.92rem}.row{display:flex;justify-content:space-between;
align-items:center;gap:1rem;border-top:1px solid #eee;padding:.6rem 0}.row form button{width:auto;margin:0;
padding:.5rem .9rem}a{color:#23403a}
"""


def esc(value: object) -> str:
    return escape(str(value), quote=True)


def day(ms: int) -> str:
    return datetime.fromtimestamp(ms / 1000, tz=UTC).strftime("%d %B %Y").lstrip("0")


def layout(title: str, brand_name: str, body: str, subtitle: str = "Rewards") -> str:
    return (
        '<!doctype html><html lang="en"><head><meta charset="utf-8">'
        '<meta name="viewport" content="width=device-width, initial-scale=1">'
        f'<meta name="referrer" content="no-referrer"><title>{esc(title)} · {esc(brand_name)}</title>'
        f'<style>{CSS}</style></head><body><main><header><h1 id="brand">{esc(brand_name)}</h1>'
        f"<p>{esc(subtitle)}</p></header>{body}</main></body></html>"
    )


def _error(error: str | None) -> str:
    return f'<p class="error" id="error" role="alert">{esc(error)}</p>' if error else ""


def _hidden(fields: dict[str, str]) -> str:
    return "".join(f'<input type="hidden" name="{esc(k)}" value="{esc(v)}">' for k, v in fields.items())


def action(brand_id: str, path: str = "") -> str:
    base = f"/portal/{quote(brand_id, safe='')}"
    return f"{base}/{path}" if path else base


@dataclass(frozen=True, slots=True)
class SignupForm:
    """What a sign-up form holds, and what it carries to the code page."""

    token: str = ""
    name: str = ""
    contact: str = ""
    terms: bool = False
    messages: bool = False


def landing(brand_id: str, brand_name: str, csrf: str, *, signup: SignupForm | None, link_problem: str | None,
            error: str | None = None, signin_contact: str = "") -> str:
    parts = [_error(error)]
    if link_problem:
        parts.append(f'<p class="notice" id="link-problem">{esc(link_problem)}</p>')
    if signup is not None:
        parts.append(
            '<section id="signup"><h2>Join and start earning</h2>'
            f'<form method="post" action="{esc(action(brand_id, "code"))}">'
            + _hidden({"csrf": csrf, "intent": "signup", "t": signup.token})
            + '<label for="name">Your first name</label>'
            f'<input type="text" id="name" name="name" maxlength="200" autocomplete="given-name" required'
            f' value="{esc(signup.name)}">'
            '<label for="contact">Mobile phone or email</label>'
            '<input type="text" id="contact" name="contact" maxlength="254" autocomplete="tel email" required'
            f' value="{esc(signup.contact)}">'
            '<label class="check"><input type="checkbox" id="terms" name="terms" value="1" required'
            f'{" checked" if signup.terms else ""}><span>I accept the program terms.</span></label>'
            '<label class="check"><input type="checkbox" id="messages" name="messages" value="1"'
            f'{" checked" if signup.messages else ""}><span>Send me messages about my points and rewards'
            " (you can stop them at any time).</span></label>"
            '<button type="submit">Send me a code</button></form></section>'
        )
    parts.append(
        '<section id="signin"><h2>Already a member? Sign in</h2>'
        f'<form method="post" action="{esc(action(brand_id, "code"))}">'
        + _hidden({"csrf": csrf, "intent": "signin"})
        + '<label for="signin-contact">Mobile phone or email</label>'
        '<input type="text" id="signin-contact" name="contact" maxlength="254" autocomplete="tel email" required'
        f' value="{esc(signin_contact)}">'
        '<button type="submit">Send me a code</button></form>'
        '<p class="muted">We send a 6-digit code; it is valid for 10 minutes.</p></section>'
    )
    return layout("Join or sign in", brand_name, "".join(parts))


def verify(brand_id: str, brand_name: str, csrf: str, *, challenge_id: str, contact: str,
           carried: dict[str, str], error: str | None = None, retry: bool = True) -> str:
    form = ""
    if retry:
        form = (
            f'<form method="post" action="{esc(action(brand_id, "verify"))}">'
            + _hidden({"csrf": csrf, "challenge": challenge_id, "contact": contact, **carried})
            + '<label for="code">6-digit code</label>'
            '<input type="text" id="code" name="code" inputmode="numeric" pattern="[0-9]{6}" maxlength="6"'
            ' autocomplete="one-time-code" required>'
            '<button type="submit">Confirm</button></form>'
        )
    body = (
        _error(error)
        + f'<section id="verify"><h2>Enter your code</h2><p id="sent-to">We sent a code to {esc(contact)}.</p>'
        + form
        + f'<p class="muted"><a id="start-again" href="{esc(action(brand_id))}">Start again</a></p></section>'
    )
    return layout("Enter your code", brand_name, body)


def account(brand_id: str, brand_name: str, csrf: str, view: AccountView, *, notice: str | None = None) -> str:
    parts = [f'<p class="notice" id="notice">{esc(notice)}</p>' if notice else ""]
    expiring = ""
    if view.expiring_points > 0:
        when = f" by {day(view.expiring_first_at)}" if view.expiring_first_at else " soon"
        expiring = f'<p id="expiring">{esc(points(view.expiring_points))} expire{esc(when)}.</p>'
    else:
        expiring = '<p id="expiring" class="muted">Nothing expires in the next 30 days.</p>'
    parts.append(
        f'<section id="summary"><h2>Hello {esc(view.name)}</h2><p class="muted">Your balance</p>'
        f'<p class="balance" id="balance">{esc(view.balance)}</p>{expiring}</section>'
    )
    earn = "".join(f"<li>{esc(way)}</li>" for way in view.ways_to_earn) or "<li>Ask at the till.</li>"
    parts.append(f'<section id="earn"><h2>Ways to earn</h2><ul>{earn}</ul></section>')
    rewards = "".join(
        f'<li>{esc(r.name)}: {esc(r.points)} points'
        + (' <strong class="reach">you can take it now</strong>' if r.within_reach else "") + "</li>"
        for r in view.rewards
    )
    others = "".join(f"<li>{esc(way)}</li>" for way in view.ways_to_redeem)
    parts.append(f'<section id="redeem"><h2>Ways to redeem</h2><ul>{rewards}{others}</ul></section>')
    rows = []
    for consent in view.consents:
        if not consent.address_known:
            state = f'<span class="muted">no {esc(consent.label.lower())} address on file</span>'
        else:
            verb, label = ("withdraw", "Stop") if consent.granted else ("give", "Allow")
            state = (
                f'<form method="post" action="{esc(action(brand_id, "consent"))}">'
                + _hidden({"csrf": csrf, "channel": consent.channel.value, "action": verb})
                + f'<button type="submit" class="quiet" id="consent-{esc(consent.channel.value)}">{label}</button>'
                "</form>"
            )
        status = "on" if consent.granted and consent.address_known else "off"
        rows.append(
            f'<div class="row" id="consent-row-{esc(consent.channel.value)}"><span>{esc(consent.label)}:'
            f' <strong id="consent-status-{esc(consent.channel.value)}">{status}</strong></span>{state}</div>'
        )
    parts.append(
        '<section id="consents"><h2>Messages from us</h2>'
        '<p class="muted">Points earned, rewards within reach, points about to expire.</p>' + "".join(rows)
        + "</section>"
    )
    parts.append(
        f'<section id="signout"><form method="post" action="{esc(action(brand_id, "signout"))}">'
        + _hidden({"csrf": csrf}) + '<button type="submit" class="quiet">Sign out</button></form></section>'
    )
    return layout("Your points", brand_name, "".join(parts))


def message(brand_id: str, brand_name: str, title: str, text: str, *, link_text: str = "Back") -> str:
    body = (
        f'<section id="message"><h2>{esc(title)}</h2><p id="message-text">{esc(text)}</p>'
        f'<p><a id="back" href="{esc(action(brand_id))}">{esc(link_text)}</a></p></section>'
    )
    return layout(title, brand_name, body)
