"""Bearer tokens a fake API issues, with a lifetime, and checks."""

from __future__ import annotations

import secrets
import time


class Tokens:
    def __init__(self, ttl_s: float) -> None:
        self.ttl_s = ttl_s
        self._expires: dict[str, float] = {}
        self.issued = 0

    def issue(self) -> str:
        now = time.monotonic()
        self._expires = {token: at for token, at in self._expires.items() if at > now}
        token = secrets.token_hex(16)
        self._expires[token] = now + self.ttl_s
        self.issued += 1
        return token

    def valid(self, authorization: str) -> bool:
        """Whether `authorization` (the header) is `Bearer <a token issued and not expired>`."""
        scheme, _, token = authorization.partition(" ")
        expires = self._expires.get(token.strip())
        return scheme.lower() == "bearer" and expires is not None and expires > time.monotonic()

    def revoke(self, authorization: str) -> None:
        self._expires.pop(authorization.partition(" ")[2].strip(), None)
