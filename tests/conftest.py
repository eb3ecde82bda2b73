"""The ledger backend parameter: every cloud test that asks for ``backend``
runs once on SQLite and once on PostgreSQL; ``pg`` is PostgreSQL only.

PostgreSQL comes from ``LOYALTY_TEST_PG_DSN`` (default
postgresql://postgres@127.0.0.1:5432/test). Each test gets a schema of its
own, named in the DSN's search path, and drops it afterwards. A PostgreSQL
that cannot be reached fails the test: nothing is skipped.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from . import cloudkit as k


@pytest.fixture(params=["sqlite", "postgres"])
def backend(request: pytest.FixtureRequest) -> Iterator[k.Backend]:
    if request.param == "sqlite":
        yield k.SQLITE
        return
    with k.pg_backend() as pg:
        yield pg


@pytest.fixture
def pg() -> Iterator[k.Backend]:
    with k.pg_backend() as backend:
        yield backend
