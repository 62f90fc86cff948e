"""One writer per upload: exclusive locks that a newcomer can ask the holder to give up.

Without Redis the lock is an flock on a file in `<staging>/locks/` (every process of this host shares it;
the kernel frees it when a process dies). With Redis it is a key set with NX and a TTL that the holder
keeps renewing, so processes on different hosts sharing the staging volume exclude each other too.

Release requests (tusd's lock release): a request that finds the lock taken writes `<name>.stop` next to
the lock; the holder watches for it, saves what it has and lets go. The file lives on the shared
staging volume, so this works across processes and hosts alike.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import re
import secrets
import time
from pathlib import Path
from typing import Protocol

# A killed holder cannot release its Redis lock: its TTL is how long the upload stays blocked for everyone
# else (a client resuming through another server behind a load balancer waited 13.6 s with 15 s). The
# holder renews every second, so it keeps the lock through a stall of up to 4 s.
LOCK_TTL_MS = 5_000
RENEW_EVERY = 1.0
STOP_POLL = 0.2
_SAFE_NAME = re.compile(r"^[A-Za-z0-9._-]{1,200}$")

_RELEASE_SCRIPT = """
if redis.call('get', KEYS[1]) == ARGV[1] then return redis.call('del', KEYS[1]) else return 0 end
"""
_RENEW_SCRIPT = """
if redis.call('get', KEYS[1]) == ARGV[1] then return redis.call('pexpire', KEYS[1], ARGV[2]) else return 0 end
"""


class Held(Protocol):
    def renew(self) -> bool: ...
    def release(self) -> None: ...


class LockSpace:
    """Names locks and their stop files; tries to take a lock without waiting (sync, quick)."""

    def __init__(self, staging_dir: Path, redis_client: object | None = None, key_prefix: str = "modeldrop") -> None:
        self.directory = Path(staging_dir) / "locks"
        self.redis = redis_client
        self.key_prefix = key_prefix

    def prepare(self) -> None:
        self.directory.mkdir(parents=True, exist_ok=True)

    @property
    def shared(self) -> bool:
        """Whether processes on other hosts take these locks too (Redis), not only this host's (flock)."""
        return self.redis is not None

    def _checked(self, name: str) -> str:
        if not _SAFE_NAME.match(name):
            raise ValueError(f"unsafe lock name {name!r}")
        return name

    def stop_path(self, name: str) -> Path:
        return self.directory / f"{self._checked(name)}.stop"

    def try_acquire(self, name: str) -> Held | None:
        self._checked(name)
        if self.redis is not None:
            return _RedisHeld.try_acquire(self.redis, f"{self.key_prefix}:lock:{name}")
        return _FileHeld.try_acquire(self.directory / f"{name}.lock")

    def request_release(self, name: str) -> None:
        with contextlib.suppress(OSError):
            self.stop_path(name).touch()

    def release_requested(self, name: str) -> bool:
        return self.stop_path(name).exists()

    def clear_release_request(self, name: str) -> None:
        with contextlib.suppress(FileNotFoundError):
            self.stop_path(name).unlink()

    def acquire_blocking(self, name: str, timeout: float) -> Held | None:
        """For sync callers (the finalize worker): polls until the lock is free or timeout passes."""
        deadline = time.monotonic() + timeout
        while True:
            held = self.try_acquire(name)
            if held is not None:
                return held
            if time.monotonic() >= deadline:
                return None
            time.sleep(0.05)


class _FileHeld:
    def __init__(self, fd: int) -> None:
        self.fd: int | None = fd

    @classmethod
    def try_acquire(cls, path: Path) -> _FileHeld | None:
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            return None
        return cls(fd)

    def renew(self) -> bool:
        return self.fd is not None

    def release(self) -> None:
        # the lock file is never deleted while in use: unlinking it would let a second process lock a
        # new file of the same name while the first still holds the old one
        if self.fd is not None:
            fcntl.flock(self.fd, fcntl.LOCK_UN)
            os.close(self.fd)
            self.fd = None


class _RedisHeld:
    def __init__(self, client: object, key: str, token: str) -> None:
        self.client = client
        self.key = key
        self.token = token
        self.released = False

    @classmethod
    def try_acquire(cls, client: object, key: str) -> _RedisHeld | None:
        token = secrets.token_hex(16)
        if client.set(key, token, nx=True, px=LOCK_TTL_MS):  # type: ignore[attr-defined]
            return cls(client, key, token)
        return None

    def renew(self) -> bool:
        if self.released:
            return False
        return bool(self.client.eval(_RENEW_SCRIPT, 1, self.key, self.token, LOCK_TTL_MS))  # type: ignore[attr-defined]

    def release(self) -> None:
        if not self.released:
            self.released = True
            with contextlib.suppress(Exception):
                self.client.eval(_RELEASE_SCRIPT, 1, self.key, self.token)  # type: ignore[attr-defined]
