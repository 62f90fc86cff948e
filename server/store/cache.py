"""Upload records kept in memory, so HEAD can answer without leaving the event loop.

HEAD is what every resuming client waits on, and under load each trip to a worker thread costs tens of
milliseconds of GIL and scheduler waits. So the record HEAD last read for an upload is kept, and dropped
the moment any process changes any of that upload's files: inotify on the uploads directory reports
each change on the loop. A record is only kept if nothing touched its upload since before it was read.

Only sound where every writer's changes reach this host's inotify, that is with host-local locks. With
Redis locks, servers on other hosts may share the staging volume and their changes are not reported, so
the cache stays off and every HEAD reads the disk.
"""

from __future__ import annotations

import asyncio
import collections
import logging
import os
from pathlib import Path

from modeldrop.server.libc import (IN_ATTRIB, IN_CREATE, IN_DELETE, IN_DELETE_SELF, IN_IGNORED, IN_MODIFY,
                                   IN_MOVE_SELF, IN_MOVED_FROM, IN_MOVED_TO, IN_Q_OVERFLOW, inotify_events,
                                   inotify_watch)
from modeldrop.server.store.info import UploadInfo

log = logging.getLogger("modeldrop.store")

_WATCH_MASK = (IN_MODIFY | IN_ATTRIB | IN_MOVED_FROM | IN_MOVED_TO | IN_CREATE | IN_DELETE | IN_DELETE_SELF
               | IN_MOVE_SELF)
_MAX_TOUCHED = 65536  # ids remembered as recently changed; past that, older reads are refused wholesale


class UploadCache:
    """Records by upload id, valid until inotify reports a change to one of the upload's files.

    Used from the event loop only. `token()` before reading a record in a thread, `put(info, token)`
    after: the record is kept only if no change to that upload was reported in between. A change is
    always reported before a request that follows it is handled: the watch is readable as soon as the
    file changes, and the loop drains it at least one turn before it runs a newly arrived request.
    """

    def __init__(self, uploads_dir: Path, enabled: bool = True, max_entries: int = 4096) -> None:
        self.uploads_dir = Path(uploads_dir)
        self.enabled = enabled
        self.max_entries = max_entries
        self._records: collections.OrderedDict[str, UploadInfo] = collections.OrderedDict()
        self._touched: collections.OrderedDict[str, int] = collections.OrderedDict()
        self._changes = 0          # count of change reports drained so far
        self._refuse_up_to = 0     # reads that started at or before this count are not kept
        self._fd: int | None = None
        self._loop: asyncio.AbstractEventLoop | None = None

    def get(self, upload_id: str) -> UploadInfo | None:
        return self._records.get(upload_id)

    def token(self) -> int:
        """Taken before a read; -1 when reads cannot be kept (the watch must predate the read)."""
        if not self.enabled or not self._watching():
            return -1
        return self._changes

    def put(self, info: UploadInfo, token: int) -> None:
        if token < 0 or not self.enabled:
            return
        if token < self._refuse_up_to or self._touched.get(info.id, -1) > token:
            return  # something changed this upload after the read began: the read may predate it
        self._records[info.id] = info
        self._records.move_to_end(info.id)
        while len(self._records) > self.max_entries:
            self._records.popitem(last=False)

    def drop(self, upload_id: str) -> None:
        self._records.pop(upload_id, None)

    def close(self) -> None:
        if self._fd is not None:
            if self._loop is not None and not self._loop.is_closed():
                self._loop.remove_reader(self._fd)
            os.close(self._fd)
            self._fd = None
        self._records.clear()

    # -- inotify ----------------------------------------------------------------------------------

    def _watching(self) -> bool:
        if self._fd is not None:
            return True
        try:
            fd = inotify_watch(self.uploads_dir, _WATCH_MASK)
        except OSError as exc:
            log.warning("HEAD answers read the disk each time: watching %s failed (%s)", self.uploads_dir, exc)
            self.enabled = False
            return False
        self._fd = fd
        self._loop = asyncio.get_running_loop()
        self._loop.add_reader(fd, self._drain)
        return True

    def _drain(self) -> None:
        assert self._fd is not None
        try:
            data = os.read(self._fd, 256 * 1024)
        except BlockingIOError:
            return
        for mask, name in inotify_events(data):
            self._changes += 1
            if mask & (IN_Q_OVERFLOW | IN_IGNORED | IN_DELETE_SELF | IN_MOVE_SELF):
                self._forget_everything(mask)
                continue
            upload_id = name.decode("utf-8", "replace").partition(".")[0]
            self._records.pop(upload_id, None)
            self._touched[upload_id] = self._changes
            self._touched.move_to_end(upload_id)
            if len(self._touched) > _MAX_TOUCHED:
                _, oldest = self._touched.popitem(last=False)
                self._refuse_up_to = max(self._refuse_up_to, oldest)

    def _forget_everything(self, mask: int) -> None:
        """Changes were lost (queue overflow) or the directory itself went: nothing kept can be trusted."""
        self._records.clear()
        self._refuse_up_to = self._changes
        if mask & (IN_IGNORED | IN_DELETE_SELF | IN_MOVE_SELF):
            log.warning("the uploads directory %s was removed or moved: HEAD answers read the disk from now on",
                        self.uploads_dir)
            self.enabled = False
            self.close()

