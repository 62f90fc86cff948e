"""What a .gguf file says about itself, read from its header alone: pure, stdlib only.

The header is untrusted input from an upload. Every count and length is checked against a fixed limit and
against what is left of the file *before* it is used, so a hostile header ends in a `GGUFError` with a
reason a person can read, quickly and in bounded memory. Nothing else escapes `parse_header`.

Layout and rules: the GGUF specification (docs/gguf.md in the ggml repository), and split files as
llama.cpp's gguf-split writes them (`<name>-00001-of-00003.gguf`, split.* keys). Where the spec is
loose, this parser follows what llama.cpp's loader (ggml/src/gguf.cpp) refuses, because a file that
passes here is about to be handed to llama-server:
- big-endian files are refused (not parsed): llama-server on x86-64/ARM cannot load them;
- arrays of arrays are refused: llama.cpp rejects them;
- a key may appear only once;
- tensors must be packed in order (each offset = end of the previous tensor, padded to the alignment).
"""

from __future__ import annotations

import dataclasses
import hashlib
import math
import os
import re
import struct
from collections import Counter
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import NamedTuple

MAGIC = b"GGUF"
SUPPORTED_VERSIONS = (2, 3)
DEFAULT_ALIGNMENT = 32

# Limits on untrusted numbers. Real headers are far below all of them (a Llama 3 header is ~9 MB).
MAX_HEADER_BYTES = 512 * 1024 * 1024
MAX_KEY_BYTES = 64 * 1024
MAX_STRING_BYTES = 64 * 1024 * 1024
MAX_KEPT_STRING_BYTES = 4096  # strings we keep (name, size label) are for display; longer ones are cut
MAX_KV_COUNT = 100_000  # real models carry tens of keys; bounds parse time on hostile headers
MAX_TENSOR_COUNT = 1_000_000  # the largest MoE shards hold thousands; bounds worker memory and time
MAX_TENSOR_NAME_BYTES = 256  # llama.cpp allows 63; leave room, but stay bounded
MAX_DIMS = 8
MAX_ARRAY_STRINGS = 16 * 1024 * 1024  # strings walked in all arrays; vocabularies hold < 1 million
MAX_ELEMENTS = 2**62  # dims, element counts, offsets: anything larger is nonsense, not a model

READ_BLOCK_BYTES = 1024 * 1024

# A multimodal projector's header (see GGUFFacts.is_projector), and the word llama-server's models-dir scan looks
# for in a file name inside a model's folder to take that file as the projector (common/preset.cpp: "mmproj").
PROJECTOR_ARCHITECTURE = "clip"
PROJECTOR_TYPE = "mmproj"
PROJECTOR_NAME_MARK = "mmproj"


def magic_verdict(data: bytes, start: int = 0) -> bool | None:
    """Whether `data`, a file's bytes from offset `start` on, agree with the GGUF magic at its head.

    True once they cover the magic and match it (or start lies past it), None while they are a true prefix
    of it (more bytes decide), False as soon as they contradict it. The one check of the magic for every
    way bytes arrive: a request body, a spliced body, a concatenation of partials.
    """
    expected = MAGIC[start:]
    if not expected.startswith(data[:len(expected)]):
        return False
    return True if len(data) >= len(expected) else None


class TensorType(NamedTuple):
    name: str
    block_size: int  # elements per block
    type_size: int  # bytes per block


# ggml tensor types known to gguf 0.19.0 (gguf.GGML_QUANT_SIZES); a test cross-checks this table.
TENSOR_TYPES: dict[int, TensorType] = {
    0: TensorType("F32", 1, 4),
    1: TensorType("F16", 1, 2),
    2: TensorType("Q4_0", 32, 18),
    3: TensorType("Q4_1", 32, 20),
    6: TensorType("Q5_0", 32, 22),
    7: TensorType("Q5_1", 32, 24),
    8: TensorType("Q8_0", 32, 34),
    9: TensorType("Q8_1", 32, 40),
    10: TensorType("Q2_K", 256, 84),
    11: TensorType("Q3_K", 256, 110),
    12: TensorType("Q4_K", 256, 144),
    13: TensorType("Q5_K", 256, 176),
    14: TensorType("Q6_K", 256, 210),
    15: TensorType("Q8_K", 256, 292),
    16: TensorType("IQ2_XXS", 256, 66),
    17: TensorType("IQ2_XS", 256, 74),
    18: TensorType("IQ3_XXS", 256, 98),
    19: TensorType("IQ1_S", 256, 50),
    20: TensorType("IQ4_NL", 32, 18),
    21: TensorType("IQ3_S", 256, 110),
    22: TensorType("IQ2_S", 256, 82),
    23: TensorType("IQ4_XS", 256, 136),
    24: TensorType("I8", 1, 1),
    25: TensorType("I16", 1, 2),
    26: TensorType("I32", 1, 4),
    27: TensorType("I64", 1, 8),
    28: TensorType("F64", 1, 8),
    29: TensorType("IQ1_M", 256, 56),
    30: TensorType("BF16", 1, 2),
    34: TensorType("TQ1_0", 256, 54),
    35: TensorType("TQ2_0", 256, 66),
    39: TensorType("MXFP4", 32, 17),
    40: TensorType("NVFP4", 64, 36),
    41: TensorType("Q1_0", 128, 18),
}

# general.file_type values (gguf.LlamaFileType in 0.19.0, without its MOSTLY_/ALL_ prefixes).
# An unknown value is not an error: llama.cpp adds new ones, and the field is only a label.
QUANTIZATION_NAMES: dict[int, str] = {
    0: "F32", 1: "F16", 2: "Q4_0", 3: "Q4_1", 7: "Q8_0", 8: "Q5_0", 9: "Q5_1",
    10: "Q2_K", 11: "Q3_K_S", 12: "Q3_K_M", 13: "Q3_K_L", 14: "Q4_K_S", 15: "Q4_K_M",
    16: "Q5_K_S", 17: "Q5_K_M", 18: "Q6_K", 19: "IQ2_XXS", 20: "IQ2_XS", 21: "Q2_K_S",
    22: "IQ3_XS", 23: "IQ3_XXS", 24: "IQ1_S", 25: "IQ4_NL", 26: "IQ3_S", 27: "IQ3_M",
    28: "IQ2_S", 29: "IQ2_M", 30: "IQ4_XS", 31: "IQ1_M", 32: "BF16", 36: "TQ1_0",
    37: "TQ2_0", 38: "MXFP4_MOE", 39: "NVFP4", 40: "Q1_0", 1024: "GUESSED",
}

# The GGUF metadata value types: fixed-size ones by struct format, plus string and array.
_INTEGER_FORMATS = {0: "B", 1: "b", 2: "H", 3: "h", 4: "I", 5: "i", 10: "Q", 11: "q"}
_FIXED_SIZES = {0: 1, 1: 1, 2: 2, 3: 2, 4: 4, 5: 4, 6: 4, 7: 1, 10: 8, 11: 8, 12: 8}
_STRING, _ARRAY, _UINT32 = 8, 9, 4
_VALUE_TYPE_NAMES = {0: "u8", 1: "i8", 2: "u16", 3: "i16", 4: "u32", 5: "i32", 6: "f32", 7: "bool",
                     8: "string", 9: "array", 10: "u64", 11: "i64", 12: "f64"}

_U32 = struct.Struct("<I")
_U64 = struct.Struct("<Q")
_MIN_TENSOR_INFO_BYTES = 8 + 4 + 8 + 4 + 8  # empty name, one dim, type, offset
_MIN_KV_BYTES = 8 + 4 + 1  # empty key, type, one-byte value


class GGUFError(Exception):
    """The file is not a GGUF model llama-server could load; `reason` says why, in one sentence.

    `code` is stable for programs and tests: not_gguf, big_endian, unsupported_version, truncated,
    trailing_data, limit_exceeded, corrupt, bad_shard_name, split_incomplete, split_inconsistent,
    not_projector, set_incomplete, set_inconsistent.
    """

    def __init__(self, reason: str, *, code: str = "corrupt") -> None:
        super().__init__(reason)
        self.reason = reason
        self.code = code


@dataclass(frozen=True)
class GGUFFacts:
    version: int
    tensor_count: int
    kv_count: int
    alignment: int
    data_offset: int  # where tensor data starts: the end of the tensor infos, aligned up
    expected_end: int  # data_offset + end of the last tensor: a complete file is at least this long
    architecture: str | None  # required to run, but absent from shards after the first
    name: str | None
    size_label: str | None
    file_type: int | None
    quantization: str | None  # file_type as a name, e.g. 15 -> "Q4_K_M"; None when unknown
    context_length: int | None  # "{architecture}.context_length"
    parameter_count: int  # sum over tensors of their element counts
    split_no: int | None  # 0-based, unlike the 1-based number in shard file names
    split_count: int | None
    split_tensors_count: int | None  # tensors across the whole set (meaningful in the first shard)
    header_bytes: int  # bytes of header parsed: magic to the end of the tensor infos
    general_type: str | None = None  # general.type: "model", "mmproj", "adapter"... (absent from older files)

    @property
    def is_projector(self) -> bool:
        """A multimodal projector (what llama-server takes as --mmproj), not a model that runs on its own.

        llama.cpp's convert_hf_to_gguf.py writes a projector with general.architecture "clip" (gguf-py's
        MODEL_ARCH.MMPROJ) and general.type "mmproj"; the older llava/clip converters wrote only the "clip"
        architecture. Either one says projector.
        """
        return self.architecture == PROJECTOR_ARCHITECTURE or self.general_type == PROJECTOR_TYPE

    def to_json(self) -> dict[str, int | str | None]:
        return dataclasses.asdict(self)


def align_up(offset: int, alignment: int) -> int:
    return (offset + alignment - 1) // alignment * alignment


def _show(raw: bytes) -> str:
    """A name from the file, safe to put in a message: decoded leniently and cut short."""
    text = raw[:80].decode("utf-8", errors="replace")
    return repr(text + "…" if len(raw) > 80 else text)


class _HeaderStream:
    """Sequential reader of the header region, in 1 MiB blocks.

    Invariant: the buffer never holds a byte past min(file_size, MAX_HEADER_BYTES), so anything found
    whole inside the buffer is already within every limit. `where` names what is being read, for errors.
    """

    def __init__(self, read: Callable[[int], bytes], file_size: int) -> None:
        self._read = read
        self.file_size = file_size
        self._readable_end = min(file_size, MAX_HEADER_BYTES)
        self._buf = b""
        self._pos = 0  # index of the next unread byte in _buf
        self._buf_start = 0  # file offset of _buf[0]
        self.where = "the fixed header"

    @property
    def offset(self) -> int:
        return self._buf_start + self._pos

    def remaining(self) -> int:
        return self.file_size - self.offset

    def _check_reachable(self, end: int) -> None:
        if end > self.file_size:
            raise GGUFError(
                f"truncated: the file is {self.file_size:,} bytes but its header continues past that "
                f"(reading {self.where})", code="truncated")
        if end > MAX_HEADER_BYTES:
            raise GGUFError(f"header too large: {self.where} reaches past the first "
                            f"{MAX_HEADER_BYTES // 2**20} MiB of the file", code="limit_exceeded")

    def _read_more(self, n: int) -> bytes:
        """Up to n more bytes from the source, never past the readable end; an empty source is truncation."""
        chunk = self._read(n)
        if len(chunk) > n:  # a source that over-delivers must not break the buffer's invariant
            chunk = chunk[:n]
        if not chunk:
            raise GGUFError(f"truncated: the file ended at byte {self._buf_start + len(self._buf):,}, "
                            f"inside its header (reading {self.where})", code="truncated")
        return chunk

    def _fill(self, need: int) -> None:
        """Makes at least `need` unread bytes available in the buffer."""
        self._check_reachable(self.offset + need)
        chunks = [self._buf[self._pos:]]
        have = len(chunks[0])
        self._buf_start += self._pos
        self._buf, self._pos = b"", 0
        while have < need:
            room = self._readable_end - (self._buf_start + have)
            chunk = self._read_more(min(max(READ_BLOCK_BYTES, need - have), room))
            chunks.append(chunk)
            have += len(chunk)
        self._buf = b"".join(chunks)

    def take(self, n: int) -> bytes:
        if len(self._buf) - self._pos < n:
            self._fill(n)
        start = self._pos
        self._pos += n
        return self._buf[start:self._pos]

    def u32(self) -> int:
        return int(_U32.unpack(self.take(4))[0])

    def u64(self) -> int:
        return int(_U64.unpack(self.take(8))[0])

    def unpack(self, fmt: str, size: int) -> int:
        return int(struct.unpack("<" + fmt, self.take(size))[0])

    def skip(self, n: int) -> None:
        available = len(self._buf) - self._pos
        if n <= available:
            self._pos += n
            return
        self._check_reachable(self.offset + n)
        # Read through without keeping: a 64 MiB string costs a 1 MiB buffer, not 64 MiB.
        left = n - available
        self._buf_start += len(self._buf)
        self._buf, self._pos = b"", 0
        while left > 0:
            chunk = self._read_more(min(READ_BLOCK_BYTES, left))
            self._buf_start += len(chunk)
            left -= len(chunk)

    def string_length(self, limit: int, what: str) -> int:
        length = self.u64()
        if length > limit:
            raise GGUFError(f"corrupt header: {what} at byte {self.offset - 8:,} claims {length:,} bytes "
                            f"(the limit is {limit:,})", code="limit_exceeded")
        return length

    def string_bytes(self, limit: int, what: str) -> bytes:
        return self.take(self.string_length(limit, what))

    def skip_string(self) -> None:
        self.skip(self.string_length(MAX_STRING_BYTES, f"a string in {self.where}"))

    def skip_strings(self, count: int) -> None:
        """Skips `count` length-prefixed strings without decoding them: the vocabulary fast path."""
        unpack_u64 = _U64.unpack_from
        while count:
            buf, pos, end = self._buf, self._pos, len(self._buf)
            # Strings lying wholly inside the buffer are within every limit (see the invariant).
            while count and pos + 8 <= end:
                after = pos + 8 + unpack_u64(buf, pos)[0]
                if after > end:
                    break
                pos = after
                count -= 1
            self._pos = pos
            if count:
                self.skip_string()  # one string across a block boundary, with all the checks
                count -= 1


@dataclass
class _Metadata:
    """The few metadata values we keep, collected while the keys stream past."""

    values: dict[bytes, int | str | _OtherType] = dataclasses.field(default_factory=dict)
    context_lengths: dict[bytes, int | str | _OtherType] = dataclasses.field(default_factory=dict)
    seen_keys: set[bytes] = dataclasses.field(default_factory=set)  # 16-byte digests, to bound memory


@dataclass(frozen=True)
class _OtherType:
    """A kept key held a value of an unexpected type; an error only if the value is asked for."""

    type_name: str


_KEPT_KEYS = frozenset({
    b"general.architecture", b"general.name", b"general.size_label", b"general.file_type",
    b"general.alignment", b"split.no", b"split.count", b"split.tensors.count", b"general.type",
})
_CONTEXT_LENGTH_SUFFIX = b".context_length"
_MAX_CONTEXT_LENGTH_KEYS = 64  # the architecture is not known yet while keys stream past


def _value_type_name(value_type: int) -> str:
    return _VALUE_TYPE_NAMES.get(value_type, f"unknown type {value_type}")


def _check_value_type(value_type: int, where: str) -> None:
    if value_type not in _VALUE_TYPE_NAMES:
        raise GGUFError(f"corrupt header: {where} has unknown value type {value_type}")


def _fits(stream: _HeaderStream, count: int, item_bytes: int, owner: str, items: str) -> None:
    """Refuses a count the file cannot hold: absurd ones as corrupt, plausible ones as truncation."""
    needed = count * item_bytes
    claim = f"{owner} claims {count:,} {items}"
    if needed > MAX_HEADER_BYTES:
        raise GGUFError(f"corrupt header: {claim}, more than a {MAX_HEADER_BYTES // 2**20} MiB header can hold",
                        code="limit_exceeded")
    if needed > stream.remaining():
        raise GGUFError(f"truncated: {claim} (at least {needed:,} bytes) but only {stream.remaining():,} bytes "
                        f"of the {stream.file_size:,}-byte file remain", code="truncated")


class _Budget:
    """Counts strings walked inside arrays, so a header of empty strings cannot keep us busy for minutes."""

    def __init__(self) -> None:
        self.strings_left = MAX_ARRAY_STRINGS

    def spend(self, count: int) -> None:
        self.strings_left -= count
        if self.strings_left < 0:
            raise GGUFError(f"corrupt header: its arrays hold more than {MAX_ARRAY_STRINGS:,} strings",
                            code="limit_exceeded")


def _skip_array(stream: _HeaderStream, budget: _Budget) -> None:
    element_type = stream.u32()
    count = stream.u64()
    where = stream.where
    if element_type == _ARRAY:
        raise GGUFError(f"corrupt header: {where} is an array of arrays, which llama.cpp cannot load")
    _check_value_type(element_type, where)
    if element_type == _STRING:
        _fits(stream, count, 8, f"the string array in {where}", "strings")
        budget.spend(count)
        stream.skip_strings(count)
    else:
        items = f"{_value_type_name(element_type)} values"
        _fits(stream, count, _FIXED_SIZES[element_type], f"the array in {where}", items)
        stream.skip(count * _FIXED_SIZES[element_type])


def _skip_value(stream: _HeaderStream, value_type: int, budget: _Budget) -> None:
    if value_type == _ARRAY:
        _skip_array(stream, budget)
    elif value_type == _STRING:
        stream.skip_string()
    else:
        stream.skip(_FIXED_SIZES[value_type])


def _read_kept_value(stream: _HeaderStream, value_type: int, budget: _Budget) -> int | str | _OtherType:
    if value_type in _INTEGER_FORMATS:
        return stream.unpack(_INTEGER_FORMATS[value_type], _FIXED_SIZES[value_type])
    if value_type == _STRING:
        length = stream.string_length(MAX_STRING_BYTES, f"the string in {stream.where}")
        kept = stream.take(min(length, MAX_KEPT_STRING_BYTES))
        stream.skip(length - len(kept))
        return kept.decode("utf-8", errors="replace")
    _skip_value(stream, value_type, budget)
    return _OtherType(_value_type_name(value_type))


def _read_kv(stream: _HeaderStream, metadata: _Metadata, budget: _Budget) -> None:
    stream.where = "a key"
    key = stream.string_bytes(MAX_KEY_BYTES, "a key")
    stream.where = f"key {_show(key)}"
    digest = hashlib.blake2b(key, digest_size=16).digest()
    if digest in metadata.seen_keys:
        raise GGUFError(f"corrupt header: key {_show(key)} appears twice")
    metadata.seen_keys.add(digest)
    value_type = stream.u32()
    _check_value_type(value_type, stream.where)
    if key == b"general.alignment" and value_type != _UINT32:
        # llama.cpp reads it as u32 only (and aborts on any other type).
        raise GGUFError(f"corrupt header: general.alignment must be a u32, not {_value_type_name(value_type)}")
    if key in _KEPT_KEYS:
        metadata.values[key] = _read_kept_value(stream, value_type, budget)
    elif key.endswith(_CONTEXT_LENGTH_SUFFIX) and len(metadata.context_lengths) < _MAX_CONTEXT_LENGTH_KEYS:
        metadata.context_lengths[key] = _read_kept_value(stream, value_type, budget)
    else:
        _skip_value(stream, value_type, budget)


def _wrong_type(key: bytes, wanted: str, value: int | str | _OtherType) -> GGUFError:
    found = "a string" if isinstance(value, str) else "an integer" if isinstance(value, int) else value.type_name
    return GGUFError(f"corrupt header: key {_show(key)} should hold {wanted} but holds {found}")


def _kept_int(values: dict[bytes, int | str | _OtherType], key: bytes) -> int | None:
    value = values.get(key)
    if value is None or isinstance(value, int):
        return value
    raise _wrong_type(key, "an integer", value)


def _kept_str(values: dict[bytes, int | str | _OtherType], key: bytes) -> str | None:
    value = values.get(key)
    if value is None or isinstance(value, str):
        return value
    raise _wrong_type(key, "a string", value)


def _alignment(metadata: _Metadata) -> int:
    value = _kept_int(metadata.values, b"general.alignment")
    if value is None:
        return DEFAULT_ALIGNMENT
    if value <= 0 or value & (value - 1):
        raise GGUFError(f"corrupt header: general.alignment {value:,} is not a power of two")
    return value


class _TensorTotals(NamedTuple):
    data_end: int  # end of the last tensor, relative to the data section
    parameter_count: int


class _TensorInfo(NamedTuple):
    name: bytes
    dims: tuple[int, ...]
    type_id: int
    offset: int  # relative to the data section


# What follows a tensor's name and n_dims: its dims, ggml type and data offset, read in one go.
_TENSOR_INFO_TAILS = {n_dims: struct.Struct(f"<{n_dims}QIQ") for n_dims in range(1, MAX_DIMS + 1)}


def _read_tensor_info(stream: _HeaderStream) -> _TensorInfo:
    name_length = stream.string_length(MAX_TENSOR_NAME_BYTES, "a tensor name")
    name_and_n_dims = stream.take(name_length + 4)  # one read for both: this loop may run millions of times
    name, n_dims = name_and_n_dims[:name_length], _U32.unpack_from(name_and_n_dims, name_length)[0]
    if not 1 <= n_dims <= MAX_DIMS:
        raise GGUFError(f"corrupt header: tensor {_show(name)} has {n_dims:,} dimensions "
                        f"(expected 1 to {MAX_DIMS})")
    tail = _TENSOR_INFO_TAILS[n_dims]
    *dims, type_id, offset = tail.unpack(stream.take(tail.size))
    return _TensorInfo(name, tuple(dims), type_id, offset)


def _tensor_size(info: _TensorInfo) -> tuple[int, int]:
    """(element count, bytes) of a tensor, refusing what llama.cpp would refuse."""
    elements = math.prod(info.dims)
    if max(info.dims) > MAX_ELEMENTS or elements > MAX_ELEMENTS:
        raise GGUFError(f"corrupt header: tensor {_show(info.name)} has absurd dimensions {list(info.dims)}",
                        code="limit_exceeded")
    tensor_type = TENSOR_TYPES.get(info.type_id)
    if tensor_type is None:
        raise GGUFError(f"unknown tensor type {info.type_id} for tensor {_show(info.name)}")
    if info.dims[0] % tensor_type.block_size:
        raise GGUFError(f"corrupt header: tensor {_show(info.name)} has {info.dims[0]:,} elements per row, "
                        f"not a multiple of the {tensor_type.name} block size {tensor_type.block_size}")
    return elements, elements // tensor_type.block_size * tensor_type.type_size


def _check_offset(info: _TensorInfo, expected: int, alignment: int) -> None:
    if info.offset % alignment:
        raise GGUFError(f"corrupt header: tensor {_show(info.name)} starts at data offset {info.offset:,}, "
                        f"not a multiple of the alignment {alignment}")
    if info.offset != expected:
        raise GGUFError(f"corrupt header: tensor {_show(info.name)} starts at data offset {info.offset:,} but "
                        f"the tensors before it end at {expected:,} (llama.cpp needs them packed in order)")


def _read_tensor_infos(stream: _HeaderStream, count: int, alignment: int) -> _TensorTotals:
    stream.where = "the tensor infos"
    next_offset = 0  # where llama.cpp expects the next tensor: packed in order, each padded
    data_end = 0
    parameter_count = 0
    for _ in range(count):
        info = _read_tensor_info(stream)
        elements, nbytes = _tensor_size(info)
        _check_offset(info, next_offset, alignment)
        data_end = info.offset + nbytes
        next_offset = align_up(data_end, alignment)
        parameter_count += elements
    if next_offset > MAX_ELEMENTS:
        raise GGUFError(f"corrupt header: its tensors claim {next_offset:,} bytes", code="limit_exceeded")
    return _TensorTotals(data_end, parameter_count)


def _read_fixed_header(stream: _HeaderStream) -> tuple[int, int, int]:
    """Magic and version first, so a wrong file gets the plain answer rather than a count error."""
    magic = stream.take(min(stream.file_size, len(MAGIC)))
    if magic != MAGIC:
        if not magic:
            raise GGUFError("not a GGUF file: it is empty", code="not_gguf")
        if MAGIC.startswith(magic):
            raise GGUFError(f"truncated: the file is only {stream.file_size} bytes", code="truncated")
        raise GGUFError(f"not a GGUF file: it starts with {magic!r}, not {MAGIC!r}", code="not_gguf")
    version = stream.u32()
    if version and not version & 0xFFFF:
        raise GGUFError("big-endian GGUF file: llama-server on little-endian machines (x86-64, ARM) cannot load "
                        "it; convert it with gguf-convert-endian", code="big_endian")
    if version not in SUPPORTED_VERSIONS:
        raise GGUFError(f"unsupported GGUF version {version}", code="unsupported_version")
    tensor_count, kv_count = stream.u64(), stream.u64()
    if tensor_count > MAX_TENSOR_COUNT:
        raise GGUFError(f"corrupt header: it claims {tensor_count:,} tensors (the limit is "
                        f"{MAX_TENSOR_COUNT:,})", code="limit_exceeded")
    if kv_count > MAX_KV_COUNT:
        raise GGUFError(f"corrupt header: it claims {kv_count:,} metadata keys (the limit is {MAX_KV_COUNT:,})",
                        code="limit_exceeded")
    _fits(stream, tensor_count, _MIN_TENSOR_INFO_BYTES, "the header", "tensors")
    _fits(stream, kv_count, _MIN_KV_BYTES, "the header", "metadata keys")
    return version, tensor_count, kv_count


def _context_length(metadata: _Metadata, architecture: str | None) -> int | None:
    if architecture is None:
        return None
    key = architecture.encode() + _CONTEXT_LENGTH_SUFFIX
    return _kept_int(metadata.context_lengths, key)


def parse_header(read: Callable[[int], bytes], file_size: int) -> GGUFFacts:
    """Parses a GGUF header from `read(n)` (the next n bytes, fewer only at end of file).

    Reads at most the header region plus one 1 MiB block. Raises GGUFError for anything wrong.
    """
    if file_size < 0:
        raise ValueError(f"file_size must not be negative, got {file_size}")
    stream = _HeaderStream(read, file_size)
    version, tensor_count, kv_count = _read_fixed_header(stream)
    metadata, budget = _Metadata(), _Budget()
    for _ in range(kv_count):
        _read_kv(stream, metadata, budget)
    alignment = _alignment(metadata)
    totals = _read_tensor_infos(stream, tensor_count, alignment)
    data_offset = align_up(stream.offset, alignment)
    values = metadata.values
    architecture = _kept_str(values, b"general.architecture")
    file_type = _kept_int(values, b"general.file_type")
    return GGUFFacts(
        version=version,
        tensor_count=tensor_count,
        kv_count=kv_count,
        alignment=alignment,
        data_offset=data_offset,
        expected_end=data_offset + totals.data_end,
        architecture=architecture,
        name=_kept_str(values, b"general.name"),
        size_label=_kept_str(values, b"general.size_label"),
        file_type=file_type,
        quantization=None if file_type is None else QUANTIZATION_NAMES.get(file_type),
        context_length=_context_length(metadata, architecture),
        parameter_count=totals.parameter_count,
        split_no=_kept_int(values, b"split.no"),
        split_count=_kept_int(values, b"split.count"),
        split_tensors_count=_kept_int(values, b"split.tensors.count"),
        header_bytes=stream.offset,
        general_type=_kept_str(values, b"general.type"),
    )


def read_facts(path: str | os.PathLike[str], file_size: int | None = None) -> GGUFFacts:
    """Parses the header of the file at `path`, reading only the header region (never the whole file).

    `file_size` defaults to the file's size now; pass the expected size to judge a file still growing.
    OSError (missing file, permissions) is not a verdict on the file and propagates as is.
    """
    with open(path, "rb") as file:
        size = os.fstat(file.fileno()).st_size if file_size is None else file_size
        return parse_header(file.read, size)


def check_complete(facts: GGUFFacts, size: int) -> None:
    """Accepts expected_end <= size <= expected_end padded to the alignment (writers may or may not pad)."""
    if size < facts.expected_end:
        raise GGUFError(f"truncated: the file is {size:,} bytes but its tensors need {facts.expected_end:,}",
                        code="truncated")
    padded_end = align_up(facts.expected_end, facts.alignment)
    if size > padded_end:
        raise GGUFError(f"trailing data: the file is {size:,} bytes, {size - facts.expected_end:,} more than "
                        f"its tensors need ({facts.expected_end:,})", code="trailing_data")


def verify_file(path: str | os.PathLike[str], size: int | None = None) -> GGUFFacts:
    """read_facts + check_complete: the header is sound and the file is exactly as long as it says."""
    if size is None:
        size = os.stat(path).st_size
    facts = read_facts(path, size)
    check_complete(facts, size)
    return facts


# --- split (sharded) models, as gguf-split writes them -----------------------------------------------------


@dataclass(frozen=True)
class ShardName:
    prefix: str
    number: int  # 1-based, as in the file name; split.no inside the file is number - 1
    count: int


_SHARD_NAME = re.compile(r"(?P<prefix>.+)-(?P<number>[0-9]{5})-of-(?P<count>[0-9]{5})(?i:\.gguf)")


def parse_shard_name(filename: str) -> ShardName | None:
    """'<prefix>-00001-of-00003.gguf' -> ShardName(prefix, 1, 3); None for a name that is not a shard's.

    A shard-shaped name with impossible numbers (00000, or number > count) raises GGUFError, because
    llama.cpp would try to load it as a shard and fail.
    """
    match = _SHARD_NAME.fullmatch(filename)
    if match is None:
        return None
    number, count = int(match["number"]), int(match["count"])
    if count < 1 or not 1 <= number <= count:
        raise GGUFError(f"bad shard name {filename!r}: a shard number runs from 00001 up to the count "
                        f"after -of-", code="bad_shard_name")
    return ShardName(match["prefix"], number, count)


def missing_shards(present: Iterable[int], count: int) -> list[int]:
    """The 1-based shard numbers in 1..count that are not in `present`."""
    return sorted(set(range(1, count + 1)) - set(present))


def _inconsistent(reason: str) -> GGUFError:
    return GGUFError(reason, code="split_inconsistent")


def _check_names(shards: Sequence[tuple[ShardName, GGUFFacts]]) -> int:
    """All shards share one prefix and one count, and none appears twice; returns the count."""
    names = {(name.prefix, name.count) for name, _ in shards}
    if len(names) > 1:
        listed = ", ".join(f"{prefix}-…-of-{count:05d}" for prefix, count in sorted(names))
        raise _inconsistent(f"the shards belong to different sets: {listed}")
    count = shards[0][0].count
    numbers = Counter(name.number for name, _ in shards)
    twice = sorted(number for number, times in numbers.items() if times > 1)
    if twice:
        raise _inconsistent(f"shard {twice[0]:05d} of {count:05d} appears more than once")
    missing = missing_shards(numbers, count)
    if missing:
        listed = ", ".join(f"{number:05d}" for number in missing)
        verb = "is" if len(missing) == 1 else "are"
        raise GGUFError(f"shard{'s' if len(missing) > 1 else ''} {listed} of {count:05d} {verb} missing",
                        code="split_incomplete")
    return count


def _check_split_keys(name: ShardName, facts: GGUFFacts) -> None:
    label = f"shard {name.number} of {name.count}"
    if facts.split_count is None and name.count == 1:
        return  # a lone "-00001-of-00001" file without split keys is just a single model to llama.cpp
    if facts.split_count is None:
        raise _inconsistent(f"{label} has no split.* keys: it is not a shard of this set")
    if facts.split_count != name.count:
        raise _inconsistent(f"{label} has split.count {facts.split_count}")
    if facts.split_no != name.number - 1:
        raise _inconsistent(f"{label} has split.no {facts.split_no}, expected {name.number - 1} "
                            "(split.no counts from 0)")


def check_split_set(shards: Sequence[tuple[ShardName, GGUFFacts]]) -> None:
    """A sharded model is loadable only when every shard is present once and their split.* keys agree.

    Each shard's own completeness (check_complete) is the caller's job: it needs the file sizes.
    """
    if not shards:
        raise GGUFError("the split set is empty", code="split_incomplete")
    count = _check_names(shards)
    ordered = sorted(shards, key=lambda shard: shard[0].number)
    for name, facts in ordered:
        _check_split_keys(name, facts)
    first = ordered[0][1]
    if first.architecture is None:
        raise _inconsistent(f"shard 1 of {count} has no general.architecture")
    if count == 1 and first.split_count is None:
        return  # a single model under a shard name: nothing to add up
    if first.split_tensors_count is None:
        raise _inconsistent(f"shard 1 of {count} has no split.tensors.count")
    total = sum(facts.tensor_count for _, facts in ordered)
    if total != first.split_tensors_count:
        raise _inconsistent(f"the shards hold {total:,} tensors in all but shard 1 of {count} says "
                            f"split.tensors.count is {first.split_tensors_count:,}")


# --- model sets: a model's folder as llama-server's router reads it ------------------------------------------------


def is_projector_name(filename: str) -> bool:
    """Whether llama-server's scan of a model's folder takes this file as the projector (its name holds "mmproj")."""
    return PROJECTOR_NAME_MARK in filename


def check_model_set(files: Sequence[tuple[str, GGUFFacts]]) -> None:
    """A folder llama-server loads as one model: one model (a single file, or every shard of one split set) and at
    most one projector, each named for the part it is (the scan goes by names: "mmproj" in the name is the
    projector, "-00001-of-" the first shard, any other .gguf the model), and each header saying the same.

    Each file's own completeness (check_complete) is the caller's job, as for check_split_set.
    """
    projectors = [(name, facts) for name, facts in files if is_projector_name(name)]
    models = [(name, facts) for name, facts in files if not is_projector_name(name)]
    if len(projectors) > 1:
        listed = ", ".join(name for name, _ in sorted(projectors, key=lambda item: item[0]))
        raise GGUFError(f"the set holds more than one projector ({listed}): llama-server would use only one of them",
                        code="set_inconsistent")
    for name, facts in projectors:
        if not facts.is_projector:
            raise GGUFError(f"{name} is named as a projector (llama-server takes a file whose name holds "
                            f"{PROJECTOR_NAME_MARK!r} as the projector) but its header says it is a "
                            f"{facts.architecture or 'headerless'} model (general.architecture, general.type), "
                            "not a multimodal projector", code="not_projector")
    for name, facts in models:
        if facts.is_projector:
            raise GGUFError(f"{name} is a multimodal projector (general.architecture {facts.architecture!r}, "
                            f"general.type {facts.general_type!r}), but its name lacks {PROJECTOR_NAME_MARK!r}: "
                            "llama-server would load it as the model; name it mmproj-….gguf", code="set_inconsistent")
    if not models:
        raise GGUFError("the set holds a projector but no model", code="set_incomplete")
    shards: list[tuple[ShardName, GGUFFacts]] = []
    singles = []
    for name, facts in models:
        shard = parse_shard_name(name)
        if shard is None:
            singles.append(name)
        else:
            shards.append((shard, facts))
    if len(singles) > 1 or (singles and shards):
        listed = ", ".join(sorted(name for name, _ in models))
        raise GGUFError(f"the set holds more than one model ({listed}): llama-server would load only one of them",
                        code="set_inconsistent")
    if shards:
        check_split_set(shards)
    elif models[0][1].architecture is None:
        raise GGUFError(f"{models[0][0]} has no general.architecture: llama-server cannot load it",
                        code="set_inconsistent")
