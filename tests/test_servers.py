"""Which servers the integration tests run against: the choice, and the Docker ping behind it.

The container path itself needs a Docker engine, which this machine does not have.
"""

from __future__ import annotations

import gc
from pathlib import Path

import pytest
import servers


def _docker_must_not_be_asked() -> bool:
    raise AssertionError("a local run must not ask Docker")


@pytest.mark.parametrize(
    ("requested", "docker_answers", "chosen"),
    [
        ("auto", True, servers.Containers),
        ("auto", False, servers.Local),
        ("containers", True, servers.Containers),
    ],
)
def test_auto_and_containers_follow_the_docker_ping(
    requested: str, docker_answers: bool, chosen: type
) -> None:
    assert isinstance(servers.choose(requested, lambda: docker_answers), chosen)


def test_local_never_asks_docker() -> None:
    assert isinstance(servers.choose("local", _docker_must_not_be_asked), servers.Local)


def test_containers_without_a_docker_engine_stop_the_session_with_a_reason() -> None:
    with pytest.raises(pytest.UsageError, match="SERVERS=containers, but no Docker engine"):
        servers.choose("containers", lambda: False)


@pytest.mark.parametrize("requested", ["", "docker", "Local", "embedded"])
def test_an_unknown_choice_stops_the_session_naming_the_valid_ones(requested: str) -> None:
    with pytest.raises(pytest.UsageError, match="expected auto, local or containers"):
        servers.choose(requested, _docker_must_not_be_asked)


def test_with_no_docker_engine_the_ping_says_no_and_leaves_nothing_behind(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setenv("DOCKER_HOST", f"unix://{tmp_path}/docker.sock")
    assert servers.docker_answers() is False
    gc.collect()  # a socket left open would warn now, and warnings fail tests
