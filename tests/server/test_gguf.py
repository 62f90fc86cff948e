"""server/gguf.py: facts from real files (cross-checked with gguf.GGUFReader), damaged and hostile headers,
shard names and split sets, speed on a Llama-3-sized header, and fuzzing: parse or GGUFError, nothing else."""

from __future__ import annotations

import io
import json
import struct
import time
from datetime import timedelta
from pathlib import Path

import gguf
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from modeldrop.server import gguf as parser
from modeldrop.server.gguf import GGUFError, ShardName, check_complete, parse_header, read_facts, verify_file
from tests.ggufgen import (shard_path, truncate_by, write_llama3_like_header, write_model,
                           write_shard, write_sparse_model, write_split_set, wrong_magic)


def parse_bytes(data: bytes, file_size: int | None = None) -> parser.GGUFFacts:
    return parse_header(io.BytesIO(data).read, len(data) if file_size is None else file_size)


def raises_code(code: str, call, *args) -> GGUFError:  # type: ignore[no-untyped-def]
    with pytest.raises(GGUFError) as caught:
        call(*args)
    assert caught.value.code == code, caught.value.reason
    return caught.value


# --- hand-built headers, for what no writer would produce ------------------------------------------------


def gguf_string(text: bytes) -> bytes:
    return struct.pack("<Q", len(text)) + text


def kv(key: bytes, value_type: int, payload: bytes) -> bytes:
    return gguf_string(key) + struct.pack("<I", value_type) + payload


def kv_u32(key: bytes, value: int) -> bytes:
    return kv(key, 4, struct.pack("<I", value))


def tensor_info(name: bytes, dims: list[int], type_id: int = 0, offset: int = 0) -> bytes:
    packed_dims = b"".join(struct.pack("<Q", dim) for dim in dims)
    return gguf_string(name) + struct.pack("<I", len(dims)) + packed_dims + struct.pack("<IQ", type_id, offset)


def header(kvs: list[bytes] = (), infos: list[bytes] = (), *, version: int = 3, data: int = 0,
           tensor_count: int | None = None, kv_count: int | None = None) -> bytes:
    """A GGUF file: fixed header, KVs, tensor infos, padding to 32, then `data` zero bytes."""
    body = struct.pack("<4sIQQ", b"GGUF", version, len(infos) if tensor_count is None else tensor_count,
                       len(kvs) if kv_count is None else kv_count) + b"".join(kvs) + b"".join(infos)
    return body + bytes(-len(body) % 32 + data)


ARCH = kv(b"general.architecture", 8, gguf_string(b"llama"))


# --- constant tables against the gguf package ------------------------------------------------------------


def test_tensor_types_match_gguf_quant_sizes():
    ours = {type_id: (entry.name, entry.block_size, entry.type_size) for type_id, entry in parser.TENSOR_TYPES.items()}
    theirs = {int(kind): (kind.name, *sizes) for kind, sizes in gguf.GGML_QUANT_SIZES.items()}
    assert ours == theirs


def test_quantization_names_match_llama_file_type():
    theirs = {int(kind): kind.name.removeprefix("MOSTLY_").removeprefix("ALL_") for kind in gguf.LlamaFileType}
    assert parser.QUANTIZATION_NAMES == theirs


# --- facts from real files -------------------------------------------------------------------------------


def test_read_facts_match_what_was_written(tmp_path):
    path = write_model(tmp_path / "m.gguf", arch="qwen2", name="Qwen Tiny", size_label="0.5B", tensors=3,
                       tensor_elems=32, file_type=gguf.LlamaFileType.MOSTLY_Q4_K_M, context_length=32768)
    facts = read_facts(path)
    assert (facts.version, facts.tensor_count, facts.alignment) == (3, 3, 32)
    assert (facts.architecture, facts.name, facts.size_label) == ("qwen2", "Qwen Tiny", "0.5B")
    assert (facts.file_type, facts.quantization, facts.context_length) == (15, "Q4_K_M", 32768)
    assert facts.parameter_count == 96
    assert (facts.split_no, facts.split_count, facts.split_tensors_count) == (None, None, None)
    assert facts.expected_end <= path.stat().st_size


@pytest.mark.parametrize("variant", ["default", "odd_sizes", "alignment_64", "vocabulary", "no_tensors", "sparse"])
def test_read_facts_match_gguf_reader(tmp_path, variant):
    path = tmp_path / "m.gguf"
    if variant == "sparse":
        write_sparse_model(path, size_gib=1.5)
    else:
        options = {"default": {}, "odd_sizes": {"tensor_elems": 3, "tensors": 5}, "alignment_64": {"alignment": 64},
                   "vocabulary": {"vocab": 500}, "no_tensors": {"tensors": 0}}[variant]
        write_model(path, **options)
    facts = verify_file(path)
    reader = gguf.GGUFReader(path)
    assert facts.data_offset == reader.data_offset
    assert facts.alignment == reader.alignment
    assert facts.tensor_count == len(reader.tensors)
    assert facts.kv_count == reader.fields["GGUF.kv_count"].contents()
    assert facts.parameter_count == sum(int(tensor.n_elements) for tensor in reader.tensors)
    ends = [tensor.data_offset + int(tensor.n_bytes) for tensor in reader.tensors]
    assert facts.expected_end == max(ends, default=reader.data_offset)


def test_facts_to_json_is_plain_json(tmp_path):
    facts = read_facts(write_model(tmp_path / "m.gguf"))
    assert json.loads(json.dumps(facts.to_json())) == facts.to_json()
    assert facts.to_json()["quantization"] == "Q4_K_M"


def test_read_facts_context_length_accepts_u64_and_unknown_file_type_has_no_name():
    data = header([ARCH, kv(b"llama.context_length", 10, struct.pack("<Q", 131072)),
                   kv_u32(b"general.file_type", 999), kv_u32(b"general.alignment", 64)])
    facts = parse_bytes(data)
    assert (facts.context_length, facts.file_type, facts.quantization) == (131072, 999, None)
    assert (facts.alignment, facts.expected_end) == (64, facts.data_offset)


def test_read_facts_ignores_context_length_of_another_architecture():
    facts = parse_bytes(header([kv_u32(b"qwen2.context_length", 4096), ARCH]))
    assert facts.context_length is None


def test_read_facts_cuts_a_long_name_short():
    facts = parse_bytes(header([ARCH, kv(b"general.name", 8, gguf_string(b"x" * 100_000))]))
    assert facts.name == "x" * parser.MAX_KEPT_STRING_BYTES


# --- completeness ----------------------------------------------------------------------------------------


def test_verify_file_accepts_a_complete_file(tmp_path):
    path = write_model(tmp_path / "m.gguf")
    assert verify_file(path).expected_end == path.stat().st_size


def test_verify_file_accepts_truncation_within_trailing_padding(tmp_path):
    path = write_model(tmp_path / "m.gguf", tensor_elems=3)  # last tensor 12 bytes, padded to 32
    facts = read_facts(path)
    padding = path.stat().st_size - facts.expected_end
    assert padding == 20
    verify_file(truncate_by(path, padding))
    error = raises_code("truncated", verify_file, truncate_by(path, 1))
    assert error.reason.startswith("truncated: the file is")


def test_verify_file_reports_truncation_in_data(tmp_path):
    path = truncate_by(write_model(tmp_path / "m.gguf"), 300)
    error = raises_code("truncated", verify_file, path)
    assert "but its tensors need 832" in error.reason


def test_verify_file_reports_truncation_in_header(tmp_path):
    path = write_model(tmp_path / "m.gguf", vocab=200)
    header_bytes = read_facts(path).header_bytes
    for cut in (header_bytes - 1, header_bytes // 2, 30, 25):
        truncate_by(path, path.stat().st_size - cut)
        raises_code("truncated", verify_file, path)


def test_verify_file_reports_trailing_junk(tmp_path):
    path = write_model(tmp_path / "m.gguf", extra_bytes=100)
    error = raises_code("trailing_data", verify_file, path)
    assert error.reason == "trailing data: the file is 932 bytes, 100 more than its tensors need (832)"


def test_check_complete_reports_a_padded_file_grown_by_one_byte(tmp_path):
    facts = read_facts(write_model(tmp_path / "m.gguf", tensor_elems=3))
    check_complete(facts, parser.align_up(facts.expected_end, 32))
    raises_code("trailing_data", check_complete, facts, parser.align_up(facts.expected_end, 32) + 1)


def test_verify_file_reports_wrong_magic(tmp_path):
    error = raises_code("not_gguf", verify_file, wrong_magic(write_model(tmp_path / "m.gguf")))
    assert "b'tjgg'" in error.reason


@pytest.mark.parametrize(("data", "code"), [(b"", "not_gguf"), (b"GGU", "truncated"), (b"PK\x03", "not_gguf"),
                                            (b"GGUF\x03\x00\x00\x00\x00", "truncated")])
def test_parse_header_short_files(data, code):
    raises_code(code, parse_bytes, data)


def test_parse_header_reports_a_file_shorter_than_its_stated_size():
    error = raises_code("truncated", parse_bytes, header([ARCH])[:30], 10_000)
    assert "ended at byte" in error.reason


@pytest.mark.parametrize("version", [0, 1, 4, 0xFFFF])
def test_parse_header_refuses_unsupported_versions(version):
    error = raises_code("unsupported_version", parse_bytes, header(version=version))
    assert error.reason == f"unsupported GGUF version {version}"


def test_parse_header_accepts_version_2():
    assert parse_bytes(header([ARCH], version=2)).version == 2


def test_parse_header_refuses_big_endian_files(tmp_path):
    writer = gguf.GGUFWriter(tmp_path / "be.gguf", "llama", endianess=gguf.GGUFEndian.BIG)
    writer.add_tensor("t.weight", np.zeros(32, dtype=np.float32))  # the writer byte-swaps it
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    raises_code("big_endian", read_facts, tmp_path / "be.gguf")


# --- damaged and hostile headers -------------------------------------------------------------------------


def test_parse_header_reports_unknown_tensor_type():
    error = raises_code("corrupt", parse_bytes, header([ARCH], [tensor_info(b"t", [32], type_id=4)], data=128))
    assert error.reason.startswith("unknown tensor type 4")


def test_parse_header_reports_misaligned_offset():
    error = raises_code("corrupt", parse_bytes, header([ARCH], [tensor_info(b"t", [32], offset=8)], data=256))
    assert "not a multiple of the alignment 32" in error.reason


def test_parse_header_reports_tensors_not_packed_in_order():
    infos = [tensor_info(b"a", [8]), tensor_info(b"b", [8], offset=64)]  # "a" ends at 32 once padded
    error = raises_code("corrupt", parse_bytes, header([ARCH], infos, data=256))
    assert "packed in order" in error.reason


def test_parse_header_reports_rows_not_a_multiple_of_the_block_size():
    error = raises_code("corrupt", parse_bytes, header([ARCH], [tensor_info(b"t", [100, 2], type_id=12)]))
    assert "not a multiple of the Q4_K block size 256" in error.reason


HUGE = 2**64 - 1


@pytest.mark.parametrize(("data", "code", "words"), [
    (header(tensor_count=HUGE), "limit_exceeded", "tensors"),
    (header(kv_count=2**40), "limit_exceeded", "metadata keys"),
    (header(tensor_count=1000), "truncated", "claims 1,000 tensors"),
    (header(kv_count=1000), "truncated", "claims 1,000 metadata keys"),
    (header([struct.pack("<Q", HUGE) + bytes(16)], kv_count=1), "limit_exceeded", "a key"),
    (header([kv(b"k", 8, struct.pack("<Q", 2**40))]), "limit_exceeded", "claims 1,099,511,627,776 bytes"),
    (header([kv(b"k", 8, struct.pack("<Q", 5000))]), "truncated", "key 'k'"),
    (header([kv(b"k", 9, struct.pack("<IQ", 8, 2**62))]), "limit_exceeded", "string array"),
    (header([kv(b"k", 9, struct.pack("<IQ", 8, 1000))]), "truncated", "string array in key 'k'"),
    (header([kv(b"k", 9, struct.pack("<IQ", 4, 1000))]), "truncated", "array in key 'k'"),
    (header([kv(b"k", 9, struct.pack("<IQ", 9, 1))]), "corrupt", "array of arrays"),
    (header([kv(b"k", 13, b"")]), "corrupt", "unknown value type 13"),
    (header([kv(b"k", 9, struct.pack("<IQ", 99, 1))]), "corrupt", "unknown value type 99"),
    (header([ARCH, ARCH]), "corrupt", "appears twice"),
    (header([kv_u32(b"general.alignment", 48)]), "corrupt", "not a power of two"),
    (header([kv_u32(b"general.alignment", 0)]), "corrupt", "not a power of two"),
    (header([kv(b"general.alignment", 10, struct.pack("<Q", 64))]), "corrupt", "must be a u32"),
    (header([kv(b"general.file_type", 8, gguf_string(b"Q4"))]), "corrupt", "should hold an integer"),
    (header([kv(b"general.architecture", 4, struct.pack("<I", 1))]), "corrupt", "should hold a string"),
    (header(infos=[tensor_info(b"t" * 300, [32])]), "limit_exceeded", "a tensor name"),
    (header(infos=[tensor_info(b"t", [])]), "corrupt", "0 dimensions"),
    (header(infos=[tensor_info(b"t", [1] * 9)]), "corrupt", "9 dimensions"),
    (header(infos=[tensor_info(b"t", [2**63])]), "limit_exceeded", "absurd dimensions"),
    (header(infos=[tensor_info(b"t", [2**31, 2**31, 2**31])]), "limit_exceeded", "absurd dimensions"),
])
def test_parse_header_refuses_hostile_numbers(data, code, words):
    error = raises_code(code, parse_bytes, data)
    assert words in error.reason


def string_array(key: bytes, strings: list[bytes]) -> bytes:
    return kv(key, 9, struct.pack("<IQ", 8, len(strings)) + b"".join(gguf_string(text) for text in strings))


def test_parse_header_refuses_a_header_past_the_size_limit(monkeypatch):
    monkeypatch.setattr(parser, "MAX_HEADER_BYTES", 4096)
    error = raises_code("limit_exceeded", parse_bytes, header([ARCH, string_array(b"tokens", [b"t" * 50] * 100)]))
    assert error.reason.startswith("header too large")


def test_parse_header_refuses_too_many_strings(monkeypatch):
    monkeypatch.setattr(parser, "MAX_ARRAY_STRINGS", 10)
    raises_code("limit_exceeded", parse_bytes, header([string_array(b"a", [b""] * 6), string_array(b"b", [b""] * 6)]))


def test_parse_header_never_asks_for_a_claimed_length():
    """A 64 MiB string claim in a small file must not make us request 64 MiB from the source."""
    data = header([kv(b"k", 8, struct.pack("<Q", parser.MAX_STRING_BYTES))])
    requests = []

    def read(n: int) -> bytes:
        requests.append(n)
        return source.read(n)

    source = io.BytesIO(data)
    raises_code("truncated", parse_header, read, len(data))
    assert max(requests) <= len(data)


# --- speed on a real-sized header ------------------------------------------------------------------------


@pytest.fixture(scope="module")
def llama3_like(tmp_path_factory) -> Path:
    return write_llama3_like_header(tmp_path_factory.mktemp("llama3") / "llama3-like.gguf")


def test_read_facts_llama3_like_header_is_fast_and_reads_only_the_header(llama3_like):
    size = llama3_like.stat().st_size
    bytes_read = 0
    with open(llama3_like, "rb") as file:
        def read(n: int) -> bytes:
            nonlocal bytes_read
            chunk = file.read(n)
            bytes_read += len(chunk)
            return chunk

        started = time.perf_counter()
        facts = parse_header(read, size)
        elapsed = time.perf_counter() - started
    assert elapsed < 2.0  # a guard against accidental quadratic work, not a benchmark
    assert facts.header_bytes <= bytes_read <= facts.header_bytes + parser.READ_BLOCK_BYTES
    assert (facts.tensor_count, facts.parameter_count) == (291, 8_030_261_248)
    assert facts.header_bytes > 8_000_000  # the vocabulary was walked, not guessed
    check_complete(facts, size)


# --- shard names -----------------------------------------------------------------------------------------


@pytest.mark.parametrize(("filename", "expected"), [
    ("model-00001-of-00003.gguf", ShardName("model", 1, 3)),
    ("Llama-3.1-70B-Q5_K_M-00002-of-00002.GGUF", ShardName("Llama-3.1-70B-Q5_K_M", 2, 2)),
    ("a-b-00003-of-00010.Gguf", ShardName("a-b", 3, 10)),
    ("x-00001-of-00001.gguf", ShardName("x", 1, 1)),
])
def test_parse_shard_name_reads_valid_names(filename, expected):
    assert parser.parse_shard_name(filename) == expected


@pytest.mark.parametrize("filename", [
    "model.gguf", "model-00001-of-00003.gguf.part", "model-1-of-3.gguf", "-00001-of-00003.gguf",
    "model-000001-of-000003.gguf", "model-00001-OF-00003.gguf", "model-00001-of-00003.bin",
    "model.Q2_K.gguf-split-a", "model-\u0661\u0661\u0661\u0661\u0661-of-00003.gguf",
])
def test_parse_shard_name_returns_none_for_other_names(filename):
    assert parser.parse_shard_name(filename) is None


@pytest.mark.parametrize("filename", ["m-00000-of-00003.gguf", "m-00004-of-00003.gguf", "m-00001-of-00000.gguf"])
def test_parse_shard_name_refuses_impossible_numbers(filename):
    raises_code("bad_shard_name", parser.parse_shard_name, filename)


def test_missing_shards_lists_absent_numbers():
    assert parser.missing_shards([3, 1, 3], 5) == [2, 4, 5]
    assert parser.missing_shards(iter([1, 2]), 2) == []


# --- split sets ------------------------------------------------------------------------------------------


def load_set(paths: list[Path]) -> list[tuple[ShardName, parser.GGUFFacts]]:
    return [(parser.parse_shard_name(path.name), verify_file(path)) for path in paths]


def test_check_split_set_accepts_a_set_written_by_gguf(tmp_path):
    paths = write_split_set(tmp_path, "model", 3, tensors_per_shard=2)
    shards = load_set(paths)
    assert [facts.split_no for _, facts in shards] == [0, 1, 2]
    assert [facts.architecture for _, facts in shards] == ["llama", None, None]
    assert shards[0][1].split_tensors_count == 6
    parser.check_split_set(list(reversed(shards)))


def test_check_split_set_accepts_a_metadata_only_first_shard(tmp_path):
    paths = write_split_set(tmp_path, "model", 3)
    write_shard(paths[0], split_no=0, split_count=3, split_tensors_count=2, tensors=0)
    parser.check_split_set(load_set(paths))


def test_check_split_set_accepts_a_lone_shard_without_split_keys(tmp_path):
    path = write_model(shard_path(tmp_path, "model", 1, 1))
    parser.check_split_set(load_set([path]))


def test_check_split_set_names_the_missing_shards(tmp_path):
    paths = write_split_set(tmp_path, "model", 3)
    error = raises_code("split_incomplete", parser.check_split_set, load_set(paths[:1]))
    assert error.reason == "shards 00002, 00003 of 00003 are missing"
    error = raises_code("split_incomplete", parser.check_split_set, load_set([paths[0], paths[2]]))
    assert error.reason == "shard 00002 of 00003 is missing"
    raises_code("split_incomplete", parser.check_split_set, [])


def test_check_split_set_refuses_duplicates_and_mixed_sets(tmp_path):
    paths = write_split_set(tmp_path, "model", 2)
    other = write_split_set(tmp_path, "other", 2)
    shards = load_set(paths)
    assert "appears more than once" in raises_code("split_inconsistent", parser.check_split_set,
                                                   shards + shards[1:]).reason
    assert "different sets" in raises_code("split_inconsistent", parser.check_split_set,
                                           [shards[0], *load_set(other[1:])]).reason


@pytest.mark.parametrize(("replacement", "reason"), [
    ({"split_no": 5, "split_count": 3, "split_tensors_count": 3}, "shard 2 of 3 has split.no 5, expected 1"),
    ({"split_no": 1, "split_count": 4, "split_tensors_count": 3}, "shard 2 of 3 has split.count 4"),
    ({"split_no": 1, "split_count": 3, "split_tensors_count": 3, "tensors": 2},
     "the shards hold 4 tensors in all but shard 1 of 3 says split.tensors.count is 3"),
])
def test_check_split_set_refuses_inconsistent_split_keys(tmp_path, replacement, reason):
    paths = write_split_set(tmp_path, "model", 3)
    write_shard(paths[1], arch=None, **replacement)
    error = raises_code("split_inconsistent", parser.check_split_set, load_set(paths))
    assert error.reason.startswith(reason)


def test_check_split_set_refuses_a_shard_without_split_keys(tmp_path):
    paths = write_split_set(tmp_path, "model", 2)
    write_model(paths[1])
    assert "has no split.* keys" in raises_code("split_inconsistent", parser.check_split_set, load_set(paths)).reason


def test_check_split_set_needs_architecture_in_the_first_shard(tmp_path):
    paths = write_split_set(tmp_path, "model", 2)
    write_shard(paths[0], split_no=0, split_count=2, split_tensors_count=2, arch=None)
    error = raises_code("split_inconsistent", parser.check_split_set, load_set(paths))
    assert error.reason == "shard 1 of 2 has no general.architecture"


# --- fuzzing: any input parses or raises GGUFError, quickly ----------------------------------------------

FUZZ = settings(max_examples=500, deadline=timedelta(seconds=2),
                suppress_health_check=[HealthCheck.function_scoped_fixture])


def parses_or_refuses(data: bytes, file_size: int | None = None) -> None:
    try:
        parse_bytes(data, file_size)
    except GGUFError as error:
        assert error.reason and error.code


@pytest.fixture(scope="module")
def real_header(tmp_path_factory) -> bytes:
    """A real file with every kind of section: a vocabulary, merges, several tensors."""
    path = write_model(tmp_path_factory.mktemp("fuzz") / "m.gguf", vocab=40, tensors=3, tensor_elems=8)
    return path.read_bytes()


@FUZZ
@given(st.binary(max_size=300))
def test_fuzz_random_bytes(data):
    parses_or_refuses(data)
    parses_or_refuses(b"GGUF\x03\x00\x00\x00" + data)


@FUZZ
@given(flips=st.lists(st.tuples(st.integers(min_value=0), st.integers(0, 255)), min_size=1, max_size=8))
def test_fuzz_byte_flips_of_a_real_header(real_header, flips):
    data = bytearray(real_header)
    for position, value in flips:
        data[position % len(data)] = value
    parses_or_refuses(bytes(data))


@FUZZ
@given(cut=st.integers(min_value=0), claimed_extra=st.sampled_from([0, 1, 2**20, 2**40]))
def test_fuzz_truncations_of_a_real_header(real_header, cut, claimed_extra):
    data = real_header[:cut % (len(real_header) + 1)]
    parses_or_refuses(data)
    parses_or_refuses(data, len(data) + claimed_extra)  # the file claims to be longer than it is


HUGE_INTEGERS = st.sampled_from([2**64 - 1, 2**63, 2**62 + 1, 2**32 - 1, 2**32, 2**31, 2**26, 65537]) | \
    st.integers(min_value=0, max_value=2**64 - 1)


@FUZZ
@given(position=st.integers(min_value=0), value=HUGE_INTEGERS, width=st.sampled_from([4, 8]), insert=st.booleans())
def test_fuzz_huge_integers_in_a_real_header(real_header, position, value, width, insert):
    packed = struct.pack("<Q", value)[:width]
    position %= len(real_header)
    tail = real_header[position:] if insert else real_header[position + width:]
    parses_or_refuses(real_header[:position] + packed + tail)


KEPT_KEYS = [b"general.architecture", b"general.name", b"general.size_label", b"general.file_type",
             b"general.alignment", b"llama.context_length", b"split.no", b"split.count", b"split.tensors.count"]
NUMBERS = st.sampled_from([0, 1, 3, 32, 48, 64, 256, 2**31, 2**32 - 1, 2**62 + 1, 2**64 - 1]) | st.integers(0, 300)


@st.composite
def values(draw) -> tuple[int, bytes]:
    """A value type and a payload that is sometimes well formed and sometimes not."""
    value_type = draw(st.integers(0, 14))
    payload = draw(st.one_of(
        st.binary(max_size=16),
        st.binary(max_size=40).map(gguf_string),
        st.tuples(st.integers(0, 14), NUMBERS, st.binary(max_size=40)).map(
            lambda array: struct.pack("<IQ", array[0], array[1]) + array[2]),
    ))
    return value_type, payload


@st.composite
def generated_files(draw) -> bytes:
    """Headers built field by field, so the fuzzing reaches the tensor infos with odd keys and names."""
    kvs = [kv(key, *value) for key, value in draw(st.lists(
        st.tuples(st.sampled_from(KEPT_KEYS) | st.binary(max_size=12), values()), max_size=6))]
    infos = [tensor_info(name, dims, type_id, offset) for name, dims, type_id, offset in draw(st.lists(
        st.tuples(st.binary(max_size=12), st.lists(NUMBERS, max_size=9), st.integers(0, 45), NUMBERS), max_size=4))]
    counts = draw(st.sampled_from([{}, {"tensor_count": draw(NUMBERS)}, {"kv_count": draw(NUMBERS)}]))
    return header(kvs, infos, version=draw(st.sampled_from([2, 3, 3, 3, 1])), data=draw(st.integers(0, 2048)), **counts)


@settings(FUZZ, max_examples=200)  # generating these costs more than parsing them
@given(generated_files())
def test_fuzz_generated_headers(data):
    try:
        facts = parse_bytes(data)
        check_complete(facts, len(data))
    except GGUFError as error:
        assert error.reason and error.code


@settings(max_examples=300, deadline=timedelta(seconds=1))
@given(st.text(alphabet=st.sampled_from("ab-0123456789ofGUgu."), max_size=40))
def test_fuzz_shard_names(filename):
    try:
        name = parser.parse_shard_name(filename)
    except GGUFError as error:
        assert error.code == "bad_shard_name"
    else:
        assert name is None or 1 <= name.number <= name.count


def test_fuzz_helpers_see_real_files_parse(real_header):
    """The fuzzed seed is itself valid, so mutations start from a header that reaches every section."""
    facts = parse_bytes(real_header)
    assert facts.tensor_count == 3 and facts.expected_end <= len(real_header)


def test_magic_verdict_decides_once_the_bytes_cover_the_magic():
    assert parser.magic_verdict(b"GGUF\x03") is True
    assert parser.magic_verdict(b"GG") is None and parser.magic_verdict(b"") is None
    assert parser.magic_verdict(b"X") is False and parser.magic_verdict(b"GGUX") is False
    assert parser.magic_verdict(b"UF", start=2) is True and parser.magic_verdict(b"U", start=2) is None
    assert parser.magic_verdict(b"F", start=2) is False
    assert parser.magic_verdict(b"anything", start=4) is True  # past the magic: nothing left to check
