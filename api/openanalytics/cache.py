"""A tiny time-bounded cache: short lifetimes keep revocations visible within a second."""

from __future__ import annotations

import time
from typing import Generic, TypeVar

K = TypeVar("K")
V = TypeVar("V")


class TTLCache(Generic[K, V]):
    def __init__(self, ttl_seconds: float, max_items: int = 10_000):
        self.ttl = ttl_seconds
        self.max_items = max_items
        self._items: dict[K, tuple[float, V]] = {}
        # Bumped by clear(): a value loaded before an invalidation must not be cached after it.
        self.generation = 0

    def get(self, key: K) -> tuple[bool, V | None]:
        hit = self._items.get(key)
        if hit is None or hit[0] < time.monotonic():
            return False, None
        return True, hit[1]

    def peek(self, key: K) -> tuple[bool, V | None, bool]:
        """(found, value, fresh): unlike get, an entry past its lifetime is still handed out."""
        hit = self._items.get(key)
        if hit is None:
            return False, None, False
        return True, hit[1], hit[0] >= time.monotonic()

    def put(self, key: K, value: V, generation: int | None = None) -> None:
        if self.ttl <= 0 or (generation is not None and generation != self.generation):
            return
        self._items.pop(key, None)
        if len(self._items) >= self.max_items:
            del self._items[next(iter(self._items))]  # the oldest entry
        self._items[key] = (time.monotonic() + self.ttl, value)

    def clear(self) -> None:
        self._items.clear()
        self.generation += 1
