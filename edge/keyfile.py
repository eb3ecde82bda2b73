"""The edge's Ed25519 signing key: a 32-byte seed in a file only we can read."""

from __future__ import annotations

import os
import stat
from pathlib import Path

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from protocol import private_key_from_seed, private_seed


class KeyFileError(Exception):
    pass


def create_key(path: Path) -> Ed25519PrivateKey:
    """Write a new key with mode 0600; never overwrite an existing one."""
    key = Ed25519PrivateKey.generate()
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError as exc:
        raise KeyFileError(f"{path} exists; refusing to overwrite a signing key") from exc
    with os.fdopen(fd, "wb") as handle:
        handle.write(private_seed(key))
        handle.flush()
        os.fsync(handle.fileno())
    return key


def load_key(path: Path) -> Ed25519PrivateKey:
    """Load a key, refusing one that group or others could read or write."""
    try:
        mode = path.stat().st_mode
        if mode & (stat.S_IRWXG | stat.S_IRWXO):
            raise KeyFileError(f"{path} has mode {stat.S_IMODE(mode):o}; run: chmod 600 {path}")
        seed = path.read_bytes()
    except OSError as exc:
        raise KeyFileError(f"cannot read the signing key {path}: {exc.strerror}") from exc
    if len(seed) != 32:
        raise KeyFileError(f"{path} is not a 32-byte Ed25519 seed")
    return private_key_from_seed(seed)
