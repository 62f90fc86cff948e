"""Real GGUF files for tests, written with the `gguf` package (docs llama-and-gguf.md §2.4 and §3).

Every writer here produces what gguf-py would produce for a model, so GGUFReader and llama.cpp agree
on it; the corruptors (`truncate_by`, `append_junk`, `wrong_magic`) then damage a file on purpose.
Large files are sparse: a real header followed by a hole, so multi-GB tests write only kilobytes.

    from tests.ggufgen import write_model, write_split_set, write_projector, truncate_by
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

import gguf
import numpy as np

Q4_K = gguf.GGMLQuantizationType.Q4_K
Q6_K = gguf.GGMLQuantizationType.Q6_K
F32 = gguf.GGMLQuantizationType.F32

_SPARSE_ROW_ELEMENTS = 4096  # a multiple of every quantization block size (32, 64, 128, 256)


def _align_up(offset: int, alignment: int) -> int:
    return (offset + alignment - 1) // alignment * alignment


def _writer(path: str | os.PathLike[str], arch: str, *, name: str | None, size_label: str | None,
            file_type: int | None, context_length: int | None, alignment: int | None = None,
            split_max_tensors: int = 0) -> gguf.GGUFWriter:
    """A writer with the usual general.* metadata; None leaves a key out."""
    writer = gguf.GGUFWriter(Path(path), arch, split_max_tensors=split_max_tensors)
    if name is not None:
        writer.add_name(name)
    if size_label is not None:
        writer.add_size_label(size_label)
    if file_type is not None:
        writer.add_file_type(int(file_type))
    if context_length is not None:
        writer.add_context_length(context_length)
    if alignment is not None:
        writer.add_custom_alignment(alignment)
    return writer


def _add_vocabulary(writer: gguf.GGUFWriter, n_tokens: int, n_merges: int) -> None:
    """A BPE-style tokenizer: the string arrays that make up most of a real header."""
    writer.add_tokenizer_model("gpt2")
    writer.add_token_list([f"tok{i}" for i in range(n_tokens)])
    writer.add_token_types([1] * n_tokens)
    if n_merges:
        writer.add_token_merges([f"Ġt{i} e{i}" for i in range(n_merges)])


def _add_tensors(writer: gguf.GGUFWriter, count: int, elements: int, prefix: str = "blk") -> None:
    for index in range(count):
        writer.add_tensor(f"{prefix}.{index}.weight", np.arange(elements, dtype=np.float32) + index)


def _write(writer: gguf.GGUFWriter, *, with_data: bool = True) -> None:
    """Header, metadata, tensor infos and (unless sparse) tensor data, in the order gguf-py requires."""
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    if with_data:
        writer.write_tensors_to_file()
    else:
        writer.write_ti_data_to_file()
    writer.close()


def write_model(path: str | os.PathLike[str], *, arch: str = "llama", name: str | None = "Tiny Test",
                tensors: int = 2, tensor_elems: int = 64,
                file_type: int | None = gguf.LlamaFileType.MOSTLY_Q4_K_M, context_length: int | None = 2048,
                size_label: str | None = "1K", alignment: int | None = None, vocab: int = 0,
                extra_bytes: int = 0) -> Path:
    """A small complete model (a few KB): `tensors` F32 tensors of `tensor_elems` elements each.

    `file_type` is only the label in general.file_type (the tensors stay F32); `vocab` adds a tokenizer
    with that many tokens and merges; `extra_bytes` appends junk after the file's end.
    """
    writer = _writer(path, arch, name=name, size_label=size_label, file_type=file_type,
                     context_length=context_length, alignment=alignment)
    if vocab:
        _add_vocabulary(writer, vocab, vocab)
    _add_tensors(writer, tensors, tensor_elems)
    _write(writer)
    if extra_bytes:
        append_junk(path, extra_bytes)
    return Path(path)


def _sparse_tail(writer: gguf.GGUFWriter, path: Path, tensor_bytes: Sequence[int]) -> Path:
    """Writes the header only, then extends the file with a hole to the size its tensors need."""
    _write(writer, with_data=False)
    alignment = writer.data_alignment
    data_size = sum(_align_up(nbytes, alignment) for nbytes in tensor_bytes)
    os.truncate(path, _align_up(path.stat().st_size, alignment) + data_size)
    return path


def _quantized_bytes(shape: Sequence[int], tensor_type: gguf.GGMLQuantizationType) -> int:
    block_size, type_size = gguf.GGML_QUANT_SIZES[tensor_type]
    return int(np.prod(shape)) // block_size * type_size


def _add_tensor_info(writer: gguf.GGUFWriter, name: str, shape: tuple[int, ...],
                     tensor_type: gguf.GGMLQuantizationType) -> int:
    nbytes = _quantized_bytes(shape, tensor_type)
    writer.add_tensor_info(name, shape, np.dtype(np.float32), nbytes, raw_dtype=tensor_type)
    return nbytes


def write_sparse_model(path: str | os.PathLike[str], *, size_gib: float, arch: str = "llama",
                       name: str | None = "Sparse Test", tensors: int = 8,
                       tensor_type: gguf.GGMLQuantizationType = Q4_K,
                       file_type: int | None = gguf.LlamaFileType.MOSTLY_Q4_K_M,
                       context_length: int | None = 8192, size_label: str | None = "8B") -> Path:
    """A sparse file of about `size_gib` GiB: a real header whose tensors make it exactly its full length.

    The file is as long as gguf-py would write it (last tensor padded); its data is a hole of zeros.
    """
    path = Path(path)
    writer = _writer(path, arch, name=name, size_label=size_label, file_type=file_type,
                     context_length=context_length)
    row_bytes = _quantized_bytes((_SPARSE_ROW_ELEMENTS,), tensor_type)
    rows = max(1, int(size_gib * 2**30) // tensors // row_bytes)
    sizes = [_add_tensor_info(writer, f"blk.{index}.weight", (rows, _SPARSE_ROW_ELEMENTS), tensor_type)
             for index in range(tensors)]
    return _sparse_tail(writer, path, sizes)


def shard_path(directory: str | os.PathLike[str], prefix: str, number: int, count: int) -> Path:
    """`<prefix>-0000k-of-0000N.gguf`, 1-based, as gguf-py and llama.cpp name shards."""
    return Path(directory) / gguf.SHARD_NAME_FORMAT.format(prefix, number, count)


def write_shard(path: str | os.PathLike[str], *, split_no: int, split_count: int, split_tensors_count: int,
                tensors: int = 1, tensor_elems: int = 64, arch: str | None = "llama") -> Path:
    """One shard with split.* keys set by hand: to build sets gguf-py would not, e.g. inconsistent ones.

    `arch=None` leaves out all general.* metadata, as real shards after the first do.
    """
    writer = _writer(path, arch or "llama", name=None, size_label=None, file_type=None, context_length=None)
    if arch is None:
        writer.kv_data[0].pop(gguf.Keys.General.ARCHITECTURE)  # the constructor always adds it
    writer.add_uint16(gguf.Keys.Split.LLM_KV_SPLIT_NO, split_no)
    writer.add_uint16(gguf.Keys.Split.LLM_KV_SPLIT_COUNT, split_count)
    writer.add_int32(gguf.Keys.Split.LLM_KV_SPLIT_TENSORS_COUNT, split_tensors_count)
    _add_tensors(writer, tensors, tensor_elems, prefix=f"shard{split_no}")
    _write(writer)
    return Path(path)


def write_split_set(directory: str | os.PathLike[str], prefix: str, count: int, *, tensors_per_shard: int = 1,
                    arch: str = "llama", name: str | None = "Split Test", tensor_elems: int = 64) -> list[Path]:
    """A consistent set of `count` real shards, written by gguf-py itself (`split_max_tensors`).

    Only the first shard carries the model metadata, as with gguf-split. To make the set inconsistent,
    overwrite one shard with `write_shard(...)`, or delete one.
    """
    if count == 1:  # gguf-py does not split a single shard, so write the lone "-00001-of-00001" by hand
        path = shard_path(directory, prefix, 1, 1)
        return [write_shard(path, split_no=0, split_count=1, split_tensors_count=tensors_per_shard,
                            tensors=tensors_per_shard, tensor_elems=tensor_elems, arch=arch)]
    writer = _writer(Path(directory) / f"{prefix}.gguf", arch, name=name, size_label=None,
                     file_type=gguf.LlamaFileType.ALL_F32, context_length=2048,
                     split_max_tensors=tensors_per_shard)
    _add_tensors(writer, count * tensors_per_shard, tensor_elems)
    _write(writer)
    return [shard_path(directory, prefix, number, count) for number in range(1, count + 1)]


def _llama3_tensors(blocks: int, vocab: int) -> list[tuple[str, tuple[int, ...], gguf.GGMLQuantizationType]]:
    """Llama-3-8B's 291 tensors (numpy order: rows, row length) with Q4_K_M-style types."""
    embd, ffn, kv = 4096, 14336, 1024
    per_block = [("attn_norm", (embd,), F32), ("attn_q", (embd, embd), Q4_K), ("attn_k", (kv, embd), Q4_K),
                 ("attn_v", (kv, embd), Q6_K), ("attn_output", (embd, embd), Q4_K),
                 ("ffn_gate", (ffn, embd), Q4_K), ("ffn_up", (ffn, embd), Q4_K),
                 ("ffn_down", (embd, ffn), Q6_K), ("ffn_norm", (embd,), F32)]
    tensors = [("token_embd.weight", (vocab, embd), Q4_K)]
    for block in range(blocks):
        tensors += [(f"blk.{block}.{name}.weight", shape, kind) for name, shape, kind in per_block]
    return tensors + [("output_norm.weight", (embd,), F32), ("output.weight", (vocab, embd), Q6_K)]


def write_llama3_like_header(path: str | os.PathLike[str], *, n_tokens: int = 128_256, n_merges: int = 280_147,
                             blocks: int = 32) -> Path:
    """A Llama-3-8B-like file (~8.7 MB header: 128k tokens, 280k merges, 291 tensors) with a sparse
    ~4.9 GB tail: for speed tests of header parsing."""
    path = Path(path)
    writer = _writer(path, "llama", name="Llama3 Like 8B", size_label="8B",
                     file_type=gguf.LlamaFileType.MOSTLY_Q4_K_M, context_length=8192)
    writer.add_block_count(blocks)
    writer.add_embedding_length(4096)
    _add_vocabulary(writer, n_tokens, n_merges)
    sizes = [_add_tensor_info(writer, name, shape, kind) for name, shape, kind in _llama3_tensors(blocks, n_tokens)]
    return _sparse_tail(writer, path, sizes)


def write_runnable_llama(path: str | os.PathLike[str], *, name: str = "Tiny Runnable", embd: int = 64,
                         heads: int = 4, blocks: int = 2, ffn: int = 128, context_length: int = 256,
                         seed: int = 0) -> Path:
    """A llama model that llama-server really loads and runs (~0.5 MB): random F32 weights, a
    SentencePiece vocabulary of <unk>, <s>, </s>, the 256 byte tokens and a few words.

    The weights are noise, so the text it writes is too; but it is a real model end to end: the loader
    finds every tensor it needs, the tokenizer covers any input (byte fallback), and a completion comes back.
    """
    rng = np.random.default_rng(seed)
    words = ["\u2581" + word for word in ("hello", "world", "the", "a", "model", "runs", "upload", "llama")]
    tokens = ["<unk>", "<s>", "</s>", *(f"<0x{byte:02X}>" for byte in range(256)), *words]
    types = [2, 3, 3, *([6] * 256), *([1] * len(words))]  # unknown, control, byte, normal
    writer = _writer(path, "llama", name=name, size_label=None, file_type=gguf.LlamaFileType.ALL_F32,
                     context_length=context_length)
    writer.add_embedding_length(embd)
    writer.add_block_count(blocks)
    writer.add_feed_forward_length(ffn)
    writer.add_head_count(heads)
    writer.add_head_count_kv(heads)
    writer.add_rope_dimension_count(embd // heads)
    writer.add_layer_norm_rms_eps(1e-5)
    writer.add_vocab_size(len(tokens))
    writer.add_tokenizer_model("llama")
    writer.add_tokenizer_pre("default")
    writer.add_token_list(tokens)
    writer.add_token_scores([0.0] * 259 + [-float(i) for i in range(len(words))])
    writer.add_token_types(types)
    writer.add_unk_token_id(0)
    writer.add_bos_token_id(1)
    writer.add_eos_token_id(2)

    def weight(*shape: int) -> np.ndarray:
        return (rng.standard_normal(shape) * 0.02).astype(np.float32)

    writer.add_tensor("token_embd.weight", weight(len(tokens), embd))
    for block in range(blocks):
        prefix = f"blk.{block}"
        writer.add_tensor(f"{prefix}.attn_norm.weight", np.ones(embd, dtype=np.float32))
        for part in ("attn_q", "attn_k", "attn_v", "attn_output"):
            writer.add_tensor(f"{prefix}.{part}.weight", weight(embd, embd))
        writer.add_tensor(f"{prefix}.ffn_norm.weight", np.ones(embd, dtype=np.float32))
        writer.add_tensor(f"{prefix}.ffn_gate.weight", weight(ffn, embd))
        writer.add_tensor(f"{prefix}.ffn_up.weight", weight(ffn, embd))
        writer.add_tensor(f"{prefix}.ffn_down.weight", weight(embd, ffn))
    writer.add_tensor("output_norm.weight", np.ones(embd, dtype=np.float32))
    writer.add_tensor("output.weight", weight(len(tokens), embd))
    _write(writer)
    return Path(path)


def write_projector(path: str | os.PathLike[str], *, name: str | None = "Tiny Projector", legacy: bool = False,
                    projector_type: str = "mlp", text_embd: int = 64, embd: int = 32, heads: int = 4, blocks: int = 1,
                    ffn: int = 64, image_size: int = 32, patch_size: int = 8, seed: int = 0) -> Path:
    """A small multimodal projector (an `mmproj-*.gguf`), with the header llama.cpp's converters write for one.

    convert_hf_to_gguf.py (MmprojModel) writes general.architecture "clip" (gguf-py's MODEL_ARCH.MMPROJ),
    general.type "mmproj", general.file_type and clip.* keys: clip.has_vision_encoder, clip.projector_type and the
    vision encoder's shape (clip.vision.image_size, patch_size, embedding_length, feed_forward_length, block_count,
    head_count, projection_dim = the text model's embedding length, attention.layer_norm_epsilon, image_mean,
    image_std, use_gelu), then the encoder's tensors (v.patch_embd, v.position_embd, v.blk.N.*) and the projector's
    (mm.0, mm.2 for the llava "mlp" type). `legacy=True` leaves out general.type, as the older llava/clip
    converters (convert_image_encoder_to_gguf.py) did: their files say projector by the "clip" architecture alone.
    With the defaults it is runnable beside write_runnable_llama (whose embedding is 64 wide, `text_embd`): the real
    llama-server loads the pair ("loaded multimodal model") and answers a request carrying an image.
    """
    rng = np.random.default_rng(seed)
    writer = _writer(path, gguf.MODEL_ARCH_NAMES[gguf.MODEL_ARCH.MMPROJ], name=name, size_label=None,
                     file_type=gguf.LlamaFileType.ALL_F32, context_length=None)
    if not legacy:
        writer.add_type(gguf.GGUFType.MMPROJ)
    else:
        writer.add_bool(gguf.Keys.Clip.HAS_LLAVA_PROJECTOR, True)
    writer.add_clip_has_vision_encoder(True)
    writer.add_clip_projector_type(projector_type)
    writer.add_vision_image_size(image_size)
    writer.add_vision_patch_size(patch_size)
    writer.add_vision_embedding_length(embd)
    writer.add_vision_feed_forward_length(ffn)
    writer.add_vision_block_count(blocks)
    writer.add_vision_head_count(heads)
    writer.add_vision_projection_dim(text_embd)
    writer.add_vision_attention_layernorm_eps(1e-6)
    writer.add_vision_image_mean([0.5, 0.5, 0.5])
    writer.add_vision_image_std([0.5, 0.5, 0.5])
    writer.add_vision_use_gelu(True)

    def weight(*shape: int) -> np.ndarray:
        return (rng.standard_normal(shape) * 0.02).astype(np.float32)

    patches = (image_size // patch_size) ** 2
    writer.add_tensor("v.patch_embd.weight", weight(embd, 3, patch_size, patch_size))
    writer.add_tensor("v.class_embd", weight(embd))
    writer.add_tensor("v.position_embd.weight", weight(patches + 1, embd))
    writer.add_tensor("v.pre_ln.weight", np.ones(embd, dtype=np.float32))
    writer.add_tensor("v.pre_ln.bias", np.zeros(embd, dtype=np.float32))
    for block in range(blocks):
        prefix = f"v.blk.{block}"
        for part in ("attn_q", "attn_k", "attn_v", "attn_out"):
            writer.add_tensor(f"{prefix}.{part}.weight", weight(embd, embd))
            writer.add_tensor(f"{prefix}.{part}.bias", np.zeros(embd, dtype=np.float32))
        for norm in ("ln1", "ln2"):
            writer.add_tensor(f"{prefix}.{norm}.weight", np.ones(embd, dtype=np.float32))
            writer.add_tensor(f"{prefix}.{norm}.bias", np.zeros(embd, dtype=np.float32))
        writer.add_tensor(f"{prefix}.ffn_up.weight", weight(ffn, embd))
        writer.add_tensor(f"{prefix}.ffn_up.bias", np.zeros(ffn, dtype=np.float32))
        writer.add_tensor(f"{prefix}.ffn_down.weight", weight(embd, ffn))
        writer.add_tensor(f"{prefix}.ffn_down.bias", np.zeros(embd, dtype=np.float32))
    writer.add_tensor("mm.0.weight", weight(text_embd, embd))
    writer.add_tensor("mm.0.bias", np.zeros(text_embd, dtype=np.float32))
    writer.add_tensor("mm.2.weight", weight(text_embd, text_embd))
    writer.add_tensor("mm.2.bias", np.zeros(text_embd, dtype=np.float32))
    _write(writer)
    return Path(path)


# --- corruptors ------------------------------------------------------------------------------------------


def truncate_by(path: str | os.PathLike[str], n: int) -> Path:
    """Cuts the last n bytes off, like an upload that stopped early."""
    os.truncate(path, os.stat(path).st_size - n)
    return Path(path)


def append_junk(path: str | os.PathLike[str], n: int) -> Path:
    """Appends n non-zero bytes, like a client that sent too much."""
    with open(path, "ab") as file:
        file.write((b"junk" * (n // 4 + 1))[:n])
    return Path(path)


def wrong_magic(path: str | os.PathLike[str]) -> Path:
    """Overwrites the magic with that of the pre-GGUF ggjt format: a realistic wrong file."""
    with open(path, "r+b") as file:
        file.write(b"tjgg")
    return Path(path)
