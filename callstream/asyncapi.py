"""The AsyncAPI 3.0 document of callstream's topics, generated from the contract's Structs.

`callstream asyncapi` prints it; docs/asyncapi.json is its committed copy (a test keeps the two
equal), so downstream teams can generate clients or browse the topics.
"""

from __future__ import annotations

from typing import Any

from schemas import CallEvent, SessionRecord, documents, topics
from schemas.documents import json_schema_components
from schemas.records import Alert, Checkpoint, Track
from schemas.topics import Stage

_REF = "#/components/schemas/{name}"
_STRING = {"type": "string"}
_CLOUDEVENTS = {
    "type": "object",
    "description": "CloudEvents 1.0 Kafka binary-mode headers.",
    "properties": dict.fromkeys(
        ("ce_specversion", "ce_id", "ce_source", "ce_type", "ce_time", "content-type"), _STRING
    ),
    "required": ["ce_specversion", "ce_id", "ce_source", "ce_type", "content-type"],
}
_RAW_HEADERS = {
    "type": "object",
    "properties": {
        topics.PROVIDER: {**_STRING, "description": "Provider id, e.g. wavecell."},
        topics.SOURCE: {**_STRING, "enum": ["webhook", "poll"]},
        topics.RECEIVED_AT: {**_STRING, "format": "date-time"},
        topics.REQUEST_ID: _STRING,
        topics.CONTENT_TYPE: _STRING,
        topics.CONTEXT: {
            **_STRING,
            "description": "JSON object of pull context, e.g. callSerialNo.",
        },
    },
    "required": [topics.PROVIDER, topics.SOURCE, topics.RECEIVED_AT],
}
_DLQ_HEADERS = {
    **_RAW_HEADERS,
    "properties": {
        **_RAW_HEADERS["properties"],
        topics.ERROR_STAGE: {
            **_STRING,
            "enum": [stage.value for stage in Stage],
            "description": "Where it failed; `redriven` marks a letter redriven successfully "
            "(an empty record that follows it up).",
        },
        topics.ERROR: {**_STRING, "description": "Why it failed: provider, field path, reason."},
        topics.REDRIVE_OF: {
            **_STRING,
            "description": "partition:offset of the dead letter this record follows up.",
        },
    },
    "required": [*_RAW_HEADERS["required"], topics.ERROR_STAGE, topics.ERROR],
}
_RAW_BODY = {"description": "The body exactly as the provider sent it (bytes; usually JSON)."}
_NO_HEADERS: dict[str, Any] = {"type": "object"}

_MESSAGES: dict[str, tuple[str, str, dict[str, Any], dict[str, Any], str]] = {
    # topic: (message name, key, payload schema, headers schema, what it is)
    topics.RAW: ("RawReport", "none", _RAW_BODY, _RAW_HEADERS, "A provider report as received."),
    topics.EVENTS: ("CallEvent", "session_key", {"$ref": _REF.format(name="CallEvent")},
                    _CLOUDEVENTS, "One leg of one provider report, in the canonical vocabulary."),
    topics.SESSIONS: ("SessionRecord", "session_key", {"$ref": _REF.format(name="SessionRecord")},
                      _CLOUDEVENTS, "The latest state of one call (compacted by key)."),
    topics.ALERTS: ("Alert", "rule:scope", {"$ref": _REF.format(name="Alert")}, _CLOUDEVENTS,
                    "A KPI alert rule starting or ending an episode."),
    topics.DLQ: ("DeadLetter", "the failed record's", _RAW_BODY, _DLQ_HEADERS,
                 "A record that could not be processed, with where and why."),
    topics.TRACK: ("TrackedCall", "callSerialNo", {"$ref": _REF.format(name="Track")},
                   _NO_HEADERS, "A mobile_agent call to poll, and the last state published for "
                   "it (compacted; a tombstone ends its tracking)."),
    topics.CHECKPOINTS: ("Checkpoint", "provider:account",
                         {"$ref": _REF.format(name="Checkpoint")}, _NO_HEADERS,
                         "How far a poller has read an account's calls (compacted)."),
}  # fmt: skip


def document() -> dict[str, Any]:
    _, schemas = json_schema_components(
        [CallEvent, SessionRecord, Alert, Track, Checkpoint], ref_template=_REF
    )
    return {
        "asyncapi": "3.0.0",
        "info": {
            "title": "callstream",
            "version": "1",
            "description": "Canonical call events from many voice providers (contract version 1).",
        },
        "servers": {
            "embedded": {
                "host": "127.0.0.1:9092",
                "protocol": "kafka",
                "description": "callstream up",
            },
            "compose": {"host": "kafka:9092", "protocol": "kafka", "description": "docker compose"},
        },
        "channels": {
            topic: {
                "address": topic,
                "description": what,
                "messages": {name: {"$ref": f"#/components/messages/{name}"}},
                "bindings": {"kafka": {"topicConfiguration": {"cleanup.policy": ["compact"]}}}
                if topic in topics.CONFIGS
                else {},
            }
            for topic, (name, _, _, _, what) in _MESSAGES.items()
        },
        "components": {
            "messages": {
                name: {
                    "name": name,
                    "contentType": "application/json",
                    "payload": payload,
                    "headers": headers,
                    "bindings": {"kafka": {"key": {**_STRING, "description": f"Key: {key}."}}},
                }
                for name, key, payload, headers, _ in _MESSAGES.values()
            },
            "schemas": schemas,
        },
    }


def render() -> bytes:
    return documents.render(document())
