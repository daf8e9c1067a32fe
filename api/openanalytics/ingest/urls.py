"""URL splitting, cached: a site's pages and referrers repeat, and urlsplit is not free."""

from __future__ import annotations

import re
from functools import lru_cache
from urllib.parse import SplitResult, urlsplit

# Browsers percent-encode these; raw in a URL they are not one (a NUL would be stored in a path).
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")


def has_control(text: str) -> bool:
    return _CONTROL.search(text) is not None


@lru_cache(maxsize=4096)
def split_url(url: str) -> SplitResult:
    return urlsplit(url)


@lru_cache(maxsize=4096)
def is_absolute_http(url: str) -> bool:
    if has_control(url):
        return False
    try:
        parts = split_url(url)
    except ValueError:  # e.g. "http://[x": not a URL at all
        return False
    return parts.scheme in ("http", "https") and bool(parts.hostname)
