"""The upload command line: FILE checks before anything is sent, flags, exit status 2 for usage errors."""

from __future__ import annotations

from pathlib import Path

import pytest

from modeldrop.cli import main as cli_main
from modeldrop.cli import upload
from modeldrop.cli.client import FileSlice, LocalFileError

DIGEST = "cd" * 32


@pytest.fixture
def model(tmp_path: Path) -> Path:
    path = tmp_path / "Tiny-Q8_0.GGUF"
    path.write_bytes(b"GGUF" + bytes(100))
    return path


def test_plan_jobs_records_each_file_as_it_is(model: Path) -> None:
    (job,) = upload.plan_jobs([str(model)], None)
    assert job.path == model and job.size == 104 and job.mtime_ns == model.stat().st_mtime_ns
    assert job.sha256 is None and job.name == "Tiny-Q8_0.GGUF"


def test_plan_jobs_takes_sha256_from_the_flag_or_the_argument(model: Path) -> None:
    assert upload.plan_jobs([str(model)], DIGEST.upper())[0].sha256 == DIGEST
    assert upload.plan_jobs([f"{model}={DIGEST}"], None)[0].sha256 == DIGEST


@pytest.mark.parametrize(("make", "message"), [
    (lambda d: d / "absent.gguf", "No such file"),
    (lambda d: (d / "dir.gguf").mkdir() or d / "dir.gguf", "not a regular file"),
    (lambda d: (d / "notes.txt").write_text("x") and d / "notes.txt", "not a .gguf file"),
])
def test_plan_jobs_refuses_what_cannot_be_a_model(tmp_path: Path, make, message: str) -> None:
    with pytest.raises(upload.UsageError, match=message):
        upload.plan_jobs([str(make(tmp_path))], None)


def test_plan_jobs_refuses_one_digest_for_several_files(model: Path) -> None:
    with pytest.raises(upload.UsageError, match="FILE=SHA256"):
        upload.plan_jobs([str(model), str(model)], DIGEST)


def test_plan_jobs_refuses_a_malformed_digest(model: Path) -> None:
    with pytest.raises(upload.UsageError, match="64 hex"):
        upload.plan_jobs([str(model)], "abc")


def _main(argv: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str]:
    try:
        code = cli_main.main(argv)
    except SystemExit as stop:  # argparse's own usage errors
        code = int(stop.code or 0)
    return code, capsys.readouterr().err


def test_a_missing_file_is_a_usage_error_and_nothing_is_sent(tmp_path: Path, capsys) -> None:
    code, err = _main(["upload", str(tmp_path / "absent.gguf"), "--server", "http://127.0.0.1:9"], capsys)
    assert code == 2
    assert "absent.gguf" in err


def test_one_digest_for_two_files_is_a_usage_error(model: Path, capsys) -> None:
    code, err = _main(["upload", str(model), str(model), "--sha256", DIGEST], capsys)
    assert code == 2 and "FILE=SHA256" in err


def test_a_bad_chunk_size_is_a_usage_error(model: Path, capsys) -> None:
    code, err = _main(["upload", str(model), "--chunk-size", "lots"], capsys)
    assert code == 2 and "not a size" in err


def test_a_bad_server_url_is_a_usage_error(model: Path, capsys) -> None:
    code, err = _main(["upload", str(model), "--server", "example.com"], capsys)
    assert code == 2 and "server URL" in err


def test_upload_help_names_every_flag(capsys) -> None:
    with pytest.raises(SystemExit):
        cli_main.main(["upload", "--help"])
    text = capsys.readouterr().out
    for flag in ("--server", "--token", "--sha256", "--chunk-size", "--retries", "--retry-delay", "--state-file",
                 "--wait", "--no-wait", "--quiet", "--timeout", "MODELDROP_SERVER", "MODELDROP_TOKEN",
                 "MODELDROP_STATE_FILE", "exit status"):
        assert flag in text


def test_an_unreachable_server_fails_after_the_retries(model: Path, tmp_path: Path, capsys) -> None:
    # port 9 (discard) is closed on a test machine: every attempt is refused at once
    code = cli_main.main(["upload", str(model), "--server", "http://127.0.0.1:9", "--retries", "2",
                          "--retry-delay", "0.01", "--state-file", str(tmp_path / "s.json"), "--quiet"])
    out = capsys.readouterr().out
    assert code == 1
    assert out.startswith("failed Tiny-Q8_0.GGUF: gave up after 2 retries") and "connection refused" in out


# ---------------------------------------------------------------- the streamed body


def test_file_slice_reads_only_its_range_in_blocks(tmp_path: Path) -> None:
    path = tmp_path / "data.bin"
    path.write_bytes(bytes(range(256)) * 4)
    seen: list[int] = []
    with open(path, "rb") as handle:
        body = FileSlice(handle, 10, 300, seen.append)
        blocks = iter(lambda: body.read(128), b"")
        data = b"".join(blocks)
    assert data == (bytes(range(256)) * 4)[10:310]
    assert seen == [128, 128, 44]


def test_file_slice_notices_a_file_that_shrank(tmp_path: Path) -> None:
    path = tmp_path / "data.bin"
    path.write_bytes(b"x" * 10)
    with open(path, "rb") as handle:
        body = FileSlice(handle, 5, 20)
        assert body.read(100) == b"x" * 5
        with pytest.raises(LocalFileError, match="shorter"):
            body.read(100)
