"""Hands finished uploads to the finalize job: an RQ queue with Redis, a thread in this process without.

Both modes run the same idempotent job, worker.finalize, which records installed or failed itself: RQ imports
`finalize_upload` by name in a worker process; the embedded finalizer calls `run` with this process's components.
The arrow points one way: this module imports worker.finalize, which imports only the server's store, locks and
components, never this module or the app.
"""

from __future__ import annotations

import concurrent.futures
import logging
import time
from typing import Protocol

from modeldrop.server.components import Components
from modeldrop.server.locks import LockSpace
from modeldrop.server.store.filestore import FileStore
from modeldrop.server.store.lifecycle import State
from modeldrop.server.tus.interfaces import FinalizeQueue
from modeldrop.worker import finalize
from modeldrop.worker.finalize import QUEUE_NAME, finalize_lock_name

log = logging.getLogger("modeldrop.finalizer")


def job_id(upload_id: str) -> str:
    return f"finalize-{upload_id}"


def job_timeout(length: int | None) -> int:
    """Generous for the largest files: a full sequential read at a slow 100 MB/s, plus ten minutes."""
    return 600 + int((length or 0) / 100e6)


class Finalizer(FinalizeQueue, Protocol):
    """All the app asks of a finalizer; the tus handler sees only the FinalizeQueue part of it.

    `abandoned`: the requeue found the upload's job dead, so a queued copy of it may be replaced."""

    def submit(self, upload_id: str, abandoned: bool = False) -> None: ...
    def is_pending(self, upload_id: str) -> bool: ...
    def will_run(self, upload_id: str, grace: float) -> bool: ...
    def queue_depth(self) -> int: ...
    def close(self) -> None: ...


class EmbeddedFinalizer:
    """Runs the job in a background thread of this process, with its components: the default, no Redis needed."""

    def __init__(self, components: Components) -> None:
        self.components = components
        self.executor = concurrent.futures.ThreadPoolExecutor(max_workers=1, thread_name_prefix="finalize")
        self.pending: set[str] = set()

    def submit(self, upload_id: str, abandoned: bool = False) -> None:
        if upload_id in self.pending:  # a job of this process's own thread is never abandoned
            return
        self.pending.add(upload_id)
        self.executor.submit(self._run, upload_id)

    def _run(self, upload_id: str) -> None:
        try:
            finalize.run(self.components, upload_id)
        except Exception:  # the job records failures itself; anything left is retried by the requeue loop
            log.exception("finalize %s raised; it will be retried", upload_id)
        finally:
            self.pending.discard(upload_id)

    def is_pending(self, upload_id: str) -> bool:
        return upload_id in self.pending

    def will_run(self, upload_id: str, grace: float) -> bool:
        return upload_id in self.pending  # this process's own executor: its word is good

    def queue_depth(self) -> int:
        return len(self.pending)

    def close(self) -> None:
        self.executor.shutdown(wait=False, cancel_futures=True)


class RQFinalizer:
    """Enqueues the job on Redis for `modeldrop worker` processes, through the components' Redis client."""

    def __init__(self, components: Components) -> None:
        from rq import Queue, Retry

        assert components.redis is not None
        self.store = components.store
        self.connection = components.redis
        self.queue = Queue(QUEUE_NAME, connection=self.connection)
        self.retry = Retry(max=5, interval=[10, 30, 60, 120, 300])

    def submit(self, upload_id: str, abandoned: bool = False) -> None:
        """abandoned: the caller knows the pending job is dead (RQ still says started after its worker
        was killed, until RQ's own cleanup runs minutes later), so it is replaced rather than kept."""
        if self.is_pending(upload_id):
            if not abandoned:
                return
            from rq.exceptions import NoSuchJobError
            from rq.job import Job

            try:
                Job.fetch(job_id(upload_id), connection=self.connection).delete()
            except NoSuchJobError:
                pass
        # a dead reader's copy: RQ's own cleanup of this list would otherwise fail the new job later
        self.connection.lrem(self.queue.intermediate_queue_key, 0, job_id(upload_id))
        info = self.store.load(upload_id)
        self.queue.enqueue(finalize.finalize_upload, args=(upload_id,), job_id=job_id(upload_id),
                           job_timeout=job_timeout(info.length), retry=self.retry, result_ttl=86400,
                           failure_ttl=7 * 86400, description=f"finalize {info.filename or upload_id}")

    def is_pending(self, upload_id: str) -> bool:
        from rq.exceptions import NoSuchJobError
        from rq.job import Job, JobStatus

        try:
            status = Job.fetch(job_id(upload_id), connection=self.connection).get_status()
        except NoSuchJobError:
            return False
        return status in (JobStatus.QUEUED, JobStatus.STARTED, JobStatus.DEFERRED, JobStatus.SCHEDULED)

    def will_run(self, upload_id: str, grace: float) -> bool:
        """Whether a live worker will take the job without help: it is in the queue's list itself, or
        scheduled for a retry due less than `grace` seconds ago. Not RQ's status: 'queued' is also what
        RQ says of a job a dead worker's connection took into the intermediate list, and 'started' of one
        whose worker was killed; whether someone runs it is the finalize lock's word, not the queue's."""
        from rq.registry import ScheduledJobRegistry

        key = job_id(upload_id)
        if self.connection.lpos(self.queue.key, key) is not None:
            return True
        due = self.connection.zscore(ScheduledJobRegistry(queue=self.queue).key, key)
        return due is not None and float(due) > time.time() - grace

    def queue_depth(self) -> int:
        return int(self.queue.count)

    def close(self) -> None:
        pass  # the connection is the components', closed with them


def make_finalizer(components: Components) -> Finalizer:
    return EmbeddedFinalizer(components) if components.settings.embedded else RQFinalizer(components)


def requeue_stuck(store: FileStore, finalizer: Finalizer, locks: LockSpace, ids: list[str] | None = None,
                  stale_after: float = 60.0) -> list[str]:
    """Submits complete uploads that are neither installed nor failed and that nobody is working on.

    Covers a job lost with Redis, a worker killed mid-job, and a server killed between the last byte
    and the hand-off. Safe to call often: the job is idempotent and serialized by its finalize lock.
    """
    requeued = []
    now = time.time()
    for upload_id in ids if ids is not None else store.list_ids():
        try:
            info = store.load(upload_id)
        except Exception:
            continue
        if info.is_partial or not info.is_complete:
            continue
        status = store.read_status(upload_id)
        if status is None and info.is_final:
            continue  # being assembled: its assembly queues it
        if status is not None and (status.terminal or status.waiting_for_set):
            continue  # done, or a staged shard: the set's last shard publishes it
        if ids is None and status is not None and now - status.updated_at < stale_after:
            continue
        held = locks.try_acquire(finalize_lock_name(upload_id))
        if held is None:
            continue  # a worker is on it right now
        held.release()
        if finalizer.will_run(upload_id, grace=stale_after):
            continue  # waiting in the queue for a worker
        if status is None or status.state is State.RECEIVING:
            store.mark_queued(info)
        # nobody holds the lock and no worker will take the job on its own, whatever RQ calls it (queued in
        # a dead reader's hands, started by a killed worker): replace it. A duplicate run is harmless, it
        # waits for the finalize lock and finds the outcome recorded.
        finalizer.submit(upload_id, abandoned=True)
        requeued.append(upload_id)
    return requeued
