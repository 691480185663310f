"""Who may call back: each provider's IP allow-list and credentials, checked in constant time,
and a lockout of addresses that keep failing authentication.

Settings are checked once at start (a method without its secret, a bad CIDR, a provider that
sends no webhooks are setting errors); per request a Guard only compares. Secrets never leave
this module: nothing here logs them, and the errors name settings, not values.
"""

from __future__ import annotations

import hmac
import math
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from ipaddress import IPv4Network, IPv6Network, ip_address, ip_network

import structlog
from aiohttp import BasicAuth, hdrs
from limits import RateLimitItemPerSecond
from limits.storage import MemoryStorage
from limits.strategies import MovingWindowRateLimiter

from foundation.settings import ProviderAuth, SettingsError

Check = Callable[[Mapping[str, str], bytes], bool]
"""(request headers, raw body) → whether the credentials are right."""

_SETTING = "CALLSTREAM_INGRESS__AUTH__{provider}__{field}"
_LOOPBACK_NAMES = frozenset({"localhost"})

log = structlog.get_logger("callstream.ingest")


@dataclass(frozen=True, slots=True)
class Guard:
    """One provider's checks, prepared from its ProviderAuth."""

    networks: tuple[IPv4Network | IPv6Network, ...]
    authenticates: Check
    challenge: Mapping[str, str]
    """Headers of a 401: WWW-Authenticate for bearer and basic."""

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


def guards(auth: Mapping[str, ProviderAuth], providers: Iterable[str]) -> dict[str, Guard]:
    """A Guard per provider the ingress takes requests for (webhooks, tracked calls), method
    `none` where `auth` names none.

    Raises SettingsError for auth of any other provider, a method whose credentials are
    missing, or an allow-list entry that is not a CIDR.
    """
    providers = sorted(providers)
    unknown = sorted(auth.keys() - set(providers))
    if unknown:
        raise SettingsError(
            f"CALLSTREAM_INGRESS__AUTH__{unknown[0].upper()}: the ingress takes no requests "
            f"for it (it does for {', '.join(providers)})"
        )
    return {name: _guard(name, auth.get(name, ProviderAuth())) for name in providers}


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


def _guard(provider: str, auth: ProviderAuth) -> Guard:
    def required(field: str, value: str | None) -> bytes:
        if not value:
            raise SettingsError(
                f"{_SETTING.format(provider=provider.upper(), field=field.upper())}: "
                f"required when the method is {auth.method}"
            )
        return value.encode()

    challenge: dict[str, str] = {}
    match auth.method:
        case "none":
            check = _anyone
        case "bearer":
            check = _bearer(required("token", auth.token))
            challenge = {hdrs.WWW_AUTHENTICATE: 'Bearer realm="callstream"'}
        case "basic":
            check = _basic(required("username", auth.username), required("password", auth.password))
            challenge = {hdrs.WWW_AUTHENTICATE: 'Basic realm="callstream", charset="UTF-8"'}
        case "hmac":
            check = _hmac(required("secret", auth.secret), auth.header)
    return Guard(_networks(provider, auth.allow_ips), check, challenge)


def _networks(provider: str, cidrs: Iterable[str]) -> tuple[IPv4Network | IPv6Network, ...]:
    try:
        return tuple(ip_network(cidr.strip(), strict=False) for cidr in cidrs)
    except ValueError as exc:
        setting = _SETTING.format(provider=provider.upper(), field="ALLOW_IPS")
        raise SettingsError(f"{setting}: {exc}") from None


def _anyone(_headers: Mapping[str, str], _body: bytes) -> bool:
    return True


def _bearer(token: bytes) -> Check:
    def check(headers: Mapping[str, str], _body: bytes) -> bool:
        scheme, _, given = headers.get(hdrs.AUTHORIZATION, "").partition(" ")
        return scheme.lower() == "bearer" and hmac.compare_digest(given.strip().encode(), token)

    return check


def _basic(username: bytes, password: bytes) -> Check:
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


def _hmac(key: bytes, header: str) -> Check:
    def check(headers: Mapping[str, str], body: bytes) -> bool:
        given = headers.get(header, "").strip().lower().removeprefix("sha256=")
        return hmac.compare_digest(given.encode(), hmac.digest(key, body, "sha256").hex().encode())

    return check
