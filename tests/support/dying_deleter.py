"""A real worker process that dies (os._exit, no cleanup) in the middle of a privacy deletion:
after it claimed the request and cleaned the stream, before ClickHouse. Its lease is one
second, so the test need not wait minutes for the next worker to take over.

Run: python -m tests.support.dying_deleter  (store URLs from OA_* variables)
"""

from __future__ import annotations

import asyncio
import os
from datetime import timedelta

from openanalytics.config import Settings
from openanalytics.runtime import Stores
from openanalytics.worker.runner import Worker


async def main() -> None:
    stores = Stores.open(Settings())
    worker = Worker(stores)
    worker.deleter.lease = timedelta(seconds=1)

    def die(project_id):  # called once the stream is clean, before the stored events are touched
        os._exit(137)

    worker.deleter._table = die
    await worker.deleter.run_once()
    os._exit(1)  # no request was due: not the scenario the test wants


if __name__ == "__main__":
    asyncio.run(main())
