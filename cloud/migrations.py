"""Named schema migrations, recorded in the database they were applied to.

sqlite-utils style: each migration has a stable name and is applied once, in
list order, inside the same transaction that records it in
``migrations(name, applied_at)``. The SQL itself belongs to each backend;
this module only decides what is pending and refuses a database that has
migrations this code does not know (it was written by a newer version).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from .errors import StoreError


@dataclass(frozen=True, slots=True)
class Migration:
    name: str
    statements: tuple[str, ...]


def pending(applied: Iterable[str], migrations: Sequence[Migration]) -> list[Migration]:
    """The migrations still to apply, in order; StoreError on an unknown name."""
    names = [m.name for m in migrations]
    if len(set(names)) != len(names):
        raise StoreError(f"migration names repeat: {names}")  # a bug in the migration list
    done = set(applied)
    unknown = done - set(names)
    if unknown:
        raise StoreError(
            f"the database has migrations this version does not know: {sorted(unknown)};"
            " it was written by a newer loyalty-cloud"
        )
    return [m for m in migrations if m.name not in done]
