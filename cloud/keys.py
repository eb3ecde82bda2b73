"""The cloud's Ed25519 signing key: a file holding the 32-byte raw seed, mode 0600.

The key signs every ack and downlink; a copy readable by anyone else could
forge confirmed balances, so loading refuses a file that group or others can
read or write, instead of silently fixing it.
"""

from __future__ import annotations

import os
import stat
from dataclasses import dataclass
from pathlib import Path

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from protocol import key_id_for, private_key_from_seed, private_seed, public_bytes

from .errors import KeyFileError

SEED_LEN = 32
KEY_FILE_MODE = 0o600


@dataclass(frozen=True, slots=True)
class CloudKey:
    private: Ed25519PrivateKey
    public: Ed25519PublicKey
    key_id: str

    @classmethod
    def from_seed(cls, seed: bytes) -> CloudKey:
        private = private_key_from_seed(seed)
        public = private.public_key()
        return cls(private, public, key_id_for(public))

    @property
    def public_hex(self) -> str:
        return public_bytes(self.public).hex()


def load_key(path: Path) -> CloudKey:
    """Read the seed; KeyFileError if missing, not a regular file, loose mode or wrong size."""
    try:
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0))
    except FileNotFoundError as exc:
        raise KeyFileError(f"no cloud key at {path} (run `loyalty-cloud init`)", field="key") from exc
    except OSError as exc:
        raise KeyFileError(f"cannot open cloud key {path}: {exc.strerror}", field="key") from exc
    with os.fdopen(fd, "rb") as fh:
        st = os.fstat(fh.fileno())
        if not stat.S_ISREG(st.st_mode):
            raise KeyFileError(f"cloud key {path} is not a regular file", field="key")
        if st.st_mode & 0o077:
            raise KeyFileError(
                f"cloud key {path} has mode {stat.S_IMODE(st.st_mode):04o}; it must be 0600"
                f" (readable by its owner only): chmod 600 {path}",
                field="key",
            )
        seed = fh.read(SEED_LEN + 1)
    if len(seed) != SEED_LEN:
        raise KeyFileError(f"cloud key {path} must hold exactly {SEED_LEN} bytes", field="key")
    return CloudKey.from_seed(seed)


def create_key(path: Path) -> CloudKey:
    """Write a fresh seed to a new file (never overwrites), mode 0600 whatever the umask."""
    seed = private_seed(Ed25519PrivateKey.generate())
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_NOFOLLOW", 0), KEY_FILE_MODE)
    except FileExistsError as exc:
        raise KeyFileError(f"cloud key {path} already exists", field="key") from exc
    except OSError as exc:
        raise KeyFileError(f"cannot create cloud key {path}: {exc.strerror}", field="key") from exc
    try:
        os.fchmod(fd, KEY_FILE_MODE)
        os.write(fd, seed)
        os.fsync(fd)
    except OSError as exc:
        os.close(fd)
        path.unlink(missing_ok=True)
        raise KeyFileError(f"cannot write cloud key {path}: {exc.strerror}", field="key") from exc
    os.close(fd)
    return CloudKey.from_seed(seed)


def load_or_create_key(path: Path) -> tuple[CloudKey, bool]:
    """The existing key (kept as is), or a new one; the flag says it was created."""
    if path.exists() or path.is_symlink():
        return load_key(path), False
    return create_key(path), True
