"""Resumable Uploads for HTTP against a real server, on the wire: one test per requirement of the draft's
current text (-12 to -15, interop version 9) that a server must or should meet, named after it. -15's rules were
read from the editors' source of July 2026 and the changes merged after it (see the README's RUFH section).

Requests go through httpx, or by hand (RawExchange) where the answer's interim 104s are the point.
"""

from __future__ import annotations

import base64
import hashlib
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.ggufgen import write_model
from tests.support.metrics import server_metric
from tests.support.processes import ServerProcess, wait_for
from tests.support.rufh import PARTIAL, PROBLEM, PROBLEM_TYPES, RawExchange, RufhClient, disposition, resource
from tests.support.tus import (TusClient, gguf_bytes, module_server, settle, stored_bytes, stored_size, unique_name,
                               upload_id)

IDLE_TIMEOUT = 8
server = module_server(fsync=True, idle_timeout=IDLE_TIMEOUT, lock_timeout=5, sync_interval="1MiB")
MODEL = gguf_bytes(tensors=4, tensor_elems=1024)


@pytest.fixture(scope="module")
def big() -> bytes:
    """A 6 MiB model: bodies over 1 MiB are spliced off the socket, and syncs (every MiB) happen inside one."""
    with tempfile.TemporaryDirectory() as directory:
        return write_model(Path(directory) / "big.gguf", tensors=3, tensor_elems=512 * 1024).read_bytes()


@pytest.fixture
def client(server: ServerProcess) -> Iterator[RufhClient]:
    rufh = RufhClient(server.url)
    yield rufh
    rufh.http.close()


def problem(response: httpx.Response, status: int, kind: str | None = None) -> dict[str, object]:
    """An RFC 9457 answer: the status, application/problem+json, and the draft's problem type when given."""
    assert response.status_code == status, response.text
    assert response.headers["Content-Type"] == PROBLEM
    document = response.json()
    assert document["status"] == status
    assert document["type"] == (PROBLEM_TYPES + kind if kind else "about:blank")
    assert document["title"] and document["detail"]
    return dict(document)


def limits(response: httpx.Response | dict[str, str]) -> dict[str, int]:
    headers = response.headers if isinstance(response, httpx.Response) else response
    value = headers["upload-limit"]
    return {key.strip(): int(number) for key, number in (member.split("=") for member in value.split(","))}


def sha256_field(data: bytes) -> str:
    return f"sha-256=:{base64.b64encode(hashlib.sha256(data).digest()).decode()}:"


# -- upload creation --------------------------------------------------------------------------------


def test_creation_without_content_answers_201_with_location_and_limits(client: RufhClient) -> None:
    response = client.create(length=len(MODEL))
    assert response.status_code == 201  # RECOMMENDED
    assert response.headers["Location"].startswith(f"{client.http.base_url}/uploads/".replace("//uploads", "/uploads"))
    assert limits(response)["max-size"] > 0  # MUST include Upload-Limit
    assert response.headers["Upload-Complete"] == "?0"  # SHOULD say whether it is the targeted resource's answer
    assert response.headers["Upload-Offset"] == "0"


def test_creation_with_part_of_the_content_keeps_it(client: RufhClient, server: ServerProcess) -> None:
    response = client.create(MODEL[:3000], length=len(MODEL))
    assert response.status_code == 201
    assert response.headers["Upload-Offset"] == "3000"
    assert stored_bytes(server, response.headers["Location"]) == MODEL[:3000]
    assert client.offset(response.headers["Location"]) == 3000


def test_creation_with_all_the_content_completes_the_upload(client: RufhClient, server: ServerProcess) -> None:
    name = unique_name()
    response = client.create(MODEL, complete=True, name=name)
    assert response.status_code == 201
    assert response.headers["Upload-Complete"] == "?1"
    status = TusClient(server.url).wait_installed(response.headers["Location"])
    assert status["filename"] == name
    assert (server.models_dir / name).read_bytes() == MODEL


def test_creation_records_the_length_from_content_length_when_complete(client: RufhClient,
                                                                        server: ServerProcess) -> None:
    raw = RawExchange(server.url, "POST", "/uploads/", {"Upload-Draft-Interop-Version": "9", "Upload-Complete": "?1",
                                                      "Content-Disposition": disposition(unique_name())},
                      length=len(MODEL))
    interim = raw.next_head(10)
    assert interim is not None and interim[0] == 104
    raw.send(MODEL[:2000])
    settle(0.5)
    raw.close()
    location = interim[1]["location"]
    settle(0.5)
    head = client.head(location)
    assert head.headers["Upload-Length"] == str(len(MODEL))  # MUST record the length
    assert head.headers["Upload-Offset"] == "2000"           # SHOULD keep what arrived
    assert head.headers["Upload-Complete"] == "?0"           # MUST NOT be considered complete


def test_creation_announces_the_upload_in_a_104_before_the_content(client: RufhClient, server: ServerProcess) -> None:
    raw = RawExchange(server.url, "POST", "/uploads/", {"Upload-Draft-Interop-Version": "9", "Upload-Complete": "?1",
                                                      "Content-Disposition": disposition(unique_name())},
                      length=len(MODEL))
    interim = raw.next_head(10)  # before a byte of the body was sent
    assert interim is not None
    status, headers = interim
    assert status == 104
    assert headers["location"].split("/uploads/")[1]    # MUST include Location
    assert limits(headers)["max-size"] > 0               # MUST include Upload-Limit
    assert headers["upload-draft-interop-version"] == "9"  # draft implementations MUST echo it
    raw.send(MODEL)
    answer = raw.answer()
    assert answer is not None and answer.status == 201
    assert answer.headers["location"] == headers["location"]  # every message of the request: one Location
    raw.close()
    TusClient(server.url).wait_installed(headers["location"])


def test_a_104_does_not_stand_in_for_100_continue(server: ServerProcess) -> None:
    raw = RawExchange(server.url, "POST", "/uploads/", {"Upload-Draft-Interop-Version": "9", "Upload-Complete": "?1",
                                                      "Expect": "100-continue",
                                                      "Content-Disposition": disposition(unique_name())},
                      length=len(MODEL))
    first, second = raw.next_head(10), raw.next_head(10)
    assert first is not None and second is not None
    assert [first[0], second[0]] == [100, 104]  # MUST NOT omit the 100 because a 104 was sent
    raw.send(MODEL)
    answer = raw.answer()
    assert answer is not None and answer.status == 201
    raw.close()


@pytest.mark.parametrize("interop", [None, "7", "10"])
def test_no_104_for_a_missing_or_mismatching_interop_version(server: ServerProcess, interop: str | None) -> None:
    headers = {"Upload-Complete": "?1", "Content-Disposition": disposition(unique_name())}
    if interop is not None:
        headers["Upload-Draft-Interop-Version"] = interop
    raw = RawExchange(server.url, "POST", "/uploads/", headers, length=len(MODEL))
    assert raw.next_head(1.0) is None  # nothing before the body (MUST NOT send 104)
    raw.send(MODEL)
    answer = raw.answer()
    assert answer is not None and answer.status == 201 and answer.interim == []
    assert answer.headers["upload-complete"] == "?1"
    raw.close()


def test_creation_through_the_tus_endpoint_and_by_put(client: RufhClient) -> None:
    through_tus = client.create(length=len(MODEL), target="/files/")
    assert through_tus.status_code == 201
    assert "/uploads/" in through_tus.headers["Location"]
    assert "Tus-Resumable" not in through_tus.headers
    by_put = client.create(length=len(MODEL), method="PUT")
    assert by_put.status_code == 201 and "/uploads/" in by_put.headers["Location"]


def test_creation_lengths_that_disagree_are_inconsistent(client: RufhClient, server: ServerProcess) -> None:
    before = sorted((server.staging_dir / "uploads").iterdir())
    response = client.create(MODEL, complete=True, length=len(MODEL) + 1)  # Upload-Length vs Content-Length
    document = problem(response, 400, "inconsistent-upload-length")
    assert document["error"] == "inconsistent_upload_length"
    assert response.headers["Upload-Complete"] == "?0"
    assert sorted((server.staging_dir / "uploads").iterdir()) == before  # nothing created


# -- offset retrieval -------------------------------------------------------------------------------


def test_offset_retrieval_reports_offset_completeness_length_limits_and_no_store(client: RufhClient) -> None:
    location = client.location(MODEL[:1000], length=len(MODEL))
    response = client.head(location)
    assert response.status_code in (200, 204)
    assert response.headers["Upload-Offset"] == "1000"        # MUST
    assert response.headers["Upload-Complete"] == "?0"        # MUST in -12, no longer required later: sent anyway
    assert response.headers["Upload-Length"] == str(len(MODEL))  # likewise, as the client supplied one
    assert 0 < limits(response)["max-age"] <= 7 * 24 * 3600   # MUST indicate the limits
    assert response.headers["Cache-Control"] == "no-store"    # SHOULD


def test_offset_retrieval_without_a_known_length_has_no_upload_length(client: RufhClient) -> None:
    response = client.head(client.location(MODEL[:10]))
    assert response.headers["Upload-Offset"] == "10"
    assert "Upload-Length" not in response.headers


def test_offset_retrieval_of_a_complete_upload_says_complete(client: RufhClient, server: ServerProcess) -> None:
    location = client.location(MODEL, complete=True)
    TusClient(server.url).wait_installed(location)
    response = client.head(location)
    assert response.status_code in (200, 204)
    assert response.headers["Upload-Complete"] == "?1"
    assert response.headers["Upload-Offset"] == str(len(MODEL))


def test_get_on_the_upload_resource_answers_as_head(client: RufhClient) -> None:
    location = client.location(MODEL[:42], length=len(MODEL))
    response = client.request("GET", resource(location))
    assert response.status_code in (200, 204)
    assert response.headers["Upload-Offset"] == "42"


def test_offset_retrieval_of_an_unknown_upload_is_404(client: RufhClient) -> None:
    assert client.head("0" * 32).status_code == 404
    problem(client.request("GET", resource("0" * 32)), 404)


# -- upload append ----------------------------------------------------------------------------------


@pytest.mark.parametrize("media_type", [None, "application/offset+octet-stream", "application/octet-stream"])
def test_append_needs_the_partial_upload_media_type(client: RufhClient, media_type: str | None) -> None:
    location = client.location(length=len(MODEL))
    response = client.append(location, MODEL[:100], 0, headers={"Content-Type": media_type})
    problem(response, 415)
    assert client.offset(location) == 0


def test_append_at_another_offset_is_409_with_the_right_offset(client: RufhClient) -> None:
    location = client.location(MODEL[:500], length=len(MODEL))
    response = client.append(location, MODEL[700:800], 700)
    document = problem(response, 409, "mismatching-upload-offset")
    assert response.headers["Upload-Complete"] == "?0"  # MUST be false
    assert response.headers["Upload-Offset"] == "500"   # MUST give the correct offset
    assert (document["expected-offset"], document["provided-offset"]) == (500, 700)  # SHOULD populate both
    assert client.offset(location) == 500


def test_append_that_leaves_the_upload_incomplete_is_2xx_with_complete_false(client: RufhClient) -> None:
    location = client.location(length=len(MODEL))
    response = client.append(location, MODEL[:4000], 0)
    assert 200 <= response.status_code < 300
    assert response.headers["Upload-Complete"] == "?0"
    assert response.headers["Upload-Offset"] == "4000"


def test_append_that_completes_answers_complete_true_and_installs(client: RufhClient, server: ServerProcess) -> None:
    location = client.location(MODEL[:4000], length=len(MODEL))
    response = client.append(location, MODEL[4000:], 4000, complete=True)
    assert response.status_code == 200
    assert response.headers["Upload-Complete"] == "?1"  # MUST be true
    assert response.json()["status"] == f"/api/uploads/{upload_id(location)}"
    TusClient(server.url).wait_installed(location)


def test_interrupted_append_keeps_what_arrived_and_is_not_complete(client: RufhClient, server: ServerProcess,
                                                                   big: bytes) -> None:
    location = client.location(length=len(big))
    raw = RawExchange(server.url, "PATCH", resource(location),
                      {"Upload-Draft-Interop-Version": "9", "Upload-Complete": "?1", "Upload-Offset": "0",
                       "Content-Type": PARTIAL}, length=len(big))
    raw.send(big[:3 * 1024 * 1024])
    wait_for(lambda: stored_size(server, location) == 3 * 1024 * 1024, 10, "the bytes sent in the file")
    raw.close()
    head = client.head(location)
    assert head.headers["Upload-Complete"] == "?0"  # MUST NOT be considered complete
    offset = int(head.headers["Upload-Offset"])
    assert offset == 3 * 1024 * 1024                 # SHOULD append as much as possible
    assert stored_bytes(server, location) == big[:offset]
    assert client.append(location, big[offset:], offset, complete=True).status_code == 200
    TusClient(server.url).wait_installed(location)


def test_append_past_the_length_is_refused_before_a_byte(client: RufhClient) -> None:
    location = client.location(MODEL[:100], length=200)
    response = client.append(location, MODEL[100:400], 100)
    problem(response, 400, "inconsistent-upload-length")
    assert client.offset(location) == 100  # the offset never passes the length


def test_append_with_another_length_is_inconsistent(client: RufhClient) -> None:
    location = client.location(length=len(MODEL))
    response = client.append(location, MODEL[:10], 0, headers={"Upload-Length": str(len(MODEL) + 5)})
    problem(response, 400, "inconsistent-upload-length")
    assert client.offset(location) == 0


def test_append_completing_with_bytes_missing_is_inconsistent(client: RufhClient) -> None:
    location = client.location(length=len(MODEL))
    response = client.append(location, MODEL[:10], 0, complete=True)  # 10 bytes cannot end a longer upload
    problem(response, 400, "inconsistent-upload-length")
    assert client.offset(location) == 0


def test_append_to_a_completed_upload_is_an_inconsistent_length(client: RufhClient, server: ServerProcess) -> None:
    """From -12 the draft has no completed-upload problem type: more bytes than the length the upload completed at
    are lengths that disagree, and the refusal is the protocol's answer, not the target resource's."""
    location = client.location(MODEL, complete=True)
    TusClient(server.url).wait_installed(location)
    response = client.append(location, b"more", len(MODEL))
    document = problem(response, 400, "inconsistent-upload-length")
    assert document["error"] == "inconsistent_upload_length"
    assert response.headers["Upload-Complete"] == "?0"  # false: an invalid operation on a completed upload
    assert response.headers["Upload-Offset"] == str(len(MODEL))


def test_a_mismatching_offset_is_409_with_complete_false_even_once_complete(client: RufhClient,
                                                                            server: ServerProcess) -> None:
    location = client.location(MODEL, complete=True)
    TusClient(server.url).wait_installed(location)
    response = client.append(location, b"", 10, complete=True)
    problem(response, 409, "mismatching-upload-offset")
    assert response.headers["Upload-Complete"] == "?0"  # MUST: the protocol's answer, not the target resource's
    assert response.headers["Upload-Offset"] == str(len(MODEL))
    assert client.head(location).headers["Upload-Complete"] == "?1"  # the upload itself is complete


@pytest.mark.parametrize("interop", [6, 8])
def test_older_revisions_keep_their_completed_upload_answer(server: ServerProcess, interop: int) -> None:
    """Interop 6 (-04/-05) defined completed-upload; 8 was served the same way and is left as real clients know it."""
    old = RufhClient(server.url, interop=interop)
    location = old.location(MODEL, complete=True)
    TusClient(server.url).wait_installed(location)
    response = old.append(location, b"more", len(MODEL))
    problem(response, 400, "completed-upload")
    assert response.headers["Upload-Complete"] == "?1"
    assert old.append(location, b"", 10, complete=True).headers["Upload-Complete"] == "?1"


def test_a_lost_completion_is_answered_again(client: RufhClient, server: ServerProcess) -> None:
    location = client.location(MODEL, complete=True)
    again = client.append(location, b"", len(MODEL), complete=True)  # the client never saw the first answer
    assert again.status_code == 200
    assert again.headers["Upload-Complete"] == "?1"
    TusClient(server.url).wait_installed(location)


def test_a_deferred_length_is_set_by_the_append_that_completes(client: RufhClient, server: ServerProcess) -> None:
    location = client.location(MODEL[:100])  # no length yet
    response = client.append(location, MODEL[100:], 100, complete=True)
    assert response.status_code == 200, response.text
    assert response.headers["Upload-Length"] == str(len(MODEL))  # offset + Content-Length with Upload-Complete
    TusClient(server.url).wait_installed(location)


def test_a_chunked_append_needs_a_known_length(client: RufhClient) -> None:
    """modeldrop admits a body's disk space before storing it: without a length, it must announce its size."""
    location = client.location(MODEL[:100])

    def body() -> Iterator[bytes]:
        yield MODEL[100:2000]

    problem(client.append(location, body(), 100), 411)  # type: ignore[arg-type]
    sized = client.location(MODEL[:100], length=len(MODEL))
    assert client.append(sized, body(), 100).status_code == 204  # type: ignore[arg-type]
    assert client.offset(sized) == 2000


def test_append_reports_its_progress_in_104s_without_location(client: RufhClient, server: ServerProcess,
                                                              big: bytes) -> None:
    location = client.location(length=len(big))
    raw = RawExchange(server.url, "PATCH", resource(location),
                      {"Upload-Draft-Interop-Version": "9", "Upload-Complete": "?1", "Upload-Offset": "0",
                       "Content-Type": PARTIAL}, length=len(big))
    raw.send_slowly(big, seconds=4)
    answer = raw.answer()
    raw.close()
    assert answer is not None and answer.status == 200, answer
    offsets = [int(headers["upload-offset"]) for status, headers in answer.interim if status == 104]
    assert offsets, "no 104 progress answer"
    assert offsets == sorted(offsets) and 0 < offsets[-1] <= len(big)
    assert all("location" not in headers for _, headers in answer.interim)  # MUST NOT include Location
    TusClient(server.url).wait_installed(location)


def test_the_offset_never_decreases(client: RufhClient) -> None:
    location = client.location(length=len(MODEL))
    seen = [client.offset(location)]
    client.append(location, MODEL[:1000], 0)
    seen.append(client.offset(location))
    bad_digest = {"Content-Digest": f"sha-256=:{base64.b64encode(bytes(32)).decode()}:"}
    problem(client.append(location, MODEL[1000:2000], 1000, headers=bad_digest), 400)  # discarded
    seen.append(client.offset(location))
    client.append(location, MODEL[1000:3000], 1000)
    seen.append(client.offset(location))
    assert seen == [0, 1000, 1000, 3000]


# -- integrity digests ------------------------------------------------------------------------------


def test_content_digest_that_matches_is_appended(client: RufhClient) -> None:
    location = client.location(length=len(MODEL))
    response = client.append(location, MODEL[:5000], 0, headers={"Content-Digest": sha256_field(MODEL[:5000])})
    assert response.status_code == 204
    assert client.offset(location) == 5000


def test_content_digest_that_does_not_match_discards_the_request(client: RufhClient, server: ServerProcess) -> None:
    location = client.location(MODEL[:100], length=len(MODEL))
    response = client.append(location, MODEL[100:5000], 100, headers={"Content-Digest": sha256_field(b"other")})
    document = problem(response, 400)
    assert document["error"] == "checksum_mismatch"
    assert client.offset(location) == 100  # SHOULD NOT append the content
    assert stored_bytes(server, location) == MODEL[:100]


def test_repr_digest_is_checked_before_installing(client: RufhClient, server: ServerProcess) -> None:
    tus = TusClient(server.url)
    good = client.location(MODEL, complete=True, headers={"Repr-Digest": sha256_field(MODEL)})
    assert tus.wait_installed(good)["sha256_expected"] == hashlib.sha256(MODEL).hexdigest()


def test_repr_digest_that_does_not_match_is_signalled_by_the_completing_answer(client: RufhClient,
                                                                               server: ServerProcess) -> None:
    """SHOULD consider the upload failed, not process it further, and signal the failure to the client: at once,
    from the hash kept while the bytes arrived, not only later in the upload's status."""
    tus = TusClient(server.url)
    expected = hashlib.sha256(b"another file").hexdigest()
    whole = client.create(MODEL, complete=True, headers={"Repr-Digest": sha256_field(b"another file")})
    document = problem(whole, 400)
    assert document["error"] == "repr_digest_mismatch"
    assert hashlib.sha256(MODEL).hexdigest() in str(document["detail"]) and expected in str(document["detail"])
    status = tus.wait_state(whole.headers["Location"], "installed", "failed")
    assert status["state"] == "failed" and "sha256" in status["reason"]  # SHOULD consider the upload failed
    in_two = client.location(MODEL[:100], length=len(MODEL), headers={"Repr-Digest": sha256_field(b"another file")})
    last = client.append(in_two, MODEL[100:], 100, complete=True)
    assert problem(last, 400)["error"] == "repr_digest_mismatch"
    assert tus.wait_state(in_two, "installed", "failed")["state"] == "failed"


def test_want_repr_digest_gets_the_files_sha256_when_the_upload_completes(client: RufhClient,
                                                                          server: ServerProcess) -> None:
    """The server SHOULD compute the digest in a preferred algorithm it has and return it once complete."""
    created = client.create(MODEL[:100], length=len(MODEL), headers={"Want-Repr-Digest": "sha-512=3, sha-256=7"})
    assert created.status_code == 201 and "Repr-Digest" not in created.headers  # not complete yet
    completed = client.append(created.headers["Location"], MODEL[100:], 100, complete=True,
                              headers={"Want-Repr-Digest": "sha-256=1"})
    assert completed.status_code == 200
    assert completed.headers["Repr-Digest"] == sha256_field(MODEL)
    whole = client.create(MODEL, complete=True, headers={"Want-Repr-Digest": "sha-256=10"})
    assert whole.headers["Repr-Digest"] == sha256_field(MODEL)
    unwanted = client.create(MODEL, complete=True, headers={"Want-Repr-Digest": "sha-512=10, sha-256=0"})
    assert unwanted.status_code == 201 and "Repr-Digest" not in unwanted.headers  # 0: not acceptable
    TusClient(server.url).wait_installed(created.headers["Location"])


# -- cancellation -----------------------------------------------------------------------------------


def test_cancellation_deactivates_the_upload(client: RufhClient) -> None:
    location = client.location(MODEL[:100], length=len(MODEL))
    response = client.delete(location)
    assert response.status_code == 204
    assert client.head(location).status_code in (404, 410)
    assert client.append(location, MODEL[100:200], 100).status_code in (404, 410)


def test_cancellation_ends_a_request_still_appending(client: RufhClient, server: ServerProcess, big: bytes) -> None:
    location = client.location(length=len(big))
    raw = RawExchange(server.url, "PATCH", resource(location),
                      {"Upload-Draft-Interop-Version": "9", "Upload-Complete": "?1", "Upload-Offset": "0",
                       "Content-Type": PARTIAL}, length=len(big))
    raw.send(big[:2 * 1024 * 1024])  # and then nothing: a sender that stalled
    wait_for(lambda: stored_size(server, location) == 2 * 1024 * 1024, 10, "the stalled request's bytes")
    started = time.monotonic()
    assert client.delete(location).status_code == 204
    assert time.monotonic() - started < IDLE_TIMEOUT / 2  # the stalled request was ended, not waited out
    answer = raw.answer(timeout=5)
    assert answer is None or answer.status >= 500
    raw.close()


# -- concurrency ------------------------------------------------------------------------------------


@pytest.mark.parametrize("newcomer", ["HEAD", "PATCH"])
def test_a_new_request_takes_over_from_a_stalled_append(client: RufhClient, server: ServerProcess, big: bytes,
                                                        newcomer: str) -> None:
    location = client.location(length=len(big))
    raw = RawExchange(server.url, "PATCH", resource(location),
                      {"Upload-Draft-Interop-Version": "9", "Upload-Complete": "?1", "Upload-Offset": "0",
                       "Content-Type": PARTIAL}, length=len(big))
    sent = 2 * 1024 * 1024 + 12345
    raw.send(big[:sent])
    wait_for(lambda: stored_size(server, location) == sent, 10, "the stalled request's bytes in the file")
    started = time.monotonic()
    if newcomer == "HEAD":
        offset = client.offset(location)
    else:  # a client resuming blind: its offset is wrong, the answer gives the right one
        offset = int(client.append(location, big[:10], 0).headers["Upload-Offset"])
    assert time.monotonic() - started < IDLE_TIMEOUT / 2
    assert offset == sent  # what arrived before the takeover, durable
    assert stored_bytes(server, location) == big[:sent]
    answer = raw.answer(timeout=5)
    assert answer is None or answer.status >= 500  # the old request was ended
    raw.close()
    assert client.append(location, big[offset:], offset, complete=True).status_code == 200
    TusClient(server.url).wait_installed(location)


# -- limits -----------------------------------------------------------------------------------------


@pytest.mark.parametrize("target", ["/uploads/", "/files/", "/uploads/" + "0" * 32])
def test_options_announces_upload_limit(client: RufhClient, target: str) -> None:
    response = client.options(target, headers={"Upload-Draft-Interop-Version": None})
    assert response.status_code in (200, 204)
    assert limits(response)["max-size"] > 0  # MUST on a resource that creates uploads


# -- revisions real clients speak -------------------------------------------------------------------


def test_draft_01_speaks_upload_incomplete(server: ServerProcess) -> None:
    old = RufhClient(server.url, interop=3)
    name = unique_name()
    raw = RawExchange(server.url, "POST", "/uploads/", {"Upload-Draft-Interop-Version": "3", "Upload-Incomplete": "?1",
                                                      "Content-Disposition": disposition(name)}, length=1000)
    interim = raw.next_head(10)
    assert interim is not None and interim[0] == 104
    assert interim[1]["upload-draft-interop-version"] == "3"
    raw.send(MODEL[:1000])
    created = raw.answer()
    raw.close()
    assert created is not None and created.status == 201
    assert created.headers["upload-incomplete"] == "?1"
    location = created.headers["location"]
    head = old.head(location)
    assert head.status_code == 204 and head.headers["Upload-Incomplete"] == "?1"
    # -01 appends carry no media type, and the last one omits Upload-Incomplete
    appended = old.request("PATCH", resource(location), {"Upload-Offset": "1000"}, MODEL[1000:])
    assert 200 <= appended.status_code < 300 and appended.headers["Upload-Incomplete"] == "?0"
    assert TusClient(server.url).wait_installed(location)["filename"] == name


def test_draft_03_appends_without_a_media_type(server: ServerProcess) -> None:
    draft03 = RufhClient(server.url, interop=5)
    location = draft03.location(length=len(MODEL))
    response = draft03.append(location, MODEL, 0, complete=True, headers={"Content-Type": None})
    assert response.status_code == 200
    TusClient(server.url).wait_installed(location)


def test_draft_05_names_the_lifetime_expires(server: ServerProcess) -> None:
    draft05 = RufhClient(server.url, interop=6)
    response = draft05.create(length=len(MODEL))
    assert "expires" in limits(response) and "max-age" not in limits(response)
    assert draft05.append(response.headers["Location"], MODEL[:10], 0, headers={"Content-Type": None}).status_code \
        == 415  # -04 on: application/partial-upload


def test_interop_8_gets_its_104(server: ServerProcess) -> None:
    raw = RawExchange(server.url, "POST", "/uploads/", {"Upload-Draft-Interop-Version": "8", "Upload-Complete": "?0",
                                                      "Content-Disposition": disposition(unique_name())}, length=10)
    interim = raw.next_head(10)
    assert interim is not None and interim[0] == 104 and interim[1]["upload-draft-interop-version"] == "8"
    raw.send(MODEL[:10])
    answer = raw.answer()
    raw.close()
    assert answer is not None and answer.status == 201


# -- the same uploads as tus ------------------------------------------------------------------------


def test_an_rufh_upload_is_seen_as_a_tus_upload_is(client: RufhClient, server: ServerProcess) -> None:
    created_before = server_metric(server.url, "modeldrop_uploads_created_total")
    received_before = server_metric(server.url, "modeldrop_bytes_received_total")
    name = unique_name()
    location = client.upload(MODEL, chunk=3000, name=name)
    tus = TusClient(server.url)
    status = tus.wait_installed(location)
    assert (status["filename"], status["final_name"], status["length"]) == (name, name, len(MODEL))
    assert tus.offset(f"/files/{upload_id(location)}") == len(MODEL)  # the tus URL of the same upload
    assert server_metric(server.url, "modeldrop_uploads_created_total") == created_before + 1
    assert server_metric(server.url, "modeldrop_bytes_received_total") >= received_before + len(MODEL)
    assert client.head(location).headers["Modeldrop-Status"] == f"/api/uploads/{upload_id(location)}"
    names = [entry["name"] for entry in tus.get_json("/api/models")["models"]]
    assert name in names
