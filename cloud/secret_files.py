"""Small secrets kept in files of mode 0600: the portal secret, an SMS gateway's API key.

Like the cloud key, a file that group or others can read is refused rather
than silently fixed: someone else may already have read it.
"""

from __future__ import annotations

import os
import secrets
import stat
from pathlib import Path

from .errors import ConfigError

SECRET_MODE = 0o600
MAX_SECRET_BYTES = 4096


def load_secret(path: Path, field: str) -> bytes:
    """The file's bytes (surrounding whitespace stripped); ConfigError naming ``field`` if unusable."""
    try:
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0))
    except OSError as exc:
        raise ConfigError(f"cannot open {path}: {exc.strerror}", field=field) from exc
    with os.fdopen(fd, "rb") as fh:
        st = os.fstat(fh.fileno())
        if not stat.S_ISREG(st.st_mode):
            raise ConfigError(f"{path} is not a regular file", field=field)
        if st.st_mode & 0o077:
            raise ConfigError(
                f"{path} has mode {stat.S_IMODE(st.st_mode):04o}; it must be 0600: chmod 600 {path}", field=field
            )
        data = fh.read(MAX_SECRET_BYTES + 1).strip()
    if not data or len(data) > MAX_SECRET_BYTES:
        raise ConfigError(f"{path} must hold 1 to {MAX_SECRET_BYTES} bytes", field=field)
    return data


def load_or_create_secret(path: Path, field: str) -> bytes:
    """The secret in ``path``, or a new random one written there (mode 0600, never overwriting)."""
    if path.exists() or path.is_symlink():
        return load_secret(path, field)
    value = secrets.token_hex(32).encode()
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_NOFOLLOW", 0), SECRET_MODE)
    except FileExistsError:
        return load_secret(path, field)  # another process made it first
    except OSError as exc:
        raise ConfigError(f"cannot create {path}: {exc.strerror}", field=field) from exc
    try:
        os.fchmod(fd, SECRET_MODE)
        os.write(fd, value + b"\n")
        os.fsync(fd)
    finally:
        os.close(fd)
    return value
