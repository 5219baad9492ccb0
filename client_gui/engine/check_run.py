"""What the passes of one check share: the vault, the cancel token, throttled progress, ranged
pack reads that count their bytes, and a bounded pool of workers.

It judges nothing and holds no findings (check_damage does); it never writes to the vault.
"""

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable, Iterable
from typing import TypeVar

from client_gui.engine.progress import CancelToken, CheckProgress, ProgressSink, Throttle
from client_gui.engine.vault import Vault
from shared.ids import ObjectKey

logger = logging.getLogger(__name__)
T = TypeVar("T")


class CheckRun:
    """One check in progress: where it reads, how it reports, and how much it has read."""

    def __init__(self, vault: Vault, *, sink: ProgressSink, cancel: CancelToken) -> None:
        self.vault = vault
        self.sink = sink
        self.cancel = cancel
        self.throttle = Throttle()
        self.start = time.monotonic()
        self.bytes_read = 0  # bytes read from packs (headers, trees, whole packs when asked)

    def progress(self, phase: str, done: int, total: int, *, force: bool = False) -> None:
        if force or self.throttle.ready():
            self.sink.progress(
                CheckProgress(
                    phase=phase, done=done, total=total, elapsed=time.monotonic() - self.start
                )
            )

    async def get(self, key: ObjectKey, offset: int, length: int) -> bytes:
        data = await self.vault.store.get(key, offset=offset, length=length)
        self.bytes_read += len(data)
        return data

    async def pool(
        self,
        items: Iterable[T],
        work: Callable[[T, Callable[[T], None]], Awaitable[None]],
        concurrency: int,
    ) -> None:
        """Run `work(item, push)` on every item with bounded concurrency; `push` adds items."""
        queue: asyncio.Queue[T] = asyncio.Queue()
        for item in items:
            queue.put_nowait(item)

        async def worker() -> None:
            while True:
                item = await queue.get()
                try:
                    self.cancel.check()
                    await work(item, queue.put_nowait)
                finally:
                    queue.task_done()

        try:
            async with asyncio.TaskGroup() as group:
                workers = [group.create_task(worker()) for _ in range(concurrency)]
                await queue.join()
                for w in workers:
                    w.cancel()
        except BaseExceptionGroup as failures:
            # Callers expect a plain CairnError (Cancelled, StorageUnavailable), not a group.
            first = failures.exceptions[0]
            raise first from first.__cause__
