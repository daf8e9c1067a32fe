"""Checks for text from requests that the control plane stores.

PostgreSQL text cannot hold a NUL character: one in a name or user id must be a clear 400,
not a database error.
"""

from __future__ import annotations

from pydantic import AfterValidator


def _no_nul(value: str) -> str:
    if "\x00" in value:
        raise ValueError("must not contain a NUL character")
    return value


StoredText = AfterValidator(_no_nul)
