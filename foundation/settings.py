"""Settings: one frozen Struct per concern, read from CALLSTREAM_* environment variables and flags.

`CALLSTREAM_KAFKA__BOOTSTRAP=host:9092` sets `KafkaSettings.bootstrap`; `__` nests deeper
(`CALLSTREAM_INGRESS__AUTH__WAVECELL__TOKEN`). Command-line flags override the environment.
Values are converted leniently ("10" → 10), unknown keys are rejected as typos, and a bad value
fails at start with a message naming the setting.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from typing import Annotated, Any, Literal, TypeVar

import msgspec

from foundation.errors import CallstreamError
from schemas import topics

PREFIX = "CALLSTREAM_"
S = TypeVar("S", bound=msgspec.Struct)
MAX_TOPIC_NAME = 249
"""The longest topic name Kafka accepts."""
_TOPIC_CHARACTERS = re.compile(r"[a-zA-Z0-9._-]*")


class SettingsError(CallstreamError):
    """A setting that is missing, unknown or of the wrong type; the message names it."""


class Secret(str):
    """A credential: compares and hashes like the string, never shows it in repr or logs."""

    __slots__ = ()

    def __repr__(self) -> str:
        return "Secret('***')"


class KafkaSettings(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    bootstrap: str = "127.0.0.1:9092"
    """host:port of one or more brokers, comma-separated."""
    client_id: str = "callstream"
    idempotence: bool = False
    """Idempotent producers; Apache Kafka supports them, the embedded broker does not."""
    compression: Literal["none", "gzip", "snappy", "lz4", "zstd"] = "snappy"
    """Compression of produced batches: snappy shrinks JSON events about 4x for less CPU than
    writing the uncompressed bytes to the broker costs."""
    partitions: int = 4
    """Partitions of each topic the bootstrap creates (existing topics are left as they are)."""
    replication_factor: int = 1
    request_timeout_ms: int = 30_000
    session_timeout_ms: int = 10_000
    """Consumer group session timeout: how long a dead member holds its partitions."""
    heartbeat_interval_ms: int = 3_000
    fetch_max_wait_ms: int = 50
    """How long the broker may hold a consumer's fetch while it has no new records. Apache Kafka
    answers as soon as a record arrives, so there this only sets how often an idle consumer
    asks; the embedded broker holds a fetch about this long even when records arrive, so it
    bounds each hop's latency (one hop p50/p99: 16/42 ms at 50, 10/21 at 20, 136/262 at 500)
    and an idle `up`'s CPU (12 %, 25 %, 3 % of a core)."""
    topic_prefix: str = ""
    """Put before every topic and consumer group name (`staging.` → `staging.calls.raw`), so that
    environments, or tests, share one cluster without seeing each other's records."""

    def __post_init__(self) -> None:
        """Raises SettingsError, naming the variable, for a prefix no Kafka topic name can have."""
        if not _TOPIC_CHARACTERS.fullmatch(self.topic_prefix):
            raise SettingsError(
                f"{PREFIX}KAFKA__TOPIC_PREFIX: {self.topic_prefix!r} has characters a Kafka topic "
                "name cannot have (letters, digits, '.', '_' and '-' only)"
            )
        longest = max(topics.ALL, key=len)
        if len(self.topic(longest)) > MAX_TOPIC_NAME:
            raise SettingsError(
                f"{PREFIX}KAFKA__TOPIC_PREFIX: {len(self.topic_prefix)} characters is too long: "
                f"{longest!r} would be {len(self.topic(longest))}, and Kafka allows "
                f"{MAX_TOPIC_NAME}"
            )

    def topic(self, name: str) -> str:
        """Topic `name` (a `schemas.topics` name) as it is called on this cluster."""
        return self.topic_prefix + name

    def group(self, group_id: str) -> str:
        """Consumer group `group_id` as it is called on this cluster."""
        return self.topic_prefix + group_id


class ProviderAuth(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """How one provider proves itself to the ingress."""

    method: Literal["none", "bearer", "basic", "hmac", "standard_webhooks"] = "none"
    token: Secret | None = None
    """bearer: the expected token."""
    username: str | None = None
    password: Secret | None = None
    """basic: the expected credentials."""
    secret: Secret | None = None
    """hmac: the key of the HMAC-SHA256 over the raw body. standard_webhooks: one or more
    `whsec_<base64>` secrets, space-separated; a signature by any of them is accepted."""
    header: str = "X-Signature"
    """hmac: the header carrying the hex digest (an optional `sha256=` prefix is accepted)."""
    tolerance_s: int = 300
    """standard_webhooks: how far webhook-timestamp may be from the clock, either way; an
    accepted webhook-id is refused as a replay until its timestamp is that old."""
    allow_ips: tuple[str, ...] = ()
    """CIDRs allowed to call; empty means any address."""


def load(cls: type[S], section: str, flags: Mapping[str, Any] | None = None) -> S:
    """`cls` from CALLSTREAM_<SECTION>__* variables, then `flags` (those not None) on top."""
    env_prefix = f"{PREFIX}{section.upper()}__"
    raw: dict[str, Any] = {}
    for name, value in os.environ.items():
        if name.startswith(env_prefix):
            _nest(raw, name.removeprefix(env_prefix).lower().split("__"), value)
    raw.update({key: value for key, value in (flags or {}).items() if value is not None})
    try:
        return msgspec.convert(raw, cls, strict=False, dec_hook=_decode_secret)
    except msgspec.ValidationError as exc:
        reason, _, path = str(exc).partition(" - at `$")
        setting = env_prefix + path.rstrip("`").lstrip(".").replace(".", "__").upper()
        raise SettingsError(f"{setting.rstrip('_')}: {reason}") from None


_LISTS = frozenset({"allow_ips", "client_ids", "rereads_s"})
"""Settings given as comma-separated lists."""


def _nest(tree: dict[str, Any], path: list[str], value: str) -> None:
    for part in path[:-1]:
        tree = tree.setdefault(part, {})
    leaf = path[-1]
    tree[leaf] = tuple(filter(None, value.split(","))) if leaf in _LISTS else value


def _decode_secret(kind: type, value: Any) -> Any:
    if kind is Secret and isinstance(value, str):
        return Secret(value)
    raise NotImplementedError


class IngressSettings(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    host: str = "127.0.0.1"
    port: int = 8080
    max_body_bytes: int = 1 << 20
    """Larger bodies are refused with 413."""
    publish_timeout_s: float = 5.0
    """How long a callback waits for the broker's ack before it is answered 503."""
    linger_ms: Annotated[float, msgspec.Meta(ge=0)] = 1.0
    """Callbacks arriving within this long of each other go to the broker as one batch per
    partition (sooner when a batch is full, later while the partition's previous batch waits
    for the producer); each is answered once its batch is acknowledged."""
    max_pending_bytes: Annotated[int, msgspec.Meta(ge=1)] = 64 << 20
    """While bodies of this many bytes wait for the broker's ack, further callbacks are answered
    503 at once: the memory the ingress holds for a slow broker is bounded."""
    workers: Annotated[int, msgspec.Meta(ge=1)] = 1
    """Processes serving the port (SO_REUSEPORT), each with its own producer; /readyz and
    /metrics answer for them all."""
    retry_after_s: int = 5
    """The Retry-After of a 503."""
    idle_timeout_s: float = 15.0
    """A connection that has not sent a complete request head this long after it opened or after
    its last answer is closed: idle keep-alive connections and clients dribbling headers alike."""
    body_timeout_s: float = 10.0
    """A body not received in full this long after its head is refused with 408."""
    auth_failures: int = 10
    """Failed authentications a peer address may make within auth_window_s; after that its
    callbacks are refused with 429 until the window has room again (0: no limit)."""
    auth_window_s: int = 60
    """The sliding window of auth_failures, in seconds."""
    insecure_no_auth: bool = False
    """Allow listening on a non-loopback address while a provider has no authentication."""
    auth: dict[str, ProviderAuth] = {}
    """Per webhook provider; a provider not listed accepts unauthenticated callbacks."""


class NormalizerSettings(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    group_id: str = "callstream-normalizer"
    max_batch: int = 20_000
    """Raw records normalized, produced and committed together (at most; fewer when fewer wait).
    Large batches amortize each batch's produce round trip and commit (docs/performance.md)."""
    metrics_port: int = 0
    """Serve Prometheus /metrics on this port (0: off)."""


class LogSettings(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    level: Literal["debug", "info", "warning", "error"] = "info"
    json: bool | None = None
    """JSON lines (true), console (false), or JSON unless stderr is a terminal (unset)."""
    mask_numbers: bool = False
    """Mask phone numbers in logs (+65*******3225)."""


class AggregatorSettings(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    group_id: str = "callstream-aggregator"
    max_batch: int = 5_000
    open_timeout_s: float = 7_200.0
    """A session with no final status this long after its last report is closed as unknown."""
    final_retention_s: float = 900.0
    """A final session is evicted from the state this long after its last report."""
    sweep_interval_s: float = 30.0
    """How often timeouts and retention are checked."""
    state_dir: str = ".callstream/state"
    """Where the state of the assigned partitions is kept (RocksDB, one database per partition);
    one directory per aggregator instance."""
    cache_mb: int = 64
    """Memory of the state, all partitions together: RocksDB's block cache, which the write
    buffers are charged to (half of it at most)."""
    metrics_port: int = 0
    """Serve Prometheus /metrics on this port (0: off)."""


class StoreSettings(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    url: str = "sqlite:///.callstream/callstream.sqlite3"
    """Where events and sessions are stored: sqlite:///PATH or postgresql://USER@HOST:PORT/DB."""
    group_id: str = "callstream-store"
    max_batch: int = 5_000
    """Records written and committed together."""
    metrics_port: int = 0
    """Serve Prometheus /metrics on this port (0: off)."""


class AlertSettings(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    rules: str | None = None
    """A TOML file of alert rules; the documented defaults when unset."""
    group_id: str = "callstream-alerts"
    """Consumer group on calls.sessions; the windows' group on calls.alerts.samples is this
    followed by `-windows`."""
    max_batch: int = 5_000
    grace_s: Annotated[float, msgspec.Meta(ge=0, le=86_400)] = 60.0
    """How long after a session's received time its sample is counted, on the slowest
    calls.sessions partition's clock: longer than a session can take to reach the windows
    (the aggregator's SWEEP_INTERVAL_S for a timeout close, plus the pipeline's lag). A sample
    that takes longer is still counted, but a replay may then decide differently."""
    tick_interval_s: Annotated[float, msgspec.Meta(gt=0, le=3_600)] = 5.0
    """How often each instance says how far it has read calls.sessions (the windows decide no
    further than that), and writes its windows' state to calls.alerts.state."""
    metrics_port: int = 0
    """Serve Prometheus /metrics on this port (0: off)."""

    @property
    def windows_group_id(self) -> str:
        return f"{self.group_id}-windows"


class PollerSettings(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """What every poller sets about the provider API it asks: where, how fast, how patiently."""

    base_url: str = ""
    """The provider API's base URL; empty: this poller does not run."""
    rate_per_s: float = 20.0
    """Requests a second at most, token requests included."""
    timeout_s: float = 10.0
    """One request's time limit; a request that takes longer is retried."""
    max_attempts: int = 5
    """Attempts of one request (429, 5xx, timeouts, rejected tokens, malformed answers)."""
    backoff_s: float = 0.5
    """Retry n waits a random time up to backoff_s * 2**n (full jitter), or Retry-After."""
    backoff_max_s: float = 30.0
    """The longest wait between two attempts."""


class VpbxPollSettings(PollerSettings, frozen=True, forbid_unknown_fields=True):
    client_ids: tuple[str, ...] = ()
    """The client ids (accounts) whose calls are read, comma-separated."""
    token_url: str = ""
    """The OAuth2 token endpoint; empty: BASE_URL/oauth/token."""
    oauth_client_id: str = ""
    oauth_client_secret: Secret | None = None
    """OAuth2 client-credentials grant: the application's id and secret."""
    window_s: float = 60.0
    """Calls are read in consecutive windows of start time this long, each once it is over."""
    max_call_s: float = 14_400.0
    """The longest call (start to hang-up) that is sure to be read: the API lists a call only
    once it has ended, so each window is read for the last time this long after its end."""
    rereads_s: tuple[float, ...] = (60.0, 600.0, 3_600.0)
    """Besides when it is over and max_call_s after its end, each window is read again this long
    after its end (comma-separated), so that a call is published soon after it ends; values
    not below max_call_s are left out. Each window is read at most len(rereads_s) + 2 times."""
    backfill_s: float = 3_600.0
    """A client without a checkpoint is read from this long ago."""
    retry_interval_s: float = 10.0
    """How long to wait before reading a window again whose pages could not all be fetched."""
    per_page: int = 100
    group_id: str = "callstream-poll-vpbx"
    """Consumer group on calls.checkpoints; instances share the clients by partition."""


class MobileAgentPollSettings(PollerSettings, frozen=True, forbid_unknown_fields=True):
    token: Secret | None = None
    """A static bearer token; when unset, one is exchanged for APP_KEY and APP_SECRET."""
    app_key: str = ""
    app_secret: Secret | None = None
    """AK/SK for the tokenByAkSk exchange (app_key is also sent as X-APP-Key)."""
    token_url: str = ""
    """The tokenByAkSk endpoint; empty: BASE_URL/apigovernance/api/oauth/tokenByAkSk."""
    token_expire_s: int = 600
    """The token lifetime asked for (X-Token-Expire); tokens are renewed before they expire."""
    interval_s: float = 5.0
    """How often each tracked call is asked for its state."""
    jitter: float = 0.2
    """Each interval is drawn from interval_s * (1 ± jitter), so calls spread out."""
    max_call_s: float = 14_400.0
    """The longest call followed to its end, as for vpbx (default 4 hours); see deadline_s."""
    setup_allowance_s: float = 900.0
    """How long a call may wait to be made and ring before it is answered (state 0 queued, then
    state 1 ringing its two parties, each until a no-answer timeout); see deadline_s."""
    account: str = ""
    """Context `account` of every report (empty: none)."""
    reason_table: Literal["default", "q850"] = "default"
    """Context `reason_table`: q850 reads every reasonCode as a Q.850 cause (ITA accounts)."""
    group_id: str = "callstream-poll-mobile-agent"
    """Consumer group on calls.track; instances share the tracked calls by partition."""

    @property
    def deadline_s(self) -> float:
        """A call not ended this long after it was registered is asked once more, then no
        longer polled: max_call_s + setup_allowance_s. A call is registered when it is
        placed, so it may queue and ring before its talk, up to max_call_s, begins; the
        deadline reasons like the vpbx poller's last re-read (a call longer than max_call_s is
        given up), plus the time before the answer that vpbx counts in its call length."""
        return self.max_call_s + self.setup_allowance_s


class PollSettings(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """`callstream poll`: the pollers whose BASE_URL is set."""

    vpbx: VpbxPollSettings = VpbxPollSettings()
    mobile_agent: MobileAgentPollSettings = MobileAgentPollSettings()
    metrics_port: int = 0
    """Serve Prometheus /metrics on this port (0: off)."""

    @property
    def configured(self) -> list[str]:
        """The providers whose poller runs."""
        return [name for name in ("vpbx", "mobile_agent") if getattr(self, name).base_url]
