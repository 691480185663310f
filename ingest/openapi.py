"""The ingress's own OpenAPI 3.1 document, served at GET /openapi.json.

It lists every route with every status it can answer, so that a client generator or a fuzzer
(tests/ingest/test_openapi.py runs schemathesis against it, and fails on any answer not listed
here) knows what to expect. A new route is one entry in `document()`'s paths, its responses
built by `_answers()` from its success and its refusal statuses. REFUSALS says once what each
refusal status means and which `error` codes its body may carry: a route that refuses with a new
code adds it there. Request and answer bodies are msgspec Structs, added to
`schema_components` and referred to by name (`_json`).
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Annotated, Any

import msgspec

_REF = "#/components/schemas/{name}"


class ErrorBody(msgspec.Struct):
    """Every refusal's body."""

    error: str
    """A short code for machines, e.g. invalid_body."""
    detail: str
    """One sentence for a person."""


class Accepted(msgspec.Struct):
    """A callback written to calls.raw."""

    id: str
    """The record's cs-request-id header in calls.raw."""


class Registration(msgspec.Struct):
    """A call to poll (POST /v1/track/{provider}), and the answer once it is on calls.track."""

    callSerialNo: Annotated[str, msgspec.Meta(min_length=1, max_length=50)]  # noqa: N815


class Probe(msgspec.Struct):
    status: str


REFUSALS: dict[int, tuple[str, tuple[str, ...]]] = {
    400: ("The body is not a UTF-8 JSON object (callbacks) or not a registration (track); it is "
          "kept in calls.dlq with stage ingress or track.", ("invalid_body",)),
    401: ("The credentials are missing or wrong (WWW-Authenticate for bearer and basic); for "
          "standard_webhooks also a webhook-timestamp outside the tolerance.", ("unauthorized",)),
    403: ("The caller's address is outside the provider's allow-list.", ("forbidden",)),
    404: ("No such provider for the route, or no such path.", ("unknown_provider", "not_found")),
    405: ("The path does not take this method; Allow lists those it takes.",
          ("method_not_allowed",)),
    408: ("The body did not arrive within INGRESS__BODY_TIMEOUT_S; the connection is closed.",
          ("body_timeout",)),
    409: ("standard_webhooks: this webhook-id was accepted already within the tolerance (a "
          "replay); the signature is right, so this is not a credentials problem. Counts toward "
          "the lockout like a 401.", ("replayed",)),
    413: ("The body exceeds INGRESS__MAX_BODY_BYTES.", ("body_too_large",)),
    429: ("The caller's address failed authentication INGRESS__AUTH_FAILURES times within "
          "INGRESS__AUTH_WINDOW_S; try again after Retry-After seconds.", ("too_many_failures",)),
    503: ("The broker did not take the callback in time, or does not answer (broker_unavailable),"
          " or the bodies waiting for it fill INGRESS__MAX_PENDING_BYTES (overloaded, answered at"
          " once); try again after Retry-After seconds.",
          ("broker_unavailable", "overloaded", "not_ready")),
}  # fmt: skip
"""Status → (what it means, the `error` codes its body may carry)."""

_HEADERS = {
    401: {"WWW-Authenticate": {"schema": {"type": "string"}}},
    405: {"Allow": {"required": True, "schema": {"type": "string"}}},
    429: {"Retry-After": {"required": True, "schema": {"type": "string", "pattern": "^[0-9]+$"}}},
    503: {"Retry-After": {"schema": {"type": "string", "pattern": "^[0-9]+$"}}},
}


def document(providers: Iterable[str], tracked: Iterable[str]) -> dict[str, Any]:
    """The document for an ingress serving callbacks of `providers` and registrations of calls
    of `tracked` providers."""
    _, schemas = msgspec.json.schema_components(
        [ErrorBody, Accepted, Registration, Probe], ref_template=_REF
    )
    return {
        "openapi": "3.1.0",
        "info": {
            "title": "callstream ingress",
            "version": "1",
            "description": "Provider callbacks into calls.raw. Every refusal is a JSON ErrorBody.",
        },
        "paths": {
            "/v1/callbacks/{provider}": {"post": _callback(sorted(providers))},
            "/v1/track/{provider}": {"post": _track(sorted(tracked))},
            "/healthz": {"get": _probe("The process is up.")},
            "/readyz": {
                "get": _probe(
                    "The broker answers (asked at most once a second); with several workers, "
                    "every worker's.",
                    (503,),
                )
            },
            "/metrics": {"get": _metrics()},
            "/openapi.json": {"get": _itself()},
        },
        "components": {"schemas": schemas},
    }


def _callback(providers: list[str]) -> dict[str, Any]:
    return {
        "operationId": "callback",
        "summary": "A provider's call-status callback.",
        "description": "The body goes unchanged to calls.raw; 202 only once the broker has "
        "acknowledged it. Content-Type is recorded, not trusted: the body must be a UTF-8 JSON "
        "object. Authentication is per provider (INGRESS__AUTH__<PROVIDER>__METHOD): a bearer "
        "token, basic credentials, an HMAC-SHA256 of the body in a header, or Standard Webhooks "
        "(webhook-id, webhook-timestamp in Unix seconds, webhook-signature: space-separated "
        "v1,<base64 HMAC-SHA256 of {id}.{timestamp}.{body}>), whose timestamp must be within "
        "the tolerance and whose id is accepted once.",
        "parameters": [_provider(providers)],
        "requestBody": {
            "required": True,
            "content": {
                "application/json": {
                    "schema": {"type": "object", "description": "The provider's own report."}
                }
            },
        },
        "responses": _answers(
            _success("Written to calls.raw.", Accepted), _POST_REFUSALS, status=202
        ),
    }


def _track(providers: list[str]) -> dict[str, Any]:
    return {
        "operationId": "track",
        "summary": "Register a call for its poller to follow until it ends.",
        "description": "The registration goes to calls.track (compacted, key callSerialNo); 202 "
        "only once the broker has acknowledged it. Registering a call twice is harmless. "
        "Authentication as for callbacks, with the provider's own credentials.",
        "parameters": [_provider(providers)],
        "requestBody": {"required": True, "content": _json("Registration")},
        "responses": _answers(
            _success("Written to calls.track.", Registration), _POST_REFUSALS, status=202
        ),
    }


_POST_REFUSALS = (400, 401, 403, 404, 405, 408, 409, 413, 429, 503)


def _provider(providers: list[str]) -> dict[str, Any]:
    return {
        "name": "provider",
        "in": "path",
        "required": True,
        "schema": {"type": "string", "enum": providers},
    }


def _probe(summary: str, refusals: tuple[int, ...] = ()) -> dict[str, Any]:
    return {"summary": summary, "responses": _answers(_success(summary, Probe), (405, *refusals))}


def _metrics() -> dict[str, Any]:
    text = {"text/plain": {"schema": {"type": "string"}}}
    return {
        "summary": "Prometheus metrics: callbacks by provider and status, publish latency, "
        "callbacks in flight.",
        "responses": _answers({"description": "Prometheus text format.", "content": text}, (405,)),
    }


def _itself() -> dict[str, Any]:
    document = {"application/json": {"schema": {"type": "object"}}}
    return {
        "summary": "This document.",
        "responses": _answers({"description": "OpenAPI 3.1.", "content": document}, (405,)),
    }


def _success(description: str, body: type) -> dict[str, Any]:
    return {"description": description, "content": _json(body.__name__)}


def _answers(
    success: dict[str, Any], refusals: tuple[int, ...], status: int = 200
) -> dict[str, Any]:
    """The responses of a route: its success and its refusals, each with its JSON body."""
    answers = {str(status): success}
    for refusal in refusals:
        meaning, errors = REFUSALS[refusal]
        answers[str(refusal)] = {
            "description": meaning,
            "content": _json("ErrorBody", {"properties": {"error": {"enum": list(errors)}}}),
            **({"headers": _HEADERS[refusal]} if refusal in _HEADERS else {}),
        }
    return answers


def _json(name: str, narrowed: dict[str, Any] | None = None) -> dict[str, Any]:
    schema: dict[str, Any] = {"$ref": _REF.format(name=name)}
    if narrowed:
        schema = {"allOf": [schema, narrowed]}
    return {"application/json": {"schema": schema}}


def render(providers: Iterable[str], tracked: Iterable[str]) -> bytes:
    return msgspec.json.encode(document(providers, tracked))
