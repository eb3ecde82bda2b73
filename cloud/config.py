"""Where a cloud instance keeps its files and its ledger.

The data directory (mode 0700) holds the cloud key and, by default, the
SQLite ledger. A PostgreSQL DSN (``--dsn`` or ``LOYALTY_CLOUD_DSN``) moves
the ledger to PostgreSQL; the key stays in the data directory.
"""

from __future__ import annotations

import os
import stat
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

from .errors import ConfigError
from .pg_storage import PgStorage
from .sqlite_storage import SQLiteStorage
from .storage import Storage

DATA_DIR_MODE = 0o700
KEY_FILE = "cloud.key"
DB_FILE = "cloud.sqlite3"
DSN_ENV = "LOYALTY_CLOUD_DSN"
PG_SCHEMES = ("postgresql", "postgres")


@dataclass(frozen=True, slots=True)
class DataDir:
    path: Path

    @property
    def key_file(self) -> Path:
        return self.path / KEY_FILE

    @property
    def db_file(self) -> Path:
        return self.path / DB_FILE

    def create(self) -> bool:
        """Create the directory (0700) if missing; True if it was created."""
        if self.path.exists():
            self.require()
            return False
        try:
            self.path.mkdir(mode=DATA_DIR_MODE, parents=True)
            os.chmod(self.path, DATA_DIR_MODE)  # mkdir's mode is filtered by the umask
        except OSError as exc:
            raise ConfigError(f"cannot create {self.path}: {exc.strerror}", field="data") from exc
        return True

    def require(self) -> None:
        """ConfigError unless the directory exists."""
        try:
            st = self.path.stat()
        except OSError as exc:
            raise ConfigError(
                f"data directory {self.path} not found (run `loyalty-cloud init --data {self.path}`)",
                field="data",
            ) from exc
        if not stat.S_ISDIR(st.st_mode):
            raise ConfigError(f"{self.path} is not a directory", field="data")

    def require_initialised(self, *, sqlite: bool = True) -> None:
        """ConfigError unless ``init`` ran here (the SQLite file only counts when it is the ledger)."""
        self.require()
        if not self.key_file.exists() or (sqlite and not self.db_file.exists()):
            raise ConfigError(
                f"{self.path} is not initialised (run `loyalty-cloud init --data {self.path}`)", field="data"
            )


def check_dsn(dsn: str) -> str:
    """The DSN if it names PostgreSQL; ConfigError (field ``dsn``) otherwise."""
    try:
        scheme = urlsplit(dsn).scheme
    except ValueError as exc:
        raise ConfigError(f"cannot parse the DSN: {exc}", field="dsn") from exc
    if scheme not in PG_SCHEMES:
        raise ConfigError("the DSN must start with postgresql:// (leave it out for SQLite)", field="dsn")
    return dsn


def dsn_from(arg: str | None, environ: dict[str, str] | None = None) -> str | None:
    """``--dsn`` if given, else ``LOYALTY_CLOUD_DSN`` if set and not empty, else None (SQLite)."""
    env = os.environ if environ is None else environ
    dsn = arg if arg is not None else (env.get(DSN_ENV) or None)
    return None if dsn is None else check_dsn(dsn)


def make_storage(dsn: str | None, data: DataDir) -> Storage:
    """The ledger backend: PostgreSQL at ``dsn``, or SQLite in the data directory when None."""
    if dsn is None:
        return SQLiteStorage(data.db_file)
    return PgStorage(check_dsn(dsn))
