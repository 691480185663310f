"""The AsyncAPI 3.0 document of callstream's topics, generated from the contract's Structs.

`callstream asyncapi` prints it; docs/asyncapi.json is its committed copy (a test keeps the two
equal), so downstream teams can generate clients or browse the topics.
"""

from __future__ import annotations

from typing import Any

from schemas import CallEvent, SessionRecord, documents, topics
from schemas.documents import json_schema_components
from schemas.records import Alert, AlertSample, AlertState, AlertWatermark, Checkpoint, Track
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

_Message = tuple[str, str, dict[str, Any], dict[str, Any]]
"""(message name, key, payload schema, headers schema)"""


def _ref(name: str) -> dict[str, str]:
    return {"$ref": _REF.format(name=name)}


_CHANNELS: dict[str, tuple[str, tuple[_Message, ...]]] = {
    # topic: (what it is, its messages)
    topics.RAW: ("A provider report as received.",
                 (("RawReport", "none", _RAW_BODY, _RAW_HEADERS),)),
    topics.EVENTS: ("One leg of one provider report, in the canonical vocabulary.",
                    (("CallEvent", "session_key", _ref("CallEvent"), _CLOUDEVENTS),)),
    topics.SESSIONS: ("The latest state of one call (compacted by key).",
                      (("SessionRecord", "session_key", _ref("SessionRecord"), _CLOUDEVENTS),)),
    topics.ALERTS: ("A KPI alert rule starting or ending an episode.",
                    (("Alert", "rule:scope", _ref("Alert"), _CLOUDEVENTS),)),
    topics.ALERT_SAMPLES: (
        "The alert sink's repartition topic: final sessions as samples of their scopes, keyed by "
        "scope, and each calls.sessions partition's watermark, to every partition (internal).",
        (("AlertSample", "the scope, e.g. provider=wavecell,account=acc1", _ref("AlertSample"),
          _NO_HEADERS),
         ("AlertWatermark", "none", _ref("AlertWatermark"), _NO_HEADERS)),
    ),
    topics.ALERT_STATE: (
        "Where the alert windows of each calls.alerts.samples partition stand, in the same "
        "partition (internal, compacted).",
        (("AlertState", "the partition number", _ref("AlertState"), _NO_HEADERS),),
    ),
    topics.DLQ: ("A record that could not be processed, with where and why.",
                 (("DeadLetter", "the failed record's", _RAW_BODY, _DLQ_HEADERS),)),
    topics.TRACK: ("A mobile_agent call to poll, and the last state published for it "
                   "(compacted; a tombstone ends its tracking).",
                   (("TrackedCall", "callSerialNo", _ref("Track"), _NO_HEADERS),)),
    topics.CHECKPOINTS: ("How far a poller has read an account's calls (compacted).",
                         (("Checkpoint", "provider:account", _ref("Checkpoint"), _NO_HEADERS),)),
}  # fmt: skip


def document() -> dict[str, Any]:
    _, schemas = json_schema_components(
        [
            CallEvent,
            SessionRecord,
            Alert,
            AlertSample,
            AlertWatermark,
            AlertState,
            Track,
            Checkpoint,
        ],
        ref_template=_REF,
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
                "messages": {
                    name: {"$ref": f"#/components/messages/{name}"} for name, *_ in messages
                },
                "bindings": {"kafka": {"topicConfiguration": {"cleanup.policy": ["compact"]}}}
                if topic in topics.CONFIGS
                else {},
            }
            for topic, (what, messages) in _CHANNELS.items()
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
                for _, messages in _CHANNELS.values()
                for name, key, payload, headers in messages
            },
            "schemas": schemas,
        },
    }


def render() -> bytes:
    return documents.render(document())
