"""Provider authentication and the IP allow-list: the checks alone, then through the app."""

from __future__ import annotations

import base64
import hashlib
import hmac
from collections.abc import Callable
from contextlib import AbstractAsyncContextManager

import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient

from callstream import samples
from foundation.settings import ProviderAuth, Secret, SettingsError
from ingest.auth import guards, refuse_exposure
from ingest.ingress import PROVIDERS

Client = TestClient[web.Request, web.Application]
StartIngress = Callable[..., AbstractAsyncContextManager[Client]]

BODY = samples.payloads("wavecell", 1)[0]
KEY = "s3cret-key"
SIGNATURE = hmac.new(KEY.encode(), BODY, hashlib.sha256).hexdigest()
BEARER = ProviderAuth(method="bearer", token=Secret("t0ken"))
BASIC = ProviderAuth(method="basic", username="acme", password=Secret("pässword"))
HMAC = ProviderAuth(method="hmac", secret=Secret(KEY), header="X-Wavecell-Signature")


def _basic(user: str, password: str) -> str:
    return "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()


# (auth, headers of the request, accepted?)
CASES: list[tuple[ProviderAuth, dict[str, str], bool]] = [
    (BEARER, {"Authorization": "Bearer t0ken"}, True),
    (BEARER, {"Authorization": "bearer t0ken"}, True),
    (BEARER, {"Authorization": "Bearer t0ken2"}, False),
    (BEARER, {"Authorization": "Basic t0ken"}, False),
    (BEARER, {}, False),
    (BASIC, {"Authorization": _basic("acme", "pässword")}, True),
    (BASIC, {"Authorization": _basic("acme", "password")}, False),
    (BASIC, {"Authorization": _basic("acme2", "pässword")}, False),
    (BASIC, {"Authorization": "Basic not-base64!"}, False),
    (BASIC, {}, False),
    (HMAC, {"X-Wavecell-Signature": SIGNATURE}, True),
    (HMAC, {"X-Wavecell-Signature": "sha256=" + SIGNATURE}, True),
    (HMAC, {"X-Wavecell-Signature": SIGNATURE.upper()}, True),
    (
        HMAC,
        {"X-Wavecell-Signature": SIGNATURE[:-1] + ("1" if SIGNATURE[-1] == "0" else "0")},
        False,
    ),
    (HMAC, {"X-Signature": SIGNATURE}, False),  # the configured header only
    (HMAC, {}, False),
    (ProviderAuth(), {}, True),
]
IDS = [
    "bearer", "bearer_scheme_case", "bearer_wrong", "bearer_wrong_scheme", "bearer_missing",
    "basic", "basic_wrong_password", "basic_wrong_user", "basic_garbage", "basic_missing",
    "hmac", "hmac_prefixed", "hmac_upper_hex", "hmac_wrong", "hmac_other_header", "hmac_missing",
    "none",
]  # fmt: skip


@pytest.mark.parametrize(("auth", "headers", "accepted"), CASES, ids=IDS)
def test_credentials(auth: ProviderAuth, headers: dict[str, str], accepted: bool) -> None:
    guard = guards({"wavecell": auth}, PROVIDERS)["wavecell"]
    assert (guard.check(headers, BODY) is None) is accepted


def test_the_hmac_covers_the_body() -> None:
    guard = guards({"wavecell": HMAC}, PROVIDERS)["wavecell"]
    assert guard.check({"X-Wavecell-Signature": SIGNATURE}, BODY + b" ") is not None


@pytest.mark.parametrize(
    ("remote", "admitted"),
    [
        ("10.1.2.3", True),
        ("192.0.2.7", True),
        ("192.0.2.8", False),
        ("2001:db8::1", True),
        ("::ffff:10.1.2.3", True),
        ("11.0.0.1", False),
        (None, False),
        ("not-an-address", False),
    ],
)
def test_the_ip_allow_list(remote: str | None, admitted: bool) -> None:
    auth = ProviderAuth(allow_ips=("10.0.0.0/8", "192.0.2.7", "2001:db8::/32"))
    assert guards({"wavecell": auth}, PROVIDERS)["wavecell"].admits(remote) is admitted
    assert guards({}, PROVIDERS)["wavecell"].admits(remote)  # no list: everyone


@pytest.mark.parametrize(
    ("auth", "message"),
    [
        ({"wavecell": ProviderAuth(method="bearer")}, "AUTH__WAVECELL__TOKEN: required"),
        ({"wavecell": ProviderAuth(method="basic", username="u")}, "AUTH__WAVECELL__PASSWORD"),
        ({"wavecell": ProviderAuth(method="hmac")}, "AUTH__WAVECELL__SECRET: required"),
        ({"wavecell": ProviderAuth(allow_ips=("10.0.0.0/33",))}, "AUTH__WAVECELL__ALLOW_IPS"),
        ({"vpbx": BEARER}, "AUTH__VPBX: the ingress takes no requests for it"),
    ],
)
def test_incomplete_auth_settings_are_refused(auth: dict[str, ProviderAuth], message: str) -> None:
    with pytest.raises(SettingsError, match=message):
        guards(auth, PROVIDERS)


@pytest.mark.parametrize("host", ["127.0.0.1", "127.8.0.1", "::1", "localhost", "LOCALHOST"])
def test_unauthenticated_providers_may_listen_on_loopback(host: str) -> None:
    refuse_exposure(host, {}, PROVIDERS, insecure=False)


@pytest.mark.parametrize("host", ["0.0.0.0", "::", "", "10.0.0.5", "ingress.example.com"])  # noqa: S104
def test_unauthenticated_providers_are_not_exposed_beyond_loopback(host: str) -> None:
    with pytest.raises(SettingsError, match=r"while voice_messaging accept.*INSECURE_NO_AUTH"):
        refuse_exposure(host, {"wavecell": HMAC}, PROVIDERS, insecure=False)
    refuse_exposure(host, {}, PROVIDERS, insecure=True)
    refuse_exposure(host, {"wavecell": HMAC, "voice_messaging": BEARER}, PROVIDERS, insecure=False)


@pytest.mark.parametrize("auth", [BEARER, BASIC, HMAC], ids=lambda auth: auth.method)
async def test_the_app_answers_401_with_a_challenge_to_wrong_credentials(
    auth: ProviderAuth, ingress: StartIngress
) -> None:
    challenge = {
        "bearer": 'Bearer realm="callstream"',
        "basic": 'Basic realm="callstream", charset="UTF-8"',
        "hmac": None,
    }[auth.method]
    async with ingress(auth={"wavecell": auth}) as client:
        for headers, accepted in [(h, ok) for a, h, ok in CASES if a is auth]:
            response = await client.post("/v1/callbacks/wavecell", data=BODY, headers=headers)
            assert response.status == (202 if accepted else 401), headers
            if not accepted:
                assert (await response.json())["error"] == "unauthorized"
                assert response.headers.get("WWW-Authenticate") == challenge
