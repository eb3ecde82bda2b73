"""Canonical phones (E.164), emails, card codes and name keys."""

from __future__ import annotations

from pathlib import Path

import pytest

from edge.config import ConfigError
from protocol import LocalProtocolError
from protocol import normalize as norm

from .edgekit import make_edge_config


@pytest.mark.parametrize(("raw", "region", "expected"), [
    ("+1 (514) 555-0100", None, "+15145550100"),
    ("514.555.0100", "CA", "+15145550100"),
    ("(514) 555 0100", "CA", "+15145550100"),
    ("06 12 34 56 78", "FR", "+33612345678"),
    ("+33 6 12 34 56 78", "CA", "+33612345678"),
    ("+15145550100", None, "+15145550100"),
])
def test_phones_become_e164(raw: str, region: str | None, expected: str) -> None:
    assert norm.phone(raw, region) == expected


@pytest.mark.parametrize(("raw", "region"), [("514 555 0100", None), ("12", "CA"), ("call me", "CA"), ("", "CA")])
def test_bad_phones_are_refused_with_the_field(raw: str, region: str | None) -> None:
    with pytest.raises(LocalProtocolError) as info:
        norm.phone(raw, region)
    assert info.value.field == "phone"


def test_names_emails_and_codes() -> None:
    assert norm.name_key(" Hélène ") == "helene"
    assert norm.email(" Ana@Example.COM ") == "ana@example.com"
    assert norm.card_code(" C-1 ") == "C-1"
    for bad in ("no-at", "a@b", "a b@c.d"):
        with pytest.raises(LocalProtocolError):
            norm.email(bad)


def test_the_default_region_is_checked_at_start_up(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as info:
        make_edge_config(tmp_path / "e", default_region="XX")
    assert info.value.key == "default_region"
