"""What the /collect hits of one client share while the day's salts stay the same.

A client is what sent a hit: its peer address and X-Forwarded-For, User-Agent and
Accept-Language. Its address, the tag of its per-IP budget and its visitor ids (keyed hashes)
come out the same for each of its hits, so they are worked out once. Everything here is kept
in memory only, and all of it goes when the salts change (at midnight, and when the day
before's salt stops counting), by a timer if no hit comes then: nothing made with a salt
outlives the salt's day.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable

from openanalytics.auth.ratelimit import client_tag
from openanalytics.ingest.client_ip import Networks, client_ip
from openanalytics.ingest.visitor import anonymise_ip, visitor_hash

MAX_USER_AGENT = 512  # longer ones are cut before parsing and hashing (no browser sends more)
MAX_CLIENTS = 20_000  # past it the clients are forgotten and worked out again


class Client:
    __slots__ = ("ip", "user_agent", "accept_language", "salt", "previous_salt", "budget_tag", "visitors")

    def __init__(self, ip: str, user_agent: str, accept_language: str, salt: bytes, previous_salt: bytes | None):
        self.ip = ip
        self.user_agent = user_agent[:MAX_USER_AGENT]
        self.accept_language = accept_language
        self.salt = salt  # the day's; and yesterday's just after midnight (a session may go on)
        self.previous_salt = previous_salt
        self.budget_tag = client_tag(ip, salt)  # names the client's per-IP budget in Redis
        self.visitors: dict[str, tuple[int, int | None]] = {}  # per project: today's, yesterday's

    def visitors_in(self, project_id: str) -> tuple[int, int | None]:
        """The client's visitor in the project: today's and, just after midnight, yesterday's (its
        session may go on)."""
        visitors = self.visitors.get(project_id)
        if visitors is None:
            anon = anonymise_ip(self.ip)
            previous = None
            if self.previous_salt is not None:
                previous = visitor_hash(self.previous_salt, project_id, self.user_agent, self.accept_language, anon)
            today = visitor_hash(self.salt, project_id, self.user_agent, self.accept_language, anon)
            self.visitors[project_id] = visitors = (today, previous)
        return visitors


class Clients:
    def __init__(self, trusted_proxies: Networks, salts_end: Callable[[int], int]):
        """`salts_end(ms)`: when the salts of a hit received at `ms` stop being a hit's (epoch ms)."""
        self.trusted_proxies = trusted_proxies
        self.salts_end = salts_end
        self._salts: tuple[bytes, bytes | None] = (b"", None)
        self._known: dict[tuple[str, str | None, str, str], Client] = {}
        self._timer: asyncio.TimerHandle | None = None

    def of(self, salt: bytes, previous_salt: bytes | None, peer: str, headers: dict[str, str],
           received_ms: int) -> Client:
        """The client of a hit received at `received_ms` (epoch ms) with these salts."""
        if (salt, previous_salt) != self._salts or len(self._known) >= MAX_CLIENTS:
            self.forget()
            self._salts = (salt, previous_salt)
            self._forget_at_end(received_ms)
        forwarded_for = headers.get("x-forwarded-for")
        user_agent, accept_language = headers.get("user-agent", ""), headers.get("accept-language", "")
        key = (peer, forwarded_for, user_agent, accept_language)
        client = self._known.get(key)
        if client is None:
            ip = client_ip(peer, forwarded_for, self.trusted_proxies)
            self._known[key] = client = Client(ip, user_agent, accept_language, salt, previous_salt)
        return client

    def forget(self) -> None:
        self._known.clear()
        self._salts = (b"", None)
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    def _forget_at_end(self, received_ms: int) -> None:
        """In a running loop, forget when these salts stop being a hit's, whether or not a hit comes then."""
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            return
        self._timer = loop.call_later(max(0, self.salts_end(received_ms) - received_ms) / 1000, self.forget)
