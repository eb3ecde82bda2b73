"""One TOML file per cloud process, with environment overrides.

Every option of every ``loyalty-cloud`` verb comes from, first found: the
command line (``--smtp-host``), the environment (``LOYALTY_CLOUD_SMTP_HOST``),
the config file (``smtp_host = "..."``; the file is ``--config FILE`` or
``LOYALTY_CLOUD_CONFIG``), then the option's default. The file describes one
installation, so it may hold keys of verbs other than the one running (a
``port`` is no error for ``brand add``); a key no verb knows, or a value of
the wrong type, stops start-up with an error naming the key, before anything
is opened.
"""

from __future__ import annotations

import argparse
import tomllib
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from .errors import ConfigError

CONFIG_ENV = "LOYALTY_CLOUD_CONFIG"
ENV_PREFIX = "LOYALTY_CLOUD_"
_NOT_SETTINGS = frozenset({"help", "config"})
_TRUE = frozenset({"1", "true", "yes", "on"})
_FALSE = frozenset({"0", "false", "no", "off", ""})


def _subparsers(parser: argparse.ArgumentParser) -> list[argparse._SubParsersAction[argparse.ArgumentParser]]:
    return [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]


def _options(parser: argparse.ArgumentParser) -> dict[str, argparse.Action]:
    """The parser's own options by dest (positionals are arguments, not settings)."""
    return {a.dest: a for a in parser._actions
            if a.option_strings and a.dest not in _NOT_SETTINGS and not isinstance(a, argparse._SubParsersAction)}


def known_keys(parser: argparse.ArgumentParser) -> set[str]:
    """Every option of every verb: what a config file may hold."""
    keys = set(_options(parser))
    for sub in _subparsers(parser):
        for child in sub.choices.values():
            keys |= known_keys(child)
    return keys


def verb_parser(parser: argparse.ArgumentParser, args: argparse.Namespace) -> argparse.ArgumentParser:
    """The (sub)parser of the verb ``args`` was parsed for: ``store add`` -> the ``add`` parser of ``store``."""
    current = parser
    while True:
        subs = _subparsers(current)
        if not subs:
            return current
        chosen = getattr(args, subs[0].dest, None)
        if chosen is None:
            return current
        current = subs[0].choices[chosen]


def _given(action: argparse.Action, argv: Sequence[str]) -> bool:
    return any(arg == opt or arg.startswith(opt + "=") for arg in argv for opt in action.option_strings)


def _coerce(action: argparse.Action, value: Any, key: str, where: str) -> Any:
    """``value`` (a TOML value, or a string from the environment) parsed as the command line's would be."""
    if isinstance(action, argparse._StoreTrueAction | argparse._StoreFalseAction):
        if isinstance(value, str) and value.lower() in _TRUE | _FALSE:
            value = value.lower() in _TRUE
        if not isinstance(value, bool):
            raise ConfigError(f"{where}: {key} must be true or false", field=key)
        return value
    convert = action.type if callable(action.type) else str
    wrong = isinstance(value, bool) or not isinstance(value, str | int | float)
    if wrong or (convert is str and not isinstance(value, str)):
        raise ConfigError(f"{where}: {key} has the wrong type ({type(value).__name__})", field=key)
    try:
        converted = convert(str(value))
    except (ValueError, TypeError, argparse.ArgumentTypeError) as exc:
        raise ConfigError(f"{where}: {key}: {exc}", field=key) from exc
    if action.choices is not None and converted not in action.choices:
        choices = ", ".join(map(str, action.choices))
        raise ConfigError(f"{where}: {key} must be one of {choices}", field=key)
    return converted


def load(path: Path) -> dict[str, Any]:
    try:
        with path.open("rb") as handle:
            data = tomllib.load(handle)
    except OSError as exc:
        raise ConfigError(f"cannot read the config file {path}: {exc.strerror or exc}", field="config") from exc
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"the config file {path} is not valid TOML: {exc}", field="config") from exc
    return data


def apply(
    parser: argparse.ArgumentParser,
    args: argparse.Namespace,
    argv: Sequence[str],
    environ: Mapping[str, str],
) -> None:
    """Fill every option of the verb not given on the command line from the environment, then the file."""
    path = args.config or environ.get(CONFIG_ENV) or None
    settings = load(Path(path)) if path else {}
    unknown = sorted(set(settings) - known_keys(parser))
    if unknown:
        raise ConfigError(f"{path}: unknown key {unknown[0]!r}", field=unknown[0])
    for dest, action in _options(verb_parser(parser, args)).items():
        if _given(action, argv):
            continue
        env = environ.get(ENV_PREFIX + dest.upper())
        if env is not None and env != "":
            setattr(args, dest, _coerce(action, env, dest, f"environment {ENV_PREFIX}{dest.upper()}"))
        elif dest in settings:
            setattr(args, dest, _coerce(action, settings[dest], dest, str(path)))
