"""The event-loop side of the locks: wait without blocking, watch for release requests, keep renewing."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable

from modeldrop.server import errors
from modeldrop.server.locks import RENEW_EVERY, STOP_POLL, Held, LockSpace

log = logging.getLogger("modeldrop.locks")


class HeldLock:
    def __init__(self, locker: AsyncLocker, name: str, held: Held, on_release_requested: Callable[[], None],
                 waited: bool = False) -> None:
        self.locker = locker
        self.name = name
        self.held = held
        self.waited = waited  # another holder had it first and was asked to let go
        self.on_release_requested = on_release_requested
        self.release_requested = False
        self._watcher = asyncio.get_running_loop().create_task(self._watch())

    def ask_to_release(self, why: str) -> None:
        if not self.release_requested:
            self.release_requested = True
            self.locker.release_requests += 1
            log.info("lock %s: asked to release (%s)", self.name, why)
            self.on_release_requested()

    async def _watch(self) -> None:
        space = self.locker.space
        since_renew = 0.0
        while True:
            await asyncio.sleep(STOP_POLL)
            since_renew += STOP_POLL
            # in a thread, as every other lock-file access: a stat on a hung shared volume must not
            # freeze the event loop, and with it every upload of this process
            if await asyncio.to_thread(space.release_requested, self.name):
                await asyncio.to_thread(space.clear_release_request, self.name)
                self.ask_to_release("another request wants this upload")
            if since_renew >= RENEW_EVERY:
                since_renew = 0.0
                try:
                    renewed = await asyncio.to_thread(self.held.renew)
                except Exception as exc:  # a Redis outage: stop writing rather than risk two writers
                    log.warning("lock %s: renewal failed: %s", self.name, exc)
                    renewed = False
                if not renewed:
                    self.ask_to_release("the lock could not be renewed")

    async def release(self) -> None:
        self._watcher.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self._watcher
        if self.locker.local.get(self.name) is self:
            del self.locker.local[self.name]
        await asyncio.to_thread(self.held.release)

    async def __aenter__(self) -> HeldLock:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.release()


class AsyncLocker:
    def __init__(self, space: LockSpace, timeout: float) -> None:
        self.space = space
        self.timeout = timeout
        self.local: dict[str, HeldLock] = {}
        self.release_requests = 0

    @property
    def shared(self) -> bool:
        """Whether servers on other hosts take these locks too: then this host cannot see every write."""
        return self.space.shared

    def try_acquire(self, name: str) -> Held | None:
        """Takes the lock if it is free, without waiting or asking its holder (sync, quick: call in a thread)."""
        return self.space.try_acquire(name)

    async def acquire(self, name: str, on_release_requested: Callable[[], None]) -> HeldLock:
        """Takes the lock, asking a current holder to let go; 423 after `timeout` seconds."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.timeout
        asked = False
        while True:
            held = await asyncio.to_thread(self.space.try_acquire, name)
            if held is not None:
                # a request left for the previous holder must not make this one stop at once
                await asyncio.to_thread(self.space.clear_release_request, name)
                lock = HeldLock(self, name, held, on_release_requested, waited=asked)
                self.local[name] = lock
                return lock
            if not asked:
                asked = True
                holder = self.local.get(name)
                if holder is not None:
                    holder.ask_to_release("another request in this process wants this upload")
                else:
                    await asyncio.to_thread(self.space.request_release, name)
            if loop.time() >= deadline:
                raise errors.Locked(f"another request is still writing this upload after {self.timeout:g}s; "
                                    "retry shortly")
            await asyncio.sleep(0.05)
