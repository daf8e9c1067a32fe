"""Identifiers: random, URL-safe, with a readable type prefix."""

from __future__ import annotations

import secrets
import string

BASE62 = string.digits + string.ascii_letters


def random_base62(length: int) -> str:
    return "".join(secrets.choice(BASE62) for _ in range(length))


def new_id(prefix: str) -> str:
    return f"{prefix}_{secrets.token_hex(8)}"


def id_pattern(prefix: str) -> str:
    """What ids made by `new_id(prefix)` look like (for path parameters)."""
    return rf"^{prefix}_[0-9a-f]{{16}}$"
