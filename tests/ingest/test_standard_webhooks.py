"""The standard_webhooks method: signatures, timestamps and replays on a fake clock, the checks
alone, then through the app."""

from __future__ import annotations

import base64
import hmac
import json
from collections.abc import Callable
from contextlib import AbstractAsyncContextManager

import pytest
from aiohttp import ClientResponse, web
from aiohttp.test_utils import TestClient

from callstream import samples
from foundation import kafka as kafka_io
from foundation.log import configure_logging
from foundation.settings import (
    IngressSettings,
    KafkaSettings,
    ProviderAuth,
    Secret,
    SettingsError,
    load,
)
from ingest.auth import Failure, Guard, StandardWebhooks, guards
from ingest.ingress import PROVIDERS
from schemas import topics

Client = TestClient[web.Request, web.Application]
StartIngress = Callable[..., AbstractAsyncContextManager[Client]]

NOW = 1_700_000_000
TOLERANCE = 300  # the default
BODY = samples.payloads("wavecell", 1)[0]
CALLBACK = "/v1/callbacks/wavecell"
KEY = b"callstream-standard-webhooks-key"
OLD_KEY = b"the-key-being-rotated-out-of-use"


def _whsec(key: bytes) -> str:
    return "whsec_" + base64.b64encode(key).decode()


AUTH = ProviderAuth(method="standard_webhooks", secret=Secret(_whsec(KEY)))


class Clock:
    """A fake time.time: it says `now` until the test moves it."""

    def __init__(self, now: float = NOW) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def _signature(key: bytes, webhook_id: str, at: int | str, body: bytes) -> str:
    signed = f"{webhook_id}.{at}.".encode() + body
    return "v1," + base64.b64encode(hmac.digest(key, signed, "sha256")).decode()


def _headers(
    body: bytes = BODY,
    *,
    webhook_id: str = "msg_1",
    at: int = NOW,
    keys: tuple[bytes, ...] = (KEY,),
) -> dict[str, str]:
    """A sender's webhook-* headers for `body`, signed by each of `keys`."""
    return {
        "webhook-id": webhook_id,
        "webhook-timestamp": str(at),
        "webhook-signature": " ".join(_signature(key, webhook_id, at, body) for key in keys),
    }


def _guard(auth: ProviderAuth = AUTH, clock: Clock | None = None) -> Guard:
    return guards({"wavecell": auth}, PROVIDERS, clock or Clock())["wavecell"]


def _refused(failure: Failure | None, detail: str, status: int = 401) -> None:
    assert failure is not None
    assert failure.status == status
    assert failure.error == ("replayed" if status == 409 else "unauthorized")
    assert detail in failure.detail


def test_the_specifications_example_is_accepted() -> None:
    """The reference libraries' signing example (standard-webhooks' test_sign_function)."""
    auth = ProviderAuth(
        method="standard_webhooks", secret=Secret("whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw")
    )
    headers = {
        "webhook-id": "msg_p5jXN8AQM9LWM0D4loKWxJek",
        "webhook-timestamp": "1614265330",
        "webhook-signature": "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE=",
    }
    body = b'{"test": 2432232314}'
    assert _guard(auth, Clock(1614265330)).check(headers, body) is None
    one_bit_off = headers | {"webhook-signature": headers["webhook-signature"][:-2] + "A="}
    failure = _guard(auth, Clock(1614265330)).check(one_bit_off, body)
    _refused(failure, "No webhook-signature matches.")


def test_a_valid_signature_is_accepted_and_a_wrong_one_refused() -> None:
    assert _guard().check(_headers(), BODY) is None
    _refused(_guard().check(_headers(keys=(b"another-key",)), BODY), "No webhook-signature")
    _refused(_guard().check(_headers(keys=()), BODY), "Missing or empty: webhook-signature.")


def test_the_signature_covers_the_body_the_id_and_the_timestamp() -> None:
    guard = _guard()
    _refused(guard.check(_headers(), BODY + b" "), "No webhook-signature matches.")
    _refused(guard.check(_headers() | {"webhook-id": "msg_2"}, BODY), "No webhook-signature")
    later = _headers() | {"webhook-timestamp": str(NOW + 1)}
    _refused(guard.check(later, BODY), "No webhook-signature matches.")


@pytest.mark.parametrize(
    "signatures",
    [
        ["v1,K5oZfzN95Z9UVu1EsfQmfVNQhnkZ2pj9o9NDN/H/pI4=", "RIGHT"],  # the sender rotates
        ["RIGHT", "v1,K5oZfzN95Z9UVu1EsfQmfVNQhnkZ2pj9o9NDN/H/pI4="],
        ["v1a,hnO3f9T8Ytu9HwrXslvumlUpqtNVqkhqw/enGzPCXe5BdqzCInXqYXFymVJaA7AZdpXwVLPo3mNl8EM+m7TBAg==",
         "RIGHT"],  # an asymmetric one, skipped
        ["v1,not base64!", "v1,", "garbage", "v1,é", "RIGHT"],  # malformed entries are skipped
    ],
)  # fmt: skip
def test_one_valid_signature_among_several_is_enough(signatures: list[str]) -> None:
    right = _headers()["webhook-signature"]
    header = " ".join(right if entry == "RIGHT" else entry for entry in signatures)
    assert _guard().check(_headers() | {"webhook-signature": header}, BODY) is None
    without_it = " ".join(entry for entry in signatures if entry != "RIGHT")
    failure = _guard().check(_headers() | {"webhook-signature": without_it}, BODY)
    _refused(failure, "No webhook-signature matches.")


def test_only_v1_signatures_count() -> None:
    right = _headers()["webhook-signature"].removeprefix("v1,")
    for version in ("v2", "v1a", "V1", ""):
        failure = _guard().check(_headers() | {"webhook-signature": f"{version},{right}"}, BODY)
        _refused(failure, "No webhook-signature matches.")


def test_several_secrets_let_us_rotate() -> None:
    both = ProviderAuth(
        method="standard_webhooks", secret=Secret(f"{_whsec(KEY)}  {_whsec(OLD_KEY)}")
    )
    assert _guard(both).check(_headers(keys=(OLD_KEY,)), BODY) is None
    assert _guard(both).check(_headers(keys=(KEY,)), BODY) is None
    _refused(_guard(both).check(_headers(keys=(b"x" * 32,)), BODY), "No webhook-signature")
    _refused(_guard().check(_headers(keys=(OLD_KEY,)), BODY), "No webhook-signature")


@pytest.mark.parametrize(
    ("at", "detail"),
    [
        (NOW - TOLERANCE - 1, "The webhook-timestamp is 301 s old; at most 300 s are accepted."),
        (NOW + TOLERANCE + 1, "The webhook-timestamp is 301 s ahead; at most 300 s are accepted."),
        (NOW - 86_400, "86400 s old"),
        (0, "1700000000 s old"),
    ],
)
def test_stale_and_future_timestamps_are_refused(at: int, detail: str) -> None:
    _refused(_guard().check(_headers(at=at), BODY), detail)


@pytest.mark.parametrize("at", [NOW - TOLERANCE, NOW + TOLERANCE, NOW - 1, NOW + 1])
def test_timestamps_within_the_tolerance_are_accepted(at: int) -> None:
    assert _guard().check(_headers(at=at), BODY) is None


def test_the_tolerance_is_a_setting() -> None:
    strict = ProviderAuth(method="standard_webhooks", secret=Secret(_whsec(KEY)), tolerance_s=10)
    assert _guard(strict).check(_headers(at=NOW - 10), BODY) is None
    _refused(_guard(strict).check(_headers(at=NOW - 11), BODY), "11 s old; at most 10 s")
    _refused(_guard(strict).check(_headers(at=NOW + 11), BODY), "11 s ahead; at most 10 s")


@pytest.mark.parametrize(
    "timestamp", ["1700000000.5", "-1700000000", "1.7e9", " 1700000000", "0x6553f100",
                  "\uff11\uff17" + "\uff10" * 8, "1_700_000_000", "9" * 5000],
)  # fmt: skip
def test_a_timestamp_that_is_not_whole_seconds_is_refused(timestamp: str) -> None:
    headers = _headers() | {"webhook-timestamp": timestamp}
    _refused(_guard().check(headers, BODY), "not Unix time in whole seconds")


@pytest.mark.parametrize("missing", ["webhook-id", "webhook-timestamp", "webhook-signature"])
def test_missing_headers_are_refused(missing: str) -> None:
    without = {name: value for name, value in _headers().items() if name != missing}
    _refused(_guard().check(without, BODY), f"Missing or empty: {missing}.")
    _refused(_guard().check(_headers() | {missing: ""}, BODY), f"Missing or empty: {missing}.")
    _refused(_guard().check({}, BODY), "webhook-id, webhook-timestamp, webhook-signature.")


def test_an_id_of_any_bytes_is_signed_as_sent() -> None:
    """aiohttp hands header bytes that are not UTF-8 over as surrogate escapes."""
    signed = b"msg_\xff." + str(NOW).encode() + b"." + BODY
    signature = "v1," + base64.b64encode(hmac.digest(KEY, signed, "sha256")).decode()
    headers = _headers() | {"webhook-id": "msg_\udcff", "webhook-signature": signature}
    assert _guard().check(headers, BODY) is None


def test_an_id_with_a_full_stop_is_refused_even_when_signed() -> None:
    headers = _headers(webhook_id=f"msg_1.{NOW}")
    _refused(_guard().check(headers, BODY), "The webhook-id contains a full stop.")


def test_a_replay_within_the_tolerance_is_refused() -> None:
    clock = Clock()
    guard = _guard(clock=clock)
    assert guard.check(_headers(), BODY) is None
    _refused(guard.check(_headers(), BODY), "accepted already", status=409)
    clock.now = NOW + TOLERANCE  # the last second the timestamp is accepted
    _refused(guard.check(_headers(), BODY), "accepted already", status=409)
    # The same id, signed anew (a sender's retry of a webhook that was taken), is refused too.
    _refused(guard.check(_headers(at=NOW + 60), BODY), "accepted already", status=409)
    assert guard.check(_headers(webhook_id="msg_2"), BODY) is None  # other ids are not
    clock.now = NOW + TOLERANCE + 1  # from now on the replay is refused for its timestamp
    _refused(guard.check(_headers(), BODY), "301 s old")


def test_accepted_ids_are_forgotten_once_their_timestamp_is_out_of_the_tolerance() -> None:
    clock = Clock()
    webhooks = StandardWebhooks([KEY], TOLERANCE, clock)
    for n in range(100):
        assert webhooks.check(_headers(webhook_id=f"msg_{n}"), BODY) is None
    ahead = _headers(webhook_id="msg_ahead", at=NOW + TOLERANCE)  # a sender's clock ahead
    assert webhooks.check(ahead, BODY) is None
    assert len(webhooks) == 101
    clock.now = NOW + TOLERANCE + 1
    assert webhooks.check(_headers(webhook_id="msg_0", at=NOW + TOLERANCE), BODY) is None
    assert len(webhooks) == 2  # msg_0 signed anew, and msg_ahead, whose replay is still fresh
    _refused(webhooks.check(ahead, BODY), "accepted already", status=409)
    clock.now = NOW + 3 * TOLERANCE + 1
    assert webhooks.check(_headers(webhook_id="msg_ahead", at=NOW + 3 * TOLERANCE), BODY) is None
    assert len(webhooks) == 1


def test_a_wrong_signature_does_not_use_up_the_id() -> None:
    guard = _guard()
    for refused in (_headers(keys=(b"guess",)), _headers(BODY + b" "), _headers(at=NOW - 999)):
        assert guard.check(refused, BODY) is not None
    assert guard.check(_headers(), BODY) is None


def test_a_released_id_may_be_sent_again() -> None:
    guard = _guard()
    assert guard.check(_headers(), BODY) is None
    guard.release(_headers())
    assert guard.check(_headers(), BODY) is None
    _refused(guard.check(_headers(), BODY), "accepted already", status=409)


def test_ids_are_kept_per_provider() -> None:
    both = guards({"wavecell": AUTH, "voice_messaging": AUTH}, PROVIDERS, Clock())
    assert both["wavecell"].check(_headers(), BODY) is None
    assert both["voice_messaging"].check(_headers(), BODY) is None


@pytest.mark.parametrize(
    ("auth", "message"),
    [
        (ProviderAuth(method="standard_webhooks"), "AUTH__WAVECELL__SECRET: required"),
        (ProviderAuth(method="standard_webhooks", secret=Secret("s3cret-key")),
         "AUTH__WAVECELL__SECRET: secret 1 of 1 is not whsec_ followed by the base64 of a key"),
        (ProviderAuth(method="standard_webhooks", secret=Secret(f"{_whsec(KEY)} whsec_s3cret!")),
         "AUTH__WAVECELL__SECRET: secret 2 of 2 is not whsec_"),
        (ProviderAuth(method="standard_webhooks", secret=Secret("whsec_")),
         "AUTH__WAVECELL__SECRET: secret 1 of 1"),
        (ProviderAuth(method="standard_webhooks", secret=Secret(_whsec(KEY)), tolerance_s=0),
         "AUTH__WAVECELL__TOLERANCE_S: must be at least 1 second"),
    ],
)  # fmt: skip
def test_bad_standard_webhooks_settings_are_refused(auth: ProviderAuth, message: str) -> None:
    with pytest.raises(SettingsError, match=message) as refused:
        guards({"wavecell": auth}, PROVIDERS)
    assert "s3cret" not in str(refused.value)


def test_the_settings_come_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    unpadded = _whsec(OLD_KEY).rstrip("=")
    for field, value in [
        ("METHOD", "standard_webhooks"),
        ("SECRET", f"{_whsec(KEY)} {unpadded}"),
        ("TOLERANCE_S", "60"),
    ]:
        monkeypatch.setenv(f"CALLSTREAM_INGRESS__AUTH__WAVECELL__{field}", value)
    settings = load(IngressSettings, "ingress")
    assert settings.auth["wavecell"].tolerance_s == 60
    guard = _guard(settings.auth["wavecell"])
    assert guard.check(_headers(keys=(OLD_KEY,), webhook_id="msg_old"), BODY) is None
    assert guard.check(_headers(keys=(KEY,), webhook_id="msg_new"), BODY) is None
    _refused(guard.check(_headers(at=NOW - 61), BODY), "61 s old; at most 60 s")


async def _answer(response: ClientResponse, status: int, error: str | None = None) -> None:
    assert response.status == status
    if error is not None:
        assert response.content_type == "application/json"
        assert (await response.json())["error"] == error
        assert "WWW-Authenticate" not in response.headers


async def test_the_app_accepts_a_webhook_once(ingress: StartIngress, kafka: KafkaSettings) -> None:
    clock = Clock()
    async with ingress(auth={"wavecell": AUTH}, clock=clock) as client:
        # Header names are case-insensitive in HTTP; the sender may spell them as it likes.
        spelled = {name.title(): value for name, value in _headers().items()}
        await _answer(await client.post(CALLBACK, data=BODY, headers=spelled), 202)
        await _answer(await client.post(CALLBACK, data=BODY, headers=_headers()), 409, "replayed")
        for refused in (_headers(keys=(OLD_KEY,), webhook_id="msg_2"), {}):
            response = await client.post(CALLBACK, data=BODY, headers=refused)
            await _answer(response, 401, "unauthorized")
        clock.now = NOW + 1
        await _answer(await client.post(CALLBACK, data=BODY, headers=_headers()), 409, "replayed")
        clock.now = NOW + TOLERANCE + 1
        await _answer(await client.post(CALLBACK, data=BODY, headers=_headers()), 401)
    raws = await kafka_io.read_all(kafka, topics.RAW)
    assert [record.value for record in raws] == [BODY]


async def test_a_webhook_that_is_not_taken_may_be_sent_again(
    ingress: StartIngress, kafka: KafkaSettings
) -> None:
    """Its id is given back: the sender's retry is not a replay (here the body is refused 400,
    and so is its retry, rather than 409)."""
    async with ingress(auth={"wavecell": AUTH}, clock=Clock()) as client:
        for _ in range(2):
            response = await client.post(CALLBACK, data=b"[]", headers=_headers(b"[]"))
            await _answer(response, 400, "invalid_body")
    dead = await kafka_io.read_all(kafka, topics.DLQ)
    assert [record.value for record in dead] == [b"[]", b"[]"]


async def test_failed_checks_count_toward_the_lockout_and_nothing_secret_is_logged(
    ingress: StartIngress, kafka: KafkaSettings, capsys: pytest.CaptureFixture[str]
) -> None:
    configure_logging(json=True)
    refused = [
        (_headers(keys=(OLD_KEY,), webhook_id="msg_guess"), 401),
        (_headers(at=NOW - 3600, webhook_id="msg_stale"), 401),
        (_headers(), 409),  # a replay of the one accepted first
    ]
    settings = {"auth_failures": len(refused), "auth_window_s": 60}
    async with ingress(auth={"wavecell": AUTH}, clock=Clock(), **settings) as client:
        await _answer(await client.post(CALLBACK, data=BODY, headers=_headers()), 202)
        for headers, status in refused:
            await _answer(await client.post(CALLBACK, data=BODY, headers=headers), status)
        right = _headers(webhook_id="msg_right")
        await _answer(await client.post(CALLBACK, data=BODY, headers=right), 429)
    logged = capsys.readouterr().err
    lines = [json.loads(line) for line in logged.splitlines()]
    failures = [line for line in lines if line["event"] == "request_unauthenticated"]
    assert [line["error"] for line in failures] == ["unauthorized", "unauthorized", "replayed"]
    assert sum(line["event"] == "callback_sender_locked_out" for line in lines) == 1
    secrets = [_whsec(KEY), _whsec(KEY).removeprefix("whsec_"), KEY.decode()]
    signatures = [h["webhook-signature"].removeprefix("v1,") for h, _ in refused]
    assert not any(secret in logged for secret in secrets + signatures)
    assert [record.value for record in await kafka_io.read_all(kafka, topics.RAW)] == [BODY]
