"""URL splitting, cached: a site's pages and referrers repeat, and urlsplit is not free."""

from __future__ import annotations

from functools import lru_cache
from urllib.parse import SplitResult, urlsplit


@lru_cache(maxsize=4096)
def split_url(url: str) -> SplitResult:
    return urlsplit(url)


@lru_cache(maxsize=4096)
def is_absolute_http(url: str) -> bool:
    try:
        parts = split_url(url)
    except ValueError:  # e.g. "http://[x": not a URL at all
        return False
    return parts.scheme in ("http", "https") and bool(parts.hostname)
