"""Who may call back: each provider's IP allow-list and credentials, checked in constant time,
and a lockout of addresses that keep failing authentication.

Settings are checked once at start (a method without its secret, a bad CIDR, a provider that
sends no webhooks are setting errors); per request a Guard only compares, and for
standard_webhooks remembers the ids it accepted. Secrets never leave this module: nothing here
logs them or a signature, and the errors name settings and headers, not values.
"""

from __future__ import annotations

import base64
import heapq
import hmac
import math
import re
import time
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from ipaddress import IPv4Network, IPv6Network, ip_address, ip_network

import structlog
from aiohttp import BasicAuth, hdrs
from limits import RateLimitItemPerSecond
from limits.storage import MemoryStorage
from limits.strategies import MovingWindowRateLimiter

from foundation.settings import ProviderAuth, SettingsError

Clock = Callable[[], float]
"""Seconds since the epoch: time.time, or a test's fake clock."""

_SETTING = "CALLSTREAM_INGRESS__AUTH__{provider}__{field}"
_LOOPBACK_NAMES = frozenset({"localhost"})

log = structlog.get_logger("callstream.ingest")


@dataclass(frozen=True, slots=True)
class Failure:
    """Why a request's credentials are refused: the status, `error` and `detail` of its answer.
    The detail names headers and settings, never a value sent or expected."""

    status: int
    error: str
    detail: str


WRONG = Failure(401, "unauthorized", "The credentials are missing or wrong.")

Check = Callable[[Mapping[str, str], bytes], Failure | None]
"""(request headers, raw body) → None if the credentials are right, else why not."""
Release = Callable[[Mapping[str, str]], None]
"""(request headers) → undo what a Check that passed recorded of the request."""


def _nothing_to_release(_headers: Mapping[str, str]) -> None:
    return None


@dataclass(frozen=True, slots=True)
class Guard:
    """One provider's checks, prepared from its ProviderAuth."""

    networks: tuple[IPv4Network | IPv6Network, ...]
    check: Check
    challenge: Mapping[str, str]
    """Headers of a 401: WWW-Authenticate for bearer and basic."""
    release: Release = _nothing_to_release
    """Called with the headers of a request that passed `check` but was not accepted after all
    (refused, or not written): standard_webhooks forgets its id, so that the provider's retry
    of it is not refused as a replay."""

    def admits(self, remote: str | None) -> bool:
        """Whether `remote` (the peer address) is on the allow-list; an empty list admits all."""
        if not self.networks:
            return True
        try:
            address = ip_address(remote or "")
        except ValueError:
            return False
        if address.version == 6 and address.ipv4_mapped:  # a dual-stack socket's IPv4 peer
            address = address.ipv4_mapped
        return any(address in network for network in self.networks)


class Lockout:
    """Peer addresses that failed authentication `failures` times within `window_s` seconds:
    their callbacks are refused (429) until the oldest failure leaves the window.

    Failures are counted by the `limits` library's moving window, in this process's memory. The
    check on every callback is one dict lookup, which finds nothing unless an address is locked
    out; `limits` is asked only then. Expired entries of that dict are dropped whenever another
    address is locked out, so it holds about the addresses locked out within one window: a
    flood from many addresses costs memory for one window, not for good.
    """

    def __init__(self, failures: int, window_s: int) -> None:
        self._enabled = failures > 0
        self._limit = RateLimitItemPerSecond(max(failures, 1), window_s)
        self._window = MovingWindowRateLimiter(MemoryStorage())
        self._locked: dict[str, float] = {}
        """Address → until when it is locked out, as far as is known (time.time())."""

    @property
    def locked_out(self) -> bool:
        """Whether any address may be locked out (if none is, `retry_after` is None for all)."""
        return bool(self._locked)

    def retry_after(self, remote: str) -> int | None:
        """Seconds until `remote` may try again, or None if it is not locked out."""
        if remote not in self._locked:
            return None
        until = self._until(remote)
        if until is None:
            del self._locked[remote]
            return None
        return max(1, math.ceil(until - time.time()))

    def failed(self, remote: str) -> None:
        """Count a failed authentication of `remote`; lock it out at the limit."""
        if not self._enabled:
            return
        self._window.hit(self._limit, remote)
        until = self._until(remote)
        if until is not None and remote not in self._locked:
            now = time.time()
            self._locked = {address: at for address, at in self._locked.items() if at > now}
            self._locked[remote] = until
            log.warning(
                "callback_sender_locked_out",
                remote=remote,
                failures=self._limit.amount,
                window_s=self._limit.get_expiry(),
                until=round(until),
            )

    def _until(self, remote: str) -> float | None:
        """When `remote` may fail again, or None if it may now."""
        if self._window.test(self._limit, remote):
            return None
        return self._window.get_window_stats(self._limit, remote).reset_time


def guards(
    auth: Mapping[str, ProviderAuth], providers: Iterable[str], clock: Clock = time.time
) -> dict[str, Guard]:
    """A Guard per provider the ingress takes requests for (webhooks, tracked calls), method
    `none` where `auth` names none; `clock` is what standard_webhooks compares timestamps with.

    Raises SettingsError for auth of any other provider, a method whose credentials are
    missing or malformed, or an allow-list entry that is not a CIDR.
    """
    providers = sorted(providers)
    unknown = sorted(auth.keys() - set(providers))
    if unknown:
        raise SettingsError(
            f"CALLSTREAM_INGRESS__AUTH__{unknown[0].upper()}: the ingress takes no requests "
            f"for it (it does for {', '.join(providers)})"
        )
    return {name: _guard(name, auth.get(name, ProviderAuth()), clock) for name in providers}


def refuse_exposure(
    host: str, auth: Mapping[str, ProviderAuth], providers: Iterable[str], *, insecure: bool
) -> None:
    """Raise SettingsError when `host` is reachable from other machines while a provider has
    no authentication, unless `insecure` (CALLSTREAM_INGRESS__INSECURE_NO_AUTH) allows it."""
    open_providers = sorted(p for p in providers if auth.get(p, ProviderAuth()).method == "none")
    if not open_providers or insecure or _is_loopback(host):
        return
    raise SettingsError(
        f"CALLSTREAM_INGRESS__HOST: refusing to listen on {host!r}, which is not a loopback "
        f"address, while {', '.join(open_providers)} accept unauthenticated callbacks; set "
        "CALLSTREAM_INGRESS__AUTH__<PROVIDER>__METHOD, or allow it with "
        "CALLSTREAM_INGRESS__INSECURE_NO_AUTH=true (--insecure-no-auth)"
    )


def _is_loopback(host: str) -> bool:
    if host.lower() in _LOOPBACK_NAMES:
        return True
    try:
        return ip_address(host).is_loopback
    except ValueError:  # a host name, or "" (every interface)
        return False


def _guard(provider: str, auth: ProviderAuth, clock: Clock) -> Guard:
    def setting(field: str) -> str:
        return _SETTING.format(provider=provider.upper(), field=field.upper())

    def required(field: str, value: str | None) -> bytes:
        if not value:
            raise SettingsError(f"{setting(field)}: required when the method is {auth.method}")
        return value.encode()

    networks = _networks(provider, auth.allow_ips)
    match auth.method:
        case "none":
            return Guard(networks, _anyone, {})
        case "bearer":
            challenge = {hdrs.WWW_AUTHENTICATE: 'Bearer realm="callstream"'}
            return Guard(networks, _wrong_unless(_bearer(required("token", auth.token))), challenge)
        case "basic":
            credentials = required("username", auth.username), required("password", auth.password)
            challenge = {hdrs.WWW_AUTHENTICATE: 'Basic realm="callstream", charset="UTF-8"'}
            return Guard(networks, _wrong_unless(_basic(*credentials)), challenge)
        case "hmac":
            check = _wrong_unless(_hmac(required("secret", auth.secret), auth.header))
            return Guard(networks, check, {})
        case "standard_webhooks":
            keys = _whsec_keys(setting("secret"), required("secret", auth.secret).split())
            if auth.tolerance_s < 1:
                raise SettingsError(f"{setting('tolerance_s')}: must be at least 1 second")
            webhooks = StandardWebhooks(keys, auth.tolerance_s, clock)
            return Guard(networks, webhooks.check, {}, webhooks.release)


def _networks(provider: str, cidrs: Iterable[str]) -> tuple[IPv4Network | IPv6Network, ...]:
    try:
        return tuple(ip_network(cidr.strip(), strict=False) for cidr in cidrs)
    except ValueError as exc:
        setting = _SETTING.format(provider=provider.upper(), field="ALLOW_IPS")
        raise SettingsError(f"{setting}: {exc}") from None


def _anyone(_headers: Mapping[str, str], _body: bytes) -> None:
    return None


def _wrong_unless(right: Callable[[Mapping[str, str], bytes], bool]) -> Check:
    """The Check of credentials that are right or wrong, with nothing more to say."""

    def check(headers: Mapping[str, str], body: bytes) -> Failure | None:
        return None if right(headers, body) else WRONG

    return check


def _bearer(token: bytes) -> Callable[[Mapping[str, str], bytes], bool]:
    def check(headers: Mapping[str, str], _body: bytes) -> bool:
        scheme, _, given = headers.get(hdrs.AUTHORIZATION, "").partition(" ")
        return scheme.lower() == "bearer" and hmac.compare_digest(given.strip().encode(), token)

    return check


def _basic(username: bytes, password: bytes) -> Callable[[Mapping[str, str], bytes], bool]:
    def check(headers: Mapping[str, str], _body: bytes) -> bool:
        try:
            given = BasicAuth.decode(headers.get(hdrs.AUTHORIZATION, ""), encoding="utf-8")
        except ValueError:
            return False
        # Both compared, always: which of the two was wrong must not show in the timing.
        login_ok = hmac.compare_digest(given.login.encode(), username)
        password_ok = hmac.compare_digest(given.password.encode(), password)
        return login_ok and password_ok

    return check


def _hmac(key: bytes, header: str) -> Callable[[Mapping[str, str], bytes], bool]:
    def check(headers: Mapping[str, str], body: bytes) -> bool:
        given = headers.get(header, "").strip().lower().removeprefix("sha256=")
        return hmac.compare_digest(given.encode(), hmac.digest(key, body, "sha256").hex().encode())

    return check


_WEBHOOK_HEADERS = ("webhook-id", "webhook-timestamp", "webhook-signature")
_SECONDS = re.compile(r"[0-9]{1,12}")
"""A webhook-timestamp: Unix time in whole seconds (12 digits reach the year 33658)."""
_WHSEC = b"whsec_"


class StandardWebhooks:
    """The standard_webhooks method (https://www.standardwebhooks.com), replay-proof.

    A request is accepted when `webhook-signature` (space-separated `v1,<base64>` entries) holds
    the HMAC-SHA256 of `{webhook-id}.{webhook-timestamp}.{body}` by any of `keys`,
    `webhook-timestamp` (Unix seconds) is within `tolerance_s` of the clock either way, and its
    `webhook-id` was not accepted before. Several signatures, and several keys, let either side
    rotate its secret without downtime.

    An accepted id is remembered until its timestamp leaves the tolerance: a replay is refused
    by its timestamp from then on, so the memory holds one tolerance's worth of accepted
    traffic. An id is recorded only once its signature verified: nobody without a key can use
    up ids. A request is checked and recorded without an await in between, so of concurrent
    copies one passes.
    """

    def __init__(self, keys: Sequence[bytes], tolerance_s: int, clock: Clock = time.time) -> None:
        self._keys, self._tolerance, self._clock = tuple(keys), tolerance_s, clock
        self._accepted: dict[str, int] = {}
        """Accepted webhook-id → the last second its timestamp is within the tolerance."""
        self._expiries: list[tuple[int, str]] = []
        """The same as a heap, soonest first (released ids stay in it until they expire)."""

    def __len__(self) -> int:
        """How many accepted ids are remembered."""
        return len(self._accepted)

    def check(self, headers: Mapping[str, str], body: bytes) -> Failure | None:
        now = self._clock()
        self._forget(now)
        if (failure := self._unusable(headers, now)) is not None:
            return failure
        webhook_id, timestamp, signatures = (headers[name] for name in _WEBHOOK_HEADERS)
        # aiohttp decodes header bytes as UTF-8 with surrogateescape: these are the bytes sent.
        signed = f"{webhook_id}.{timestamp}.".encode("utf-8", "surrogateescape") + body
        expected = [hmac.digest(key, signed, "sha256") for key in self._keys]
        given = list(_v1_signatures(signatures))
        if not any(hmac.compare_digest(e, g) for e in expected for g in given):
            return Failure(401, "unauthorized", "No webhook-signature matches.")
        if webhook_id in self._accepted:
            detail = (
                f"This webhook-id was accepted already, within the last {self._tolerance} s: "
                "a replay, or a retry of a webhook that was taken."
            )
            return Failure(409, "replayed", detail)
        self._accepted[webhook_id] = until = int(timestamp) + self._tolerance
        heapq.heappush(self._expiries, (until, webhook_id))
        return None

    def _unusable(self, headers: Mapping[str, str], now: float) -> Failure | None:
        """Why the webhook-* headers cannot be accepted whatever the signature, if they cannot."""
        if missing := [name for name in _WEBHOOK_HEADERS if not headers.get(name)]:
            return Failure(401, "unauthorized", f"Missing or empty: {', '.join(missing)}.")
        if "." in headers["webhook-id"]:  # the spec forbids it: signed content `a.1.2.{…}`
            # would be id `a.1` at 2 with body `{…}` as well as id `a` at 1 with body `2.{…}`
            return Failure(401, "unauthorized", "The webhook-id contains a full stop.")
        timestamp = headers["webhook-timestamp"]
        if not _SECONDS.fullmatch(timestamp):
            detail = "The webhook-timestamp is not Unix time in whole seconds."
            return Failure(401, "unauthorized", detail)
        if abs(age := now - int(timestamp)) > self._tolerance:
            when = f"{round(age)} s old" if age > 0 else f"{round(-age)} s ahead"
            detail = f"The webhook-timestamp is {when}; at most {self._tolerance} s are accepted."
            return Failure(401, "unauthorized", detail)
        return None

    def release(self, headers: Mapping[str, str]) -> None:
        """Forget the id of a request that passed `check` but was not accepted after all."""
        self._accepted.pop(headers.get("webhook-id", ""), None)

    def _forget(self, now: float) -> None:
        """Drop the ids whose timestamps have left the tolerance."""
        while self._expiries and self._expiries[0][0] < now:
            until, webhook_id = heapq.heappop(self._expiries)
            if self._accepted.get(webhook_id) == until:
                del self._accepted[webhook_id]


def _v1_signatures(header: str) -> Iterator[bytes]:
    """The `v1` signatures of a webhook-signature header, decoded; entries of other versions
    (`v1a`: asymmetric) and malformed ones are skipped."""
    for entry in header.split():
        version, _, signature = entry.partition(",")
        if version == "v1":
            try:
                yield base64.b64decode(signature, validate=True)
            except ValueError:  # not base64, or not ASCII
                continue


def _whsec_keys(setting: str, secrets: Sequence[bytes]) -> tuple[bytes, ...]:
    """The HMAC keys of `whsec_<base64>` secrets (padding optional)."""
    keys = []
    for number, secret in enumerate(secrets, 1):
        encoded = secret.removeprefix(_WHSEC)
        try:
            key = base64.b64decode(encoded + b"=" * (-len(encoded) % 4), validate=True)
        except ValueError:
            key = b""
        if not secret.startswith(_WHSEC) or not key:
            raise SettingsError(
                f"{setting}: secret {number} of {len(secrets)} is not whsec_ followed by the "
                "base64 of a key (standard_webhooks takes space-separated whsec_ secrets)"
            )
        keys.append(key)
    return tuple(keys)
