"""Deployment files stay true to the code: docker-compose.yml runs real commands with valid
flags and settings, and docs/settings.md names every setting of callstream/settings.py."""

from __future__ import annotations

import contextlib
import inspect
import io
import re
from pathlib import Path
from typing import Any

import msgspec
import pytest
import yaml

from callstream import cli
from foundation import settings as settings_module
from foundation.settings import (
    AggregatorSettings,
    AlertSettings,
    IngressSettings,
    KafkaSettings,
    LogSettings,
    NormalizerSettings,
    PollSettings,
    ProviderAuth,
    StoreSettings,
)
from ingest.auth import guards, refuse_exposure
from ingest.ingress import PROVIDERS
from ingest.tracked import TRACKED

ROOT = Path(__file__).resolve().parent.parent
COMPOSE = ROOT / "docker-compose.yml"
SETTINGS_DOC = ROOT / "docs" / "settings.md"
IMAGE = "callstream"
KAFKA = "kafka:9092"

SECTIONS: dict[str, type[msgspec.Struct]] = {
    "kafka": KafkaSettings,
    "ingress": IngressSettings,
    "normalizer": NormalizerSettings,
    "aggregator": AggregatorSettings,
    "store": StoreSettings,
    "alerts": AlertSettings,
    "poll": PollSettings,
    "log": LogSettings,
}
"""Each settings section (the env var's <SECTION>) and its Struct."""


def _compose() -> dict[str, Any]:
    return yaml.safe_load(COMPOSE.read_text())


def _callstream_services() -> dict[str, dict[str, Any]]:
    """The services that run the callstream image, by name."""
    return {
        name: service
        for name, service in _compose()["services"].items()
        if str(service.get("image", "")).split(":")[0] == IMAGE
    }


def _parse(command: list[str]) -> Any:
    """`command` through the CLI's own parser; a usage error fails with the command shown."""
    stderr = io.StringIO()
    try:
        with contextlib.redirect_stderr(stderr):
            return cli._parser().parse_args(command)
    except SystemExit:
        pytest.fail(f"`callstream {' '.join(command)}` is not a valid command: {stderr.getvalue()}")


def _env(service: dict[str, Any]) -> dict[str, str]:
    environment = service.get("environment") or {}
    if isinstance(environment, list):
        environment = dict(item.split("=", 1) for item in environment)
    return {key: _interpolate(str(value)) for key, value in environment.items()}


def _interpolate(value: str) -> str:
    """Compose's `${NAME:-default}` with nothing set: the default."""
    return re.sub(r"\$\{[A-Za-z_][A-Za-z0-9_]*:?-([^}]*)\}", r"\1", value)


def _load_from(env: dict[str, str], cls: type[msgspec.Struct], section: str) -> Any:
    with pytest.MonkeyPatch.context() as patch:
        for name in [name for name in settings_module.os.environ if name.startswith("CALLSTREAM_")]:
            patch.delenv(name)
        for name, value in env.items():
            patch.setenv(name, value)
        return settings_module.load(cls, section)


def test_compose_runs_the_callstream_image() -> None:
    services = _callstream_services()
    assert {"topics", "ingress", "normalizer", "aggregator", "store", "alerts", "poll"} <= (
        services.keys()
    )


@pytest.mark.parametrize("name", sorted(_callstream_services()))
def test_compose_command_is_a_real_subcommand_with_valid_flags(name: str) -> None:
    command = [_interpolate(str(part)) for part in _callstream_services()[name]["command"]]
    args = _parse(command)
    if hasattr(args, "kafka"):  # every command that talks to Kafka takes --kafka
        assert args.kafka == KAFKA, f"{name}: `--kafka {KAFKA}` expected in {command}"


@pytest.mark.parametrize("name", sorted(_callstream_services()))
def test_compose_environment_is_valid_settings(name: str) -> None:
    """Every CALLSTREAM_* variable a service sets names a real setting with a valid value."""
    env = _env(_callstream_services()[name])
    prefixes = {name.split("__")[0] for name in env if name.startswith("CALLSTREAM_")}
    for prefix in prefixes:
        section = prefix.removeprefix("CALLSTREAM_").lower()
        assert section in SECTIONS, f"{name}: {prefix}__* is not a settings section"
        _load_from(env, SECTIONS[section], section)  # raises SettingsError, naming the setting


def test_compose_services_use_real_kafka_settings() -> None:
    for name, service in _callstream_services().items():
        kafka = _load_from(_env(service), KafkaSettings, "kafka")
        assert kafka.idempotence, f"{name}: Apache Kafka supports idempotent producers"
        assert kafka.partitions >= 3, f"{name}: too few partitions to scale the normalizer"


def test_compose_ingress_may_listen_beyond_loopback() -> None:
    """The ingress refuses 0.0.0.0 while a webhook provider has no auth: every one has some."""
    service = _callstream_services()["ingress"]
    args = _parse([_interpolate(str(part)) for part in service["command"]])
    settings = _load_from(_env(service), IngressSettings, "ingress")
    guarded = PROVIDERS | TRACKED
    refuse_exposure(args.host, settings.auth, guarded, insecure=bool(args.insecure_no_auth))
    assert set(settings.auth) == guarded
    assert all(guard.check for guard in guards(settings.auth, guarded).values())
    assert not settings.insecure_no_auth


def test_compose_normalizer_is_scalable() -> None:
    normalizer = _callstream_services()["normalizer"]
    assert "container_name" not in normalizer
    assert "ports" not in normalizer
    assert "--metrics-port" in normalizer["command"]


def test_compose_startup_order() -> None:
    services = _compose()["services"]
    assert services["topics"]["depends_on"]["kafka"]["condition"] == "service_healthy"
    for name in ("ingress", "normalizer", "aggregator", "store", "alerts", "poll"):
        depends_on = services[name]["depends_on"]
        assert depends_on["kafka"]["condition"] == "service_healthy", name
        assert depends_on["topics"]["condition"] == "service_completed_successfully", name
    assert services["store"]["depends_on"]["postgres"]["condition"] == "service_healthy"
    for name in (
        "kafka", "postgres", "ingress", "normalizer", "aggregator", "store", "alerts", "poll"
    ):  # fmt: skip
        assert "healthcheck" in services[name], name


def test_prometheus_scrapes_every_metrics_endpoint() -> None:
    config = yaml.safe_load((ROOT / "deploy" / "prometheus.yml").read_text())
    targets: set[str] = set()
    for job in config["scrape_configs"]:
        for static in job.get("static_configs", []):
            targets.update(static["targets"])
        for dns in job.get("dns_sd_configs", []):
            targets.update(f"{host}:{dns['port']}" for host in dns["names"])
    for name, service in _callstream_services().items():
        args = _parse([_interpolate(str(part)) for part in service["command"]])
        if getattr(args, "metrics_port", None):
            assert f"{name}:{args.metrics_port}" in targets, name
    assert f"ingress:{_parse(_callstream_services()['ingress']['command']).port}" in targets


def _settings_variables() -> set[str]:
    """The environment variable of every setting; a provider's auth as <PROVIDER>."""
    return {
        name
        for section, cls in SECTIONS.items()
        for name in _variables(f"CALLSTREAM_{section.upper()}", cls)
    }


def _variables(prefix: str, cls: type[msgspec.Struct]) -> set[str]:
    names = set()
    for field in msgspec.structs.fields(cls):
        name = f"{prefix}__{field.name.upper()}"
        if field.type == dict[str, ProviderAuth]:
            names |= _variables(f"{name}__<PROVIDER>", ProviderAuth)
        elif isinstance(field.type, type) and issubclass(field.type, msgspec.Struct):
            names |= _variables(name, field.type)
        else:
            names.add(name)
    return names


def _nested(cls: type[msgspec.Struct]) -> set[type]:
    """The Structs within `cls` (sub-sections), and the classes they derive from."""
    found: set[type] = set()
    for field in msgspec.structs.fields(cls):
        kind = ProviderAuth if field.type == dict[str, ProviderAuth] else field.type
        if isinstance(kind, type) and issubclass(kind, msgspec.Struct):
            found |= {kind, *kind.__mro__[1:-1]} | _nested(kind)
    return found


def test_sections_cover_every_settings_struct() -> None:
    structs = {
        cls
        for _, cls in inspect.getmembers(settings_module, inspect.isclass)
        if issubclass(cls, msgspec.Struct) and cls.__module__ == settings_module.__name__
    }
    nested = {kind for cls in SECTIONS.values() for kind in _nested(cls)} - {msgspec.Struct}
    assert structs - nested == set(SECTIONS.values())
    for command, service in cli._SERVICES.items():
        assert SECTIONS[command] is service.settings, command


def test_settings_doc_names_every_setting() -> None:
    doc = SETTINGS_DOC.read_text()
    missing = sorted(name for name in _settings_variables() if f"`{name}`" not in doc)
    assert not missing, f"docs/settings.md lacks {missing}"


def test_settings_doc_documents_no_setting_that_does_not_exist() -> None:
    """Every variable in the first column of a table is a setting (a removed one fails)."""
    known = _settings_variables() | {"CALLSTREAM_INGRESS__AUTH__<PROVIDER>__*"}
    documented = re.findall(r"^\| `(CALLSTREAM_[^`]+)`", SETTINGS_DOC.read_text(), re.MULTILINE)
    assert documented
    unknown = sorted(set(documented) - known)
    assert not unknown, f"docs/settings.md documents settings that do not exist: {unknown}"
