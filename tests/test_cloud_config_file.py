"""The cloud's one TOML file per process: the command line wins over the
environment, which wins over the file, which wins over the defaults; a key no
verb knows, or a bad value, stops start-up naming the key, with nothing created."""

from __future__ import annotations

import json
import signal
import subprocess
import threading
from pathlib import Path

import pytest

from cloud import config_file
from cloud.cli import build_parser
from cloud.errors import ConfigError

from .test_cloud_cli import CLI, cli


def parsed(argv: list[str], settings: str | None, tmp_path: Path, **env: str) -> dict[str, object]:
    parser = build_parser()
    if settings is not None:
        path = tmp_path / "cloud.toml"
        path.write_text(settings)
        argv = [*argv, "--config", str(path)]
    args = parser.parse_args(argv)
    config_file.apply(parser, args, argv, env)
    return vars(args)


def test_command_line_then_environment_then_file_then_default(tmp_path: Path) -> None:
    toml = 'data = "/srv/cloud"\nport = 9100\nhost = "0.0.0.0"\nsmtp_starttls = true\nlog_format = "json"\n'
    args = parsed(["serve"], toml, tmp_path)
    assert (args["data"], args["port"], args["host"], args["smtp_starttls"], args["log_format"]) == (
        Path("/srv/cloud"), 9100, "0.0.0.0", True, "json")
    args = parsed(["serve"], toml, tmp_path, LOYALTY_CLOUD_PORT="9200", LOYALTY_CLOUD_SMTP_STARTTLS="no")
    assert (args["port"], args["smtp_starttls"]) == (9200, False)
    args = parsed(["serve", "--port", "9300"], toml, tmp_path, LOYALTY_CLOUD_PORT="9200")
    assert args["port"] == 9300
    assert parsed(["serve"], None, tmp_path)["port"] == 8600


def test_the_file_describes_the_installation_not_one_verb(tmp_path: Path) -> None:
    # serve's keys are no error for another verb, and do not leak into it
    args = parsed(["brand", "add", "acme", "--name", "Acme"], 'data = "/srv/cloud"\nport = 9100\n', tmp_path)
    assert args["data"] == Path("/srv/cloud") and "port" not in args


@pytest.mark.parametrize(("settings", "env", "key"), [
    ('prot = 9100\n', {}, "prot"),
    ('port = "eighty"\n', {}, "port"),
    ('port = 70000\n', {}, "port"),
    ('host = 5\n', {}, "host"),
    ('log_format = "xml"\n', {}, "log_format"),
    ('smtp_starttls = "maybe"\n', {}, "smtp_starttls"),
    ('port = [1, 2]\n', {}, "port"),
    ('port = 9100\n', {"LOYALTY_CLOUD_PORT": "nine"}, "port"),
    ('this is not toml\n', {}, "config"),
])
def test_bad_keys_and_values_name_the_key(tmp_path: Path, settings: str, env: dict[str, str], key: str) -> None:
    with pytest.raises(ConfigError) as info:
        parsed(["serve"], settings, tmp_path, **env)
    assert info.value.field == key, info.value.message


def test_a_real_process_configured_by_file_and_environment(tmp_path: Path,
                                                           monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("LOYALTY_CLOUD_DSN", raising=False)
    data = tmp_path / "data"
    config = tmp_path / "cloud.toml"
    config.write_text(f'data = "{data}"\nhost = "127.0.0.1"\nport = 0\nlog_format = "json"\nlog_level = "INFO"\n')
    monkeypatch.setenv("LOYALTY_CLOUD_CONFIG", str(config))
    cli("init")
    cli("brand", "add", "acme", "--name", "Acme")
    assert json.loads(cli("brand", "list").stdout)["brand_id"] == "acme"

    proc = subprocess.Popen([CLI, "serve"], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    watchdog = threading.Timer(60, proc.kill)
    watchdog.start()
    try:
        assert proc.stdout is not None
        assert proc.stdout.readline().startswith("listening on http://127.0.0.1:")
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=30)
        assert proc.returncode == 0
    finally:
        watchdog.cancel()
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    events = [json.loads(line) for line in err.splitlines()]
    assert events and all({"ts", "level", "logger", "message"} <= set(e) for e in events)


def test_bad_config_stops_before_anything_is_created(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    data = tmp_path / "data"
    config = tmp_path / "cloud.toml"
    config.write_text(f'data = "{data}"\nsmtp_prot = 25\n')
    proc = cli("init", "--config", config, expect=2)
    assert "smtp_prot" in proc.stderr and not data.exists()
    proc = cli("init", expect=2)
    assert "(data)" in proc.stderr
