"""build(settings): the composition root. What a modeldrop process needs, made once: the staging store, the locks,
the catalog of installed models and the one Redis client (after tusd's cmd/tusd/cli/composer.go).

Every process builds them here, once: `modeldrop serve` (server/main.py, then app.create_app adds the HTTP parts
on top), and each `modeldrop worker` process at start (worker/main.py, which gives them to the RQ job with
worker.finalize.use). In embedded mode the finalizer thread runs the job with the server's own components, so
one process holds one FileStore (one table of running hashes, one background thread) and one LockSpace.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import TYPE_CHECKING

from modeldrop.server.catalog import Catalog
from modeldrop.server.locks import LockSpace
from modeldrop.server.settings import Settings
from modeldrop.server.store.filestore import FileStore

if TYPE_CHECKING:
    import redis

# seconds a Redis command (or connecting) may take before it fails: a Redis lock lives 5 s (locks.LOCK_TTL_MS), so a
# holder that waits longer than that for an answer has lost it anyway
REDIS_TIMEOUT = 5.0


def redis_client(url: str) -> redis.Redis:
    """The one Redis client configuration of modeldrop.

    The RQ worker's own connection (worker/main.py) is a second client made here too: RQ lengthens its connection's
    socket timeout past its blocking wait for jobs (minutes), which the locks' commands must not inherit.
    """
    import redis

    return redis.Redis.from_url(url, socket_timeout=REDIS_TIMEOUT, socket_connect_timeout=REDIS_TIMEOUT)


@dataclasses.dataclass(frozen=True)
class Components:
    settings: Settings
    store: FileStore
    locks: LockSpace
    catalog: Catalog
    # None in embedded mode; with Redis it holds the locks and the finalize queue
    redis: redis.Redis | None = None

    @property
    def models_dir(self) -> Path:
        return Path(self.settings.models_dir)

    @property
    def sets_dir(self) -> Path:
        """Where split sets wait for their last shard (server/store/sets.py)."""
        return self.store.staging_dir / "sets"

    def close(self) -> None:
        if self.redis is not None:
            self.redis.close()


def build(settings: Settings) -> Components:
    """Once per process. Creates the staging folders it needs; connects to Redis only when first used."""
    client = redis_client(settings.redis_url) if settings.redis_url else None
    store = FileStore(settings.staging_dir, durable=settings.fsync)
    store.prepare()
    locks = LockSpace(settings.staging_dir, client)
    locks.prepare()
    return Components(settings, store, locks, Catalog(settings.models_dir, settings.staging_dir), client)
