"""Edge configuration: one TOML file, with LOYALTY_EDGE_* environment overrides.

Unknown keys and bad values are errors that name the key, at start-up.
"""

from __future__ import annotations

import ipaddress
import os
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

from protocol import load_public_key
from protocol.messages import check_slug
from protocol.normalize import is_region

from .technician import BadHash, PasswordHash

ENV_PREFIX = "LOYALTY_EDGE_"


class ConfigError(Exception):
    def __init__(self, key: str, message: str) -> None:
        super().__init__(f"config key {key!r}: {message}")
        self.key = key


@dataclass(frozen=True, slots=True)
class EdgeConfig:
    data_dir: Path
    store_id: str
    cloud_url: str
    cloud_public_key: str
    host: str = "127.0.0.1"
    port: int = 8700
    zeroconf: bool = True
    interfaces: tuple[str, ...] = ()
    sync_interval: float = 5.0
    batch_size: int = 1000
    # Where the signing key is read from; a systemd unit points it at its
    # credential ($CREDENTIALS_DIRECTORY/edge.key). Default: data_dir/edge.key.
    key_file: Path | None = None
    # Prometheus /metrics on its own listener (0: none), loopback unless told otherwise.
    metrics_host: str = "127.0.0.1"
    metrics_port: int = 0
    # The status page from the LAN needs this password (HTTP Basic); without
    # it the page is open to localhost only. `loyalty-edge technician-password`.
    technician_password_hash: str | None = None
    log_format: str = "text"  # or "json": one object per line, for journald or a log shipper
    # Phones typed without a country code take this region's ("CA", "FR"); empty: they must carry one.
    default_region: str = ""

    @property
    def db_path(self) -> Path:
        return self.data_dir / "edge.sqlite3"

    @property
    def key_path(self) -> Path:
        return self.key_file if self.key_file is not None else self.data_dir / "edge.key"

    def cloud_key_bytes(self) -> bytes:
        return bytes.fromhex(self.cloud_public_key)


def _coerce(key: str, value: Any, kind: str) -> Any:
    if kind in ("Path", "Path | None"):
        if not isinstance(value, str) or not value:
            raise ConfigError(key, "must be a path")
        return Path(value)
    if kind in ("str", "str | None"):
        if not isinstance(value, str):
            raise ConfigError(key, "must be a string")
        return value
    if kind == "int":
        if isinstance(value, str) and value.isdigit():
            value = int(value)
        if not isinstance(value, int) or isinstance(value, bool):
            raise ConfigError(key, "must be an integer")
        return value
    if kind == "float":
        if isinstance(value, str):
            try:
                value = float(value)
            except ValueError as exc:
                raise ConfigError(key, "must be a number") from exc
        if not isinstance(value, (int, float)) or isinstance(value, bool):
            raise ConfigError(key, "must be a number")
        return float(value)
    if kind == "bool":
        if isinstance(value, str) and value.lower() in ("true", "false", "1", "0"):
            value = value.lower() in ("true", "1")
        if not isinstance(value, bool):
            raise ConfigError(key, "must be true or false")
        return value
    if kind == "tuple[str, ...]":
        if isinstance(value, str):
            value = [v.strip() for v in value.split(",") if v.strip()]
        if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
            raise ConfigError(key, "must be a list of strings")
        return tuple(value)
    raise ConfigError(key, f"unsupported type {kind}")  # pragma: no cover - a bug here


def build_config(values: Mapping[str, Any], env: Mapping[str, str] | None = None) -> EdgeConfig:
    env = os.environ if env is None else env
    known = {f.name: str(f.type) for f in fields(EdgeConfig)}
    merged: dict[str, Any] = {}
    for key, value in values.items():
        if key not in known:
            raise ConfigError(key, f"unknown key (known: {', '.join(sorted(known))})")
        merged[key] = value
    for name, value in env.items():
        if name.startswith(ENV_PREFIX):
            key = name[len(ENV_PREFIX):].lower()
            if key not in known:
                raise ConfigError(name, "unknown environment override")
            merged[key] = value
    for key in ("data_dir", "store_id", "cloud_url", "cloud_public_key"):
        if key not in merged:
            raise ConfigError(key, "is required")
    kwargs = {key: _coerce(key, value, known[key]) for key, value in merged.items()}
    config = EdgeConfig(**kwargs)
    _validate(config)
    return config


def _validate(config: EdgeConfig) -> None:
    try:
        check_slug("store_id", config.store_id)
    except Exception as exc:
        raise ConfigError("store_id", str(exc)) from exc
    if not config.cloud_url.startswith(("http://", "https://")):
        raise ConfigError("cloud_url", "must start with http:// or https://")
    try:
        load_public_key(config.cloud_key_bytes())
    except ValueError as exc:
        raise ConfigError("cloud_public_key", "must be 64 hex digits (an Ed25519 public key)") from exc
    except Exception as exc:
        raise ConfigError("cloud_public_key", str(exc)) from exc
    if not 0 <= config.port <= 65535:
        raise ConfigError("port", "must be 0 to 65535")
    if config.technician_password_hash is not None:
        try:
            PasswordHash.parse(config.technician_password_hash)
        except BadHash as exc:
            raise ConfigError("technician_password_hash", str(exc)) from exc
    if config.default_region and not is_region(config.default_region):
        raise ConfigError("default_region", f"{config.default_region!r} is not a region code such as CA or FR")
    if config.log_format not in ("text", "json"):
        raise ConfigError("log_format", "must be \"text\" or \"json\"")
    if not 0 <= config.metrics_port <= 65535:
        raise ConfigError("metrics_port", "must be 0 (off) to 65535")
    try:
        ipaddress.ip_address(config.metrics_host)
    except ValueError as exc:
        raise ConfigError("metrics_host", f"{config.metrics_host!r} is not an IP address") from exc
    for address in config.interfaces:
        try:
            ipaddress.ip_address(address)
        except ValueError as exc:
            raise ConfigError("interfaces", f"{address!r} is not an IP address") from exc
    if not 0.05 <= config.sync_interval <= 3600:
        raise ConfigError("sync_interval", "must be between 0.05 and 3600 seconds")
    if not 1 <= config.batch_size <= 5000:
        raise ConfigError("batch_size", "must be between 1 and 5000")


def load_config(path: Path, env: Mapping[str, str] | None = None) -> EdgeConfig:
    try:
        with path.open("rb") as handle:
            values = tomllib.load(handle)
    except OSError as exc:
        raise ConfigError("config", f"cannot read {path}: {exc.strerror}") from exc
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError("config", f"{path} is not valid TOML: {exc}") from exc
    return build_config(values, env)


def write_config(path: Path, config: EdgeConfig) -> None:
    lines = []
    for f in fields(EdgeConfig):
        value = getattr(config, f.name)
        if value is None:
            continue
        if isinstance(value, bool):
            text = "true" if value else "false"
        elif isinstance(value, (int, float)):
            text = repr(value)
        elif isinstance(value, tuple):
            text = "[" + ", ".join(f'"{v}"' for v in value) + "]"
        else:
            text = '"' + str(value).replace("\\", "\\\\").replace('"', '\\"') + '"'
        lines.append(f"{f.name} = {text}")
    path.write_text("\n".join(lines) + "\n")
