"""The browser tracker `oa.js`, served minified with an ETag."""

from __future__ import annotations

import gzip
import hashlib
import re
from functools import cache
from pathlib import Path

SOURCE = Path(__file__).with_name("oa.js")


def minify(source: str) -> str:
    """Strip comments (keeping the /*! banner) and indentation; the source stays readable in git."""
    banner = source.split("*/", 1)[0] + "*/\n" if source.startswith("/*!") else ""
    body = source[len(banner):] if banner else source
    body = re.sub(r"^\s*//.*$", "", body, flags=re.M)
    body = re.sub(r"\s//[^\n\"']*$", "", body, flags=re.M)
    lines = (line.strip() for line in body.splitlines())
    return banner + "\n".join(line for line in lines if line)


@cache
def script() -> tuple[bytes, str]:
    """The served bytes and their ETag."""
    data = minify(SOURCE.read_text()).encode()
    return data, '"' + hashlib.sha256(data).hexdigest()[:32] + '"'


@cache
def gzipped() -> bytes:
    """The served bytes compressed, for clients that accept gzip (mtime 0: the same bytes every start)."""
    return gzip.compress(script()[0], 9, mtime=0)


def gzipped_size() -> int:
    return len(gzipped())
