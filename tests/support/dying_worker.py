"""A real worker process that dies (os._exit, no cleanup) right after its first insert,
before acknowledging: what a SIGKILL or OOM kill at the worst moment leaves behind.

Run: python -m tests.support.dying_worker  (store URLs from OA_* variables)
"""

from __future__ import annotations

import asyncio
import os

from openanalytics.config import Settings
from openanalytics.runtime import Stores
from openanalytics.worker.runner import Worker


async def main() -> None:
    stores = Stores.open(Settings())
    worker = Worker(stores)

    async def die(message_ids):
        os._exit(137)

    worker.flusher.ack = die
    await worker.drain()
    os._exit(1)  # nothing to insert: not the scenario the test wants


if __name__ == "__main__":
    asyncio.run(main())
