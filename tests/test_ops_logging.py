"""Logs: one line per event, JSON when configured, repeated warnings rate-limited."""

from __future__ import annotations

import io
import json
import logging
import os
import signal
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from edge.config import ConfigError
from protocol import public_bytes
from runtime.logsetup import JsonFormatter, RateLimitFilter, TextFormatter

from .edgekit import make_edge_config
from .processkit import free_port

BIN = Path(sys.executable).parent


@contextmanager
def captured(formatter: logging.Formatter, limiter: RateLimitFilter | None = None) -> Iterator[tuple[
        logging.Logger, io.StringIO]]:
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.setFormatter(formatter)
    handler.addFilter(limiter or RateLimitFilter())
    logger = logging.getLogger(f"test.ops.{time.monotonic_ns()}")
    logger.propagate = False
    logger.setLevel(logging.DEBUG)
    logger.addHandler(handler)
    try:
        yield logger, stream
    finally:
        logger.removeHandler(handler)


def test_json_lines_one_event_each_with_the_exception_inline() -> None:
    with captured(JsonFormatter()) as (logger, stream):
        logger.info("batch %d: %d ops", 7, 120)
        try:
            raise RuntimeError("disk\nfull")
        except RuntimeError:
            logger.exception("group commit failed")
    lines = stream.getvalue().splitlines()
    assert len(lines) == 2
    first, second = (json.loads(line) for line in lines)
    assert first["message"] == "batch 7: 120 ops" and first["level"] == "INFO" and first["logger"].startswith("test.")
    assert first["ts"][:2] == "20" and "T" in first["ts"]
    assert second["level"] == "ERROR" and "RuntimeError: disk\nfull" in second["exception"]


def test_text_format_keeps_one_line_per_event() -> None:
    with captured(TextFormatter("%(levelname)s %(message)s")) as (logger, stream):
        logger.warning("two\nlines")
    assert stream.getvalue() == "WARNING two\\nlines\n"


def test_repeated_warnings_pass_once_a_minute_with_the_count_suppressed() -> None:
    now = [100.0]
    limiter = RateLimitFilter(interval=60, clock=lambda: now[0])
    with captured(JsonFormatter(), limiter) as (logger, stream):
        for attempt in range(1, 6):
            logger.warning("sync failed (attempt %d): %s", attempt, "CloudUnavailable")
            now[0] += 5
        logger.warning("another warning %s", "passes")
        logger.info("info is never limited")
        logger.info("info is never limited")
        now[0] = 161.0
        logger.warning("sync failed (attempt %d): %s", 6, "CloudUnavailable")
        logger.warning("sync failed (attempt %d): %s", 7, "CloudUnavailable")
    events = [json.loads(line) for line in stream.getvalue().splitlines()]
    assert [e["message"] for e in events] == [
        "sync failed (attempt 1): CloudUnavailable",
        "another warning passes",
        "info is never limited",
        "info is never limited",
        "sync failed (attempt 6): CloudUnavailable",
    ]
    assert "suppressed" not in events[0] and events[4]["suppressed"] == 4


def test_text_format_says_how_many_were_suppressed() -> None:
    now = [0.0]
    with captured(TextFormatter("%(message)s"), RateLimitFilter(60, lambda: now[0])) as (logger, stream):
        logger.warning("cloud away")
        logger.warning("cloud away")
        now[0] = 60.0
        logger.warning("cloud away")
    assert stream.getvalue().splitlines() == ["cloud away", "cloud away [1 more like this suppressed]"]


def test_log_format_is_checked_at_start_up(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as info:
        make_edge_config(tmp_path, log_format="xml")
    assert info.value.key == "log_format"


def test_real_edge_logs_json_and_one_sync_warning_for_many_failures(tmp_path: Path) -> None:
    data = tmp_path / "edge"
    port, metrics_port = free_port(), free_port()
    cloud_key = public_bytes(Ed25519PrivateKey.generate().public_key()).hex()
    init = subprocess.run(
        [str(BIN / "loyalty-edge"), "init", "--data", str(data), "--store-id", "store-log", "--cloud-url",
         "http://127.0.0.1:9", "--cloud-public-key", cloud_key, "--port", str(port), "--no-zeroconf",
         "--sync-interval", "0.1"], capture_output=True, text=True, timeout=60, check=False)
    assert init.returncode == 0, init.stderr
    env = {**os.environ, "LOYALTY_EDGE_LOG_FORMAT": "json", "LOYALTY_EDGE_METRICS_PORT": str(metrics_port)}
    proc = subprocess.Popen([str(BIN / "loyalty-edge"), "serve", "--data", str(data)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, env=env)
    try:
        deadline = time.monotonic() + 30
        failures = 0.0
        while time.monotonic() < deadline and failures < 3:
            time.sleep(0.3)
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{metrics_port}/metrics", timeout=2) as response:
                    for line in response.read().decode().splitlines():
                        if line.startswith('loyalty_edge_sync_errors_total{error="CloudUnavailable"}'):
                            failures = float(line.split()[-1])
            except OSError:
                continue
        assert failures >= 3, "the sync task did not retry"
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate(timeout=30)
    events = [json.loads(line) for line in err.decode().splitlines()]  # every line is one JSON event
    assert any(e["message"].startswith("edge listening on") for e in events)
    sync_warnings = [e for e in events if e["message"].startswith("sync failed")]
    assert len(sync_warnings) == 1 and sync_warnings[0]["level"] == "WARNING"
    assert proc.returncode == 0
