"""The ingest buffer: a Redis Stream of rows waiting for the worker."""

from __future__ import annotations

from typing import Any

import orjson
import redis.asyncio as aioredis
from redis.exceptions import RedisError

FIELD = b"e"


class BufferUnavailable(Exception):
    """The stream cannot be written; nothing was queued."""


async def append(redis: aioredis.Redis, stream: str, rows: list[dict[str, Any]]) -> None:
    if not rows:
        return
    try:
        # One transaction: a request's events are queued all together or not at all.
        async with redis.pipeline(transaction=True) as pipe:
            for row in rows:
                pipe.xadd(stream, {FIELD: orjson.dumps(row)})
            await pipe.execute()
    except (RedisError, OSError) as exc:
        raise BufferUnavailable(str(exc)) from exc
