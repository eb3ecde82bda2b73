"""Where a cloud instance keeps its files: one data directory, mode 0700."""

from __future__ import annotations

import os
import stat
from dataclasses import dataclass
from pathlib import Path

from .errors import ConfigError

DATA_DIR_MODE = 0o700
KEY_FILE = "cloud.key"
DB_FILE = "cloud.sqlite3"


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

    def require_initialised(self) -> None:
        self.require()
        if not self.key_file.exists() or not self.db_file.exists():
            raise ConfigError(
                f"{self.path} is not initialised (run `loyalty-cloud init --data {self.path}`)", field="data"
            )
