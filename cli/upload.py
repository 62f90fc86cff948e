"""`modeldrop upload FILE...`: send .gguf files to a modeldrop server over tus 1.0, resuming across runs.

For each file, one after another: find the upload remembered for this exact file (HEAD it for the
server's offset) or create one (POST), send the rest in PATCHes whose bodies go from the file to the
socket with sendfile, then poll the server's status for that upload until it is installed or failed.
Network errors, 5xx, 409 and 423 are retried with backoff, each time from the offset the server
reports; other refusals are final.
"""

from __future__ import annotations

import argparse
import collections
import os
import random
import stat
import sys
import time
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Any, NamedTuple, TextIO

from modeldrop.cli import tus
from modeldrop.cli.client import (
    FileSlice,
    HttpClient,
    LocalFileError,
    NetworkError,
    Response,
    add_server_arguments,
    server_and_token,
)
from modeldrop.cli.digest import lookup_candidates, sha256_of, worth_hashing
from modeldrop.cli.progress import Progress
from modeldrop.cli.state import UploadMemory, default_state_file

# How often to ask for the status while the server verifies: soon at first (the server keeps the digest
# while receiving, so even a 100 GB model is usually installed within tens of ms of its last byte, and a
# first wait of half a second would be a fifth of a 2 GiB upload), then calmly (a server that has to
# read the file again takes minutes). From 10 ms, 1.5 times longer each time: 13 questions in the first 5 s.
FIRST_POLL_SECONDS = 0.01
POLL_GROWTH = 1.5
MAX_POLL_SECONDS = 5.0

DEFAULT_POLICY = tus.RetryPolicy()

EXIT_OK = 0
EXIT_FAILED = 1
EXIT_USAGE = 2
EXIT_INTERRUPTED = 130


class UsageError(Exception):
    """The command line asks for something impossible (missing file, not .gguf, --sha256 with two files)."""


class Refused(Exception):
    """The server refused this file for good (a 4xx other than 409/423); the message is the server's."""


class Unreachable(Exception):
    """Retries ran out: the server stayed away or kept failing. The next run resumes where this stopped."""


class Retryable(Exception):
    """A failure worth another attempt after a pause; `wait_at_least` honours a server's Retry-After."""

    def __init__(self, message: str, wait_at_least: float | None = None):
        super().__init__(message)
        self.wait_at_least = wait_at_least


class UploadJob(NamedTuple):
    """One local file to upload, as it was when the run started."""

    path: Path
    size: int
    mtime_ns: int
    sha256: str | None = None
    # the model set the file is one of (tus.plan_set): its name on the server, and how many files make it
    set_name: str | None = None
    set_size: int | None = None

    @property
    def name(self) -> str:
        return self.path.name


class Position(NamedTuple):
    """Where an upload stands on the server: its URL, the bytes it holds, and where to ask its status."""

    url: str
    offset: int
    status_url: str


class Sent(NamedTuple):
    """A file whose bytes all reached the server; `key` is its fingerprint in the resume memory."""

    job: UploadJob
    key: str
    position: Position


# ---------------------------------------------------------------- command line


def add_arguments(parser: argparse.ArgumentParser, command: str) -> None:
    parser.formatter_class = argparse.RawDescriptionHelpFormatter
    parser.description = (
        "Upload .gguf files to a modeldrop server (tus 1.0), one after another, then wait for the server\n"
        "to verify and install them. Give every shard of a split model in one run, or the shards in\n"
        "several runs: the server installs the set when its last shard arrives. A projector (mmproj*.gguf)\n"
        "given with its model (or its shards) makes one set with them, installed together as the folder\n"
        "NAME/ (the model's name, or --set NAME); a projector alone with --set NAME joins the installed\n"
        "model NAME. An interrupted upload resumes from the server's offset when the same command runs\n"
        "again, as long as the file is unchanged (same path, size and modification time).")
    parser.epilog = (
        "output:\n"
        "  progress and notices go to stderr; stdout gets one line per file, starting with its state:\n"
        "    installed Llama-3-8B-Q4_K_M.gguf (llama, Q4_K_M, sha256 ab12cd34ef56…)\n"
        "    failed model.gguf: truncated: …\n"
        "    waiting Big-00001-of-00002.gguf: verified; its split set still needs shard(s) 00002 of 00002\n"
        "    waiting Vision.gguf: verified; waiting for its projector (mmproj) (set 'Vision')\n"
        "  with --no-wait the state may also be receiving, queued or verifying; \"unknown\" means all\n"
        "  bytes were sent but the server stopped answering before it reported a status.\n"
        "retries:\n"
        "  network errors, 5xx (except 501/505/507), 409 offset conflicts and 423 locks are retried with\n"
        "  exponential backoff and jitter, each time from the offset the server reports; the count\n"
        "  starts again whenever the server's offset moves forward. Other 4xx answers are final.\n"
        "exit status:\n"
        "  0 every file installed, or verified and waiting for shards of its set not given in this run\n"
        "    (with --no-wait: every file received and none failed so far),\n"
        "  1 a file failed, was refused, or the server stayed unreachable,\n"
        "  2 usage error (a bad option, a FILE missing or not .gguf: checked before anything is sent),\n"
        "  130 interrupted (run the same command again to resume).")
    parser.add_argument("files", nargs="+", metavar="FILE",
                        help="a .gguf file; FILE=SHA256 (64 hex digits) gives its expected digest")
    add_server_arguments(parser)
    parser.add_argument("--set", metavar="NAME", default=None, dest="set_name",
                        help="install the files as one model set, the folder NAME/ on the server (a model and its "
                             "projector are one set without it, named as the model); with a projector alone, NAME "
                             "is the installed model it joins")
    parser.add_argument("--sha256", metavar="HEX", default=None,
                        help="expected SHA-256 of the file, checked by the server before installing "
                             "(only with a single FILE; for several, write FILE=SHA256)")
    parser.add_argument("--hash", action="store_true",
                        help="compute each file's SHA-256 before sending it (once per version of the file), so the "
                             "server can continue an upload of it made elsewhere or install a copy it already has "
                             "without a byte sent; without --hash a file is hashed only when the server has a file "
                             "of its size to compare with")
    parser.add_argument("--chunk-size", metavar="SIZE", type=_size_argument, default=None,
                        help="send at most SIZE bytes per PATCH, e.g. 90MiB behind Cloudflare's 100 MB "
                             "request limit (units K/M/G/T are binary; default: the server's limit from its "
                             "--max-append-size, else the whole file in one PATCH)")
    parser.add_argument("--retries", metavar="N", type=_count_argument, default=DEFAULT_POLICY.attempts,
                        help=f"retries in a row without progress before giving up (default {DEFAULT_POLICY.attempts})")
    parser.add_argument("--retry-delay", metavar="SECONDS", type=float, default=DEFAULT_POLICY.first_delay,
                        help=f"first retry delay; it doubles each time, up to {DEFAULT_POLICY.max_delay:g} s "
                             f"(default {DEFAULT_POLICY.first_delay:g})")
    parser.add_argument("--state-file", metavar="PATH", type=Path, default=None,
                        help="where upload URLs are remembered for resuming (env MODELDROP_STATE_FILE; "
                             "default ${XDG_STATE_HOME:-~/.local/state}/modeldrop/uploads.json)")
    parser.add_argument("--wait", action=argparse.BooleanOptionalAction, default=True,
                        help="after sending, wait until the server has verified and installed (or failed) "
                             "each file; --no-wait asks once and exits (default: wait)")
    parser.add_argument("-q", "--quiet", action="store_true",
                        help="no progress bar or notices (retries, resumes, server states) on stderr; "
                             "the status lines on stdout still print")


def _size_argument(text: str) -> int:
    try:
        size = tus.parse_size(text)
    except ValueError as error:
        raise argparse.ArgumentTypeError(str(error)) from None
    if size <= 0:
        raise argparse.ArgumentTypeError("the chunk size must be at least 1 byte")
    return size


def _count_argument(text: str) -> int:
    if not text.isdigit():
        raise argparse.ArgumentTypeError(f"not a whole number ≥ 0: {text!r}")
    return int(text)


def plan_jobs(arguments: list[str], sha256: str | None, set_name: str | None = None) -> list[UploadJob]:
    """Check every FILE before sending anything: a typo in the third shard should not cost the first two."""
    if sha256 is not None and len(arguments) != 1:
        raise UsageError("--sha256 names one file's digest; with several files write FILE=SHA256")
    jobs = []
    for argument in arguments:
        path_text, digest = tus.split_file_argument(argument, is_file=os.path.isfile(argument))
        try:
            digest = tus.normalize_sha256(sha256) if sha256 is not None else digest
        except ValueError as error:
            raise UsageError(str(error)) from None
        path = Path(path_text).absolute()
        try:
            info = path.stat()
        except OSError as error:
            raise UsageError(f"{path_text}: {error.strerror or error}") from None
        if not stat.S_ISREG(info.st_mode):
            raise UsageError(f"{path_text}: not a regular file")
        if not path.name.lower().endswith(".gguf"):
            raise UsageError(f"{path_text}: not a .gguf file (modeldrop installs GGUF models only)")
        if not os.access(path, os.R_OK):
            raise UsageError(f"{path_text}: not readable")
        jobs.append(UploadJob(path, info.st_size, info.st_mtime_ns, digest))
    try:
        model_set = tus.plan_set([job.name for job in jobs], set_name)
    except ValueError as error:
        raise UsageError(str(error)) from None
    if model_set is not None:
        jobs = [job._replace(set_name=model_set[0], set_size=model_set[1]) for job in jobs]
    return jobs


def run(command: str, args: argparse.Namespace) -> int:
    stdout, stderr = sys.stdout, sys.stderr
    try:
        server, token = server_and_token(args, os.environ)
        jobs = plan_jobs(args.files, args.sha256, args.set_name)
    except (UsageError, ValueError) as error:
        print(f"modeldrop upload: error: {error}", file=stderr)
        return EXIT_USAGE
    uploader = Uploader(
        http=HttpClient(timeout=args.timeout), server=server, token=token,
        memory=UploadMemory(args.state_file or default_state_file(os.environ)),
        policy=tus.RetryPolicy(attempts=args.retries, first_delay=args.retry_delay),
        chunk_size=args.chunk_size, wait=args.wait, quiet=args.quiet, stderr=stderr, hash_files=args.hash)
    all_installed = True
    sent: list[Sent] = []
    reported: set[str] = set()
    unreachable: Unreachable | None = None
    try:
        # Send everything first, then wait: a split set's first shard is installed only once its
        # last shard has arrived, so waiting file by file would wait forever.
        for index, job in enumerate(jobs):
            try:
                sent.append(uploader.send(job))
            except (Refused, LocalFileError, tus.ProtocolError) as error:
                print(f"failed {job.name}: {error}", file=stdout, flush=True)
                all_installed = False
            except Unreachable as error:
                print(f"failed {job.name}: {error}", file=stdout, flush=True)
                for skipped in jobs[index + 1:]:
                    print(f"failed {skipped.name}: not sent, the server is unreachable", file=stdout, flush=True)
                unreachable = error
                break
        if unreachable is None:
            for item, document in uploader.follow(sent):
                print(tus.describe_status(document, item.job.name), file=stdout, flush=True)
                reported.add(item.key)
                all_installed &= tus.is_success(document, args.wait)
    except Unreachable as error:
        unreachable = error
    except KeyboardInterrupt:
        print("modeldrop upload: interrupted; run the same command again to resume", file=stderr)
        return EXIT_INTERRUPTED
    finally:
        uploader.close()
    if unreachable is not None:
        for item in sent:
            if item.key not in reported:
                print(f"unknown {item.job.name}: all bytes sent, but no final status ({unreachable}); run the "
                      "same command again to ask", file=stdout, flush=True)
        return EXIT_FAILED
    return EXIT_OK if all_installed else EXIT_FAILED


# ---------------------------------------------------------------- the upload itself


class Attempts:
    """Counts failures in a row and waits between them; too many in a row raise Unreachable."""

    def __init__(self, policy: tus.RetryPolicy, sleep: Callable[[float], None], jitter: Callable[[], float],
                 report: Callable[[str], None]):
        self._policy = policy
        self._sleep = sleep
        self._jitter = jitter
        self._report = report
        self.failures = 0

    def failed(self, problem: Retryable) -> None:
        self.failures += 1
        if self.failures > self._policy.attempts:
            raise Unreachable(f"gave up after {self._policy.attempts} retries: {problem}")
        delay = max(self._policy.delay(self.failures, self._jitter()), problem.wait_at_least or 0.0)
        self._report(f"{problem}; retry {self.failures}/{self._policy.attempts} in {delay:.1f} s")
        self._sleep(delay)

    def progressed(self) -> None:
        self.failures = 0


class Uploader:
    """Uploads one file at a time to one server; everything that talks to the network is here."""

    def __init__(self, http: HttpClient, server: str, token: str | None, memory: UploadMemory,
                 policy: tus.RetryPolicy, chunk_size: int | None, wait: bool, quiet: bool, stderr: TextIO,
                 sleep: Callable[[float], None] = time.sleep, jitter: Callable[[], float] = random.random,
                 hash_files: bool = False):
        self.http, self.server, self.token, self.memory, self.policy = http, server, token, memory, policy
        self.chunk_size, self.wait, self.quiet, self.stderr = chunk_size, wait, quiet, stderr
        self.sleep, self.jitter = sleep, jitter
        self.hash_files = hash_files  # --hash: every file's digest before its creation (cli/digest.py)
        self._server_limit_known = chunk_size is not None  # --chunk-size given: the server is not asked

    def close(self) -> None:
        self.http.close()

    def send(self, job: UploadJob) -> Sent:
        """Send the file, or what the server still lacks of it."""
        # a file sent as one of a set is another upload than the same file sent alone (or for another set)
        where = str(job.path) if job.set_name is None else f"{job.path}#set={job.set_name}/{job.set_size}"
        key = tus.fingerprint(self.server, where, job.size, job.mtime_ns)
        progress = Progress(self.stderr, job.name, job.size, quiet=self.quiet)
        attempts = Attempts(self.policy, self.sleep, self.jitter, progress.message)
        try:
            position = self._send(job, key, progress, attempts)
        except Refused:
            remembered = self.memory.get(key) or {}
            if self._server_failure(remembered.get("status_url")) is not None:
                self.memory.forget(key)  # the server gave up on this upload; a next run starts afresh
            raise
        finally:
            progress.finish()
        return Sent(job, key, position)

    def follow(self, sent: list[Sent]) -> Iterator[tuple[Sent, dict[str, Any]]]:
        """Each sent file with its status document, as soon as it is settled (`tus.is_settled`).

        All files are polled in turn rather than one by one, since shards of a set finish together.
        """
        attempts = Attempts(self.policy, self.sleep, self.jitter, self._note)
        pending = list(sent)
        failed: set[str] = set()
        last_seen: dict[str, str] = {}
        pause = FIRST_POLL_SECONDS
        while pending:
            for item in list(pending):
                try:
                    document = self._status(item.position.status_url, attempts)
                except (Refused, tus.ProtocolError) as error:
                    # The bytes are all there; only the answer is missing, so the memory keeps the
                    # upload and the next run asks again instead of sending the file anew.
                    pending.remove(item)
                    yield item, {"state": tus.FAILED, "reason": f"the server gave no status: {error}"}
                    continue
                if document.get("state") == tus.FAILED:
                    failed.add(item.key)
                coming = {shard for other in sent if other.key not in failed
                          if (shard := tus.shard_of(other.job.name)) is not None}
                sets_coming = collections.Counter(other.job.set_name for other in sent
                                                  if other.key not in failed and other.job.set_name is not None)
                if tus.is_settled(document, self.wait, coming, sets_coming):
                    self._remember_outcome(item, document)
                    pending.remove(item)
                    yield item, document
                    continue
                line = tus.describe_status(document, item.job.name)
                if last_seen.get(item.key) != line:
                    self._note(line)
                    last_seen[item.key] = line
            if pending:
                self.sleep(pause)
                pause = min(MAX_POLL_SECONDS, pause * POLL_GROWTH)

    def _remember_outcome(self, item: Sent, document: Mapping[str, Any]) -> None:
        if document.get("state") == tus.FAILED:
            # The server will not take these bytes; the next run should start a fresh upload.
            self.memory.forget(item.key)
        elif document.get("state") == tus.INSTALLED:
            self.memory.remember(item.key, url=item.position.url, status_url=item.position.status_url,
                                 state=tus.INSTALLED)

    def _send(self, job: UploadJob, key: str, progress: Progress, attempts: Attempts) -> Position:
        position: Position | None = None
        furthest = -1
        while True:
            try:
                if position is None:
                    position = self._resume_or_create(job, key)
                    if position.offset > furthest >= 0:
                        attempts.progressed()  # the failed PATCH still moved the upload forward
                    if furthest < 0 and position.offset >= job.size:
                        self._note(f"{job.name}: already uploaded; asking the server how it went")
                        return position
                    furthest = max(furthest, position.offset)
                    progress.reset(position.offset)
                if position.offset >= job.size:
                    return position
                position = self._patch(job, position, progress)
                furthest = position.offset
                attempts.progressed()
            except Retryable as problem:
                attempts.failed(problem)
                position = None  # learn the server's offset again before sending more

    def _resume_or_create(self, job: UploadJob, key: str) -> Position:
        remembered = self.memory.get(key)
        if remembered and isinstance(remembered.get("url"), str):
            position = self._head(job, remembered)
            if position is not None:
                return position
            self.memory.forget(key)
        return self._create(self._with_digest(job, key), key)

    def _head(self, job: UploadJob, remembered: Mapping[str, Any]) -> Position | None:
        """The remembered upload's position, or None when the server no longer has it."""
        url = remembered["url"]
        response = self._request("HEAD", url, tus.base_headers(self.token))
        if response.status in (403, 404, 410):
            self._note(f"{job.name}: the server no longer has the earlier upload; starting a new one")
            return None
        if not response.ok:
            self._raise_for(response)
        length = response.header("Upload-Length")
        if length is not None and tus.parse_offset(length) != job.size:
            return None  # not this file's upload after all (the server was reset and reused the id)
        offset = tus.parse_offset(response.header("Upload-Offset"))
        if offset > job.size:
            raise tus.ProtocolError(f"the server claims {offset} bytes of a {job.size}-byte file")
        status_url = self._status_url(response, url, remembered.get("status_url"))
        if offset < job.size:
            # An unfinished upload the server already failed (not a GGUF, say) takes no more bytes.
            reason = self._server_failure(status_url)
            if reason is not None:
                raise Refused(reason)
        if 0 < offset < job.size:
            self._note(f"{job.name}: the server has {tus.format_size(offset)} of {tus.format_size(job.size)}; "
                       "continuing from there")
        return Position(url, offset, status_url)

    def _create(self, job: UploadJob, key: str) -> Position:
        url = tus.creation_url(self.server)
        metadata = tus.upload_metadata(job.name, job.sha256, job.set_name, job.set_size)
        response = self._request("POST", url, tus.creation_headers(job.size, metadata, self.token))
        if response.status != 201:
            self._raise_for(response)
        upload_url = tus.resolve_location(url, response.header("Location"))
        status_url = self._status_url(response, upload_url, None)
        # Remember before the first byte goes out: a run killed during that PATCH must find it again.
        self.memory.remember(key, url=upload_url, status_url=status_url, path=str(job.path), size=job.size)
        offset_header = response.header("Upload-Offset")
        if response.header(tus.MATCH_HEADER):  # the server had this file already: resumed, linked or installed
            self._note(f"{job.name}: {tus.match_message(response.body, response.header(tus.MATCH_HEADER))}")
        return Position(upload_url, tus.parse_offset(offset_header) if offset_header else 0, status_url)

    def _patch(self, job: UploadJob, position: Position, progress: Progress) -> Position:
        count = tus.chunk_length(position.offset, job.size, self._chunk_size())
        self._check_unchanged(job)
        try:
            file = open(job.path, "rb")
        except OSError as error:
            raise LocalFileError(f"cannot read {job.path}: {error.strerror or error}") from error
        with file:
            body = FileSlice(file, position.offset, count, progress.advance)
            response = self._request("PATCH", position.url, tus.patch_headers(position.offset, count, self.token),
                                     body)
        if not response.ok:
            self._raise_for(response)
        offset = tus.parse_offset(response.header("Upload-Offset"))
        if offset <= position.offset:
            raise Retryable(f"the server stored none of the {count} bytes sent")
        status_url = self._status_url(response, position.url, position.status_url)
        return Position(position.url, offset, status_url)

    def _status(self, status_url: str, attempts: Attempts) -> dict[str, Any]:
        """The upload's status document, asking again after transient failures."""
        while True:
            try:
                response = self._request("GET", status_url, tus.json_headers(self.token))
                if not response.ok:
                    self._raise_for(response)
            except Retryable as problem:
                attempts.failed(problem)
                continue
            attempts.progressed()
            document = response.json()
            if not isinstance(document, dict):
                raise tus.ProtocolError(f"{status_url} answered {document!r}, not a status document")
            return document

    # -------------------------------------------------------- helpers

    def _with_digest(self, job: UploadJob, key: str) -> UploadJob:
        """The job with its sha256 when it is known or worth computing (cli/digest.py): a creation that declares
        it is answered with what the server has of the file instead of a new upload at zero."""
        if job.sha256 is not None or job.set_name is not None:  # a set's files are always sent: no match is sought
            return job
        remembered = (self.memory.get(key) or {}).get("sha256")
        if isinstance(remembered, str) and len(remembered) == 64:
            return job._replace(sha256=remembered)
        if not self.hash_files:
            if not worth_hashing(self._lookup(job.size), job.name):
                return job
            self._note(f"{job.name}: the server has a file of this size; hashing this one to compare")
        self._check_unchanged(job)
        progress = Progress(self.stderr, f"{job.name} (sha256)", job.size, quiet=self.quiet)
        try:
            digest = sha256_of(job.path, progress.advance)
        except OSError as error:
            raise LocalFileError(f"cannot read {job.path}: {error.strerror or error}") from error
        finally:
            progress.finish()
        self._check_unchanged(job)  # edited while it was read: the digest would be of neither version
        self.memory.remember(key, sha256=digest)
        return job._replace(sha256=digest)

    def _lookup(self, size: int) -> list[Mapping[str, Any]]:
        """What the server knows of files of this size (GET /api/lookup); nothing when it cannot say."""
        try:
            url = tus.api_url(self.server, f"lookup?size={size}")
            response = self._request("GET", url, tus.json_headers(self.token))
            return lookup_candidates(response.json()) if response.ok else []
        except (Retryable, tus.ProtocolError):
            return []

    def _chunk_size(self) -> int | None:
        """--chunk-size, else the largest request body the server takes (its --max-append-size, which GET
        /api/config gives as max_append_size: a proxy in front of it would refuse more); None: the whole file."""
        if not self._server_limit_known:
            try:
                response = self._request("GET", tus.api_url(self.server, "config"), tus.json_headers(self.token))
            except Retryable:
                return None  # asked again before the next PATCH
            try:
                config = response.json() if response.ok else None
            except tus.ProtocolError:
                config = None  # not modeldrop's JSON (a proxy's page): no limit known
            self._server_limit_known = True
            limit = config.get("max_append_size") if isinstance(config, dict) else None
            if isinstance(limit, int) and limit > 0:
                self.chunk_size = limit
                self._note(f"sending at most {tus.format_size(limit)} per request, the server's limit")
        return self.chunk_size

    def _server_failure(self, status_url: str | None) -> str | None:
        """The reason the server failed this upload, or None (also when it cannot say: this is a hint only)."""
        if not status_url:
            return None
        try:
            response = self._request("GET", status_url, tus.json_headers(self.token))
            document = response.json() if response.ok else None
        except (Retryable, tus.ProtocolError):
            return None
        if isinstance(document, dict) and document.get("state") == tus.FAILED:
            return str(document.get("reason") or "the server marked this upload failed")
        return None

    def _request(self, method: str, url: str, headers: Mapping[str, str], body: FileSlice | None = None) -> Response:
        try:
            return self.http.request(method, url, headers, body)
        except NetworkError as error:
            raise Retryable(str(error)) from error

    @staticmethod
    def _raise_for(response: Response) -> None:
        code, message = response.error()
        if not tus.is_retryable_status(response.status, code):
            raise Refused(message)  # the server's words are the whole story for a refusal
        if code is not None:  # modeldrop's own error: its message does not name the status yet
            message = f"HTTP {response.status}: {message}"
        raise Retryable(message, tus.retry_after_seconds(response.header("Retry-After")))

    @staticmethod
    def _status_url(response: Response, upload_url: str, known: str | None) -> str:
        header = response.header(tus.STATUS_HEADER)
        if header:
            return tus.resolve_location(response.url, header)
        return known or tus.status_url_for(upload_url)

    @staticmethod
    def _check_unchanged(job: UploadJob) -> None:
        """Refuse to send bytes of a file edited since the run started: they would mix two versions."""
        try:
            info = job.path.stat()
        except OSError as error:
            raise LocalFileError(f"cannot read {job.path}: {error.strerror or error}") from error
        if (info.st_size, info.st_mtime_ns) != (job.size, job.mtime_ns):
            raise LocalFileError(f"{job.path} changed while uploading; run again to upload the new version")

    def _note(self, text: str) -> None:
        if not self.quiet:
            print(text, file=self.stderr, flush=True)
