"""The root error type; `retriable` says whether trying the same thing again can succeed."""

from __future__ import annotations

from typing import ClassVar


class CallstreamError(Exception):
    retriable: ClassVar[bool] = False


class NormalizeError(CallstreamError):
    """A raw report that cannot become canonical events: says which provider, where and why.

    The message reads `provider: $.json.path: reason`, e.g.
    `mobile_agent: $.result.state: expected int, got str`.
    """

    def __init__(self, provider: str, path: str, reason: str) -> None:
        super().__init__(f"{provider}: {path}: {reason}")
        self.provider = provider
        self.path = path
        self.reason = reason
