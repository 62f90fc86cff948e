"""What the tus handler needs from the locks and the finalizer, as small interfaces it owns (tusd's Locker).

The concrete classes (locks/locker.py:AsyncLocker and HeldLock, finalizer.py's finalizers) satisfy them
without importing this module; the handler sees nothing else of them.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Protocol


class Releasable(Protocol):
    def release(self) -> None: ...


class UploadLock(Protocol):
    """One upload's lock, held by one request; entered with `async with`, which lets it go."""

    waited: bool                                  # another holder had it first and was asked to let go
    release_requested: bool                       # someone asked this holder to let go since it took the lock
    on_release_requested: Callable[[], None]      # what the holder runs when that happens

    async def __aenter__(self) -> UploadLock: ...
    async def __aexit__(self, *exc_info: object) -> None: ...


class Locker(Protocol):
    @property
    def shared(self) -> bool:
        """Whether servers on other hosts take these locks too (so a record cached here may be stale)."""
        ...

    async def acquire(self, name: str, on_release_requested: Callable[[], None]) -> UploadLock:
        """Waits for the lock, asking its holder to let go; raises errors.Locked after the lock timeout."""
        ...

    def try_acquire(self, name: str) -> Releasable | None:
        """The lock if it is free right now (sync: call it in a thread)."""
        ...


class FinalizeQueue(Protocol):
    def submit(self, upload_id: str) -> None:
        """Hands a complete upload to finalize_upload; may raise if the queue is unreachable (Redis down)."""
        ...
