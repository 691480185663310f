"""The root error type; `retriable` says whether trying the same thing again can succeed."""

from __future__ import annotations

from typing import ClassVar


class CallstreamError(Exception):
    retriable: ClassVar[bool] = False


class NormalizeError(CallstreamError):
    """A raw report that cannot become canonical events: says which provider, where and why.

    `verdict` reads `provider: $.json.path: reason`, e.g. `mobile_agent: $.result.state: wrong
    type`, in callstream's own words: it is what a provider is told and what a dead letter says,
    and no library upgrade changes it. The message is the verdict, followed by `detail` (a
    library's own explanation, e.g. "Expected `int`, got `str`") in parentheses when there is one.
    """

    def __init__(self, provider: str, path: str, reason: str, detail: str = "") -> None:
        self.verdict = f"{provider}: {path}: {reason}"
        super().__init__(f"{self.verdict} ({detail})" if detail else self.verdict)
        self.provider = provider
        self.path = path
        self.reason = reason
        self.detail = detail


class Unavailable(CallstreamError):  # noqa: N818 - a condition, like runtime.Transient
    """Something callstream needs is not there or does not answer: the broker, a store, a port
    to listen on. The command line exits 3 on it; a service under `up` is restarted."""

    retriable: ClassVar[bool] = True
