"""Logs are JSON lines off a terminal, and phone numbers can be masked."""

from __future__ import annotations

import json

import pytest
import structlog

from foundation.log import configure_logging


def test_numbers_are_masked_when_configured(capsys: pytest.CaptureFixture[str]) -> None:
    configure_logging(json=True, mask_numbers=True)
    structlog.get_logger("test").info("call from +6283891703225", to_number="+622150994564")
    (line,) = capsys.readouterr().err.splitlines()
    record = json.loads(line)
    assert record["to_number"] == "+62******4564"
    assert record["event"] == "call from +62*******3225"
    assert "3891703" not in line


def test_numbers_are_kept_by_default(capsys: pytest.CaptureFixture[str]) -> None:
    configure_logging(json=True)
    structlog.get_logger("test").info("call", to_number="+622150994564")
    assert json.loads(capsys.readouterr().err)["to_number"] == "+622150994564"
