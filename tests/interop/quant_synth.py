"""Synthetic GGUF models and importance matrices for the quantize tests.

A model here has the tensor names, row lengths, layer count and
hyperparameters of a real one, but only a few rows per matrix: the type a
mix picks depends on names, row length (ne0), experts (ne2) and metadata,
never on the number of rows, so llama-quantize runs on these in
milliseconds and its choices are the real ones.
"""

import struct

import gguf
import numpy as np


def build_model(
    path,
    arch="llama",
    n_layer=4,
    width=256,
    ff=512,
    n_head=8,
    n_head_kv=2,
    tied=False,
    n_expert=0,
    fused_qkv=False,
    rows=2,
    seed=0,
):
    """Writes an F16 GGUF with llama-style tensor names; returns the list
    of (name, ne) of its matrices (ne innermost first)."""
    rng = np.random.default_rng(seed)
    w = gguf.GGUFWriter(str(path), arch)
    w.add_context_length(128)
    w.add_embedding_length(width)
    w.add_block_count(n_layer)
    w.add_feed_forward_length(ff)
    w.add_head_count(n_head)
    w.add_head_count_kv(n_head_kv)
    w.add_layer_norm_rms_eps(1e-5)
    w.add_layer_norm_eps(1e-5)
    if n_expert:
        w.add_expert_count(n_expert)
        w.add_expert_used_count(min(2, n_expert))
    w.add_file_type(1)
    matrices = []

    def tensor(name, ne):
        shape = list(reversed(ne))
        if len(ne) == 1:
            w.add_tensor(name, rng.standard_normal(shape).astype(np.float32))
        else:
            w.add_tensor(name, (rng.standard_normal(shape) * 0.02).astype(np.float16))
            matrices.append((name, ne))

    tensor("token_embd.weight", [width, max(rows, 2)])
    tensor("output_norm.weight", [width])
    if not tied:
        tensor("output.weight", [width, rows])
    for i in range(n_layer):
        p = f"blk.{i}."
        tensor(p + "attn_norm.weight", [width])
        tensor(p + "ffn_norm.weight", [width])
        if fused_qkv:
            tensor(p + "attn_qkv.weight", [width, rows])
        else:
            tensor(p + "attn_q.weight", [width, rows])
            tensor(p + "attn_k.weight", [width, rows])
            tensor(p + "attn_v.weight", [width, rows])
        tensor(p + "attn_output.weight", [width, rows])
        if n_expert:
            tensor(p + "ffn_gate_inp.weight", [width, n_expert])
            tensor(p + "ffn_gate_exps.weight", [width, rows, n_expert])
            tensor(p + "ffn_up_exps.weight", [width, rows, n_expert])
            tensor(p + "ffn_down_exps.weight", [ff, rows, n_expert])
        else:
            tensor(p + "ffn_gate.weight", [width, rows])
            tensor(p + "ffn_up.weight", [width, rows])
            tensor(p + "ffn_down.weight", [ff, rows])
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return matrices


def imatrix_entries(matrices, seed=1):
    """Per matrix (except the token embeddings, which llama-imatrix never
    sees): positive weights, one per column and expert, and a call count."""
    rng = np.random.default_rng(seed)
    out = {}
    for name, ne in matrices:
        if name == "token_embd.weight":
            continue
        n_mat = ne[2] if len(ne) > 2 else 1
        sums = (rng.random(ne[0] * n_mat) * 3 + 0.01).astype(np.float32)
        counts = rng.integers(1, 50, n_mat).astype(np.float32)
        out[name] = (sums, counts)
    return out


def write_imatrix_dat(path, entries, chunks=3, dataset="synthetic.txt"):
    """llama.cpp's legacy .dat format (tools/imatrix save_imatrix_legacy)."""
    with open(path, "wb") as f:
        f.write(struct.pack("<i", len(entries)))
        for name in sorted(entries):
            sums, counts = entries[name]
            raw = name.encode()
            ncall = int(counts.max())
            f.write(struct.pack("<i", len(raw)) + raw)
            f.write(struct.pack("<ii", ncall, len(sums)))
            f.write(sums.astype("<f4").tobytes())
        f.write(struct.pack("<i", chunks))
        raw = dataset.encode()
        f.write(struct.pack("<i", len(raw)) + raw)


def write_imatrix_gguf(path, entries, chunks=3, chunk_size=512, dataset="synthetic.txt"):
    """llama-imatrix's GGUF format (tools/imatrix save_imatrix)."""
    w = gguf.GGUFWriter(str(path), arch="")  # no general.architecture, as llama-imatrix
    w.add_type("imatrix")
    w.add_array("imatrix.datasets", [dataset])
    w.add_uint32("imatrix.chunk_count", chunks)
    w.add_uint32("imatrix.chunk_size", chunk_size)
    for name in sorted(entries):
        sums, counts = entries[name]
        n_mat = len(counts)
        w.add_tensor(name + ".in_sum2", sums.reshape(n_mat, -1))
        w.add_tensor(name + ".counts", counts.reshape(n_mat, 1))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()


def _read_value(b, pos, vtype):
    fixed = {0: 1, 1: 1, 2: 2, 3: 2, 4: 4, 5: 4, 6: 4, 7: 1, 10: 8, 11: 8, 12: 8}
    if vtype in fixed:
        return pos + fixed[vtype]
    if vtype == 8:
        (n,) = struct.unpack_from("<Q", b, pos)
        return pos + 8 + n
    if vtype == 9:
        etype, n = struct.unpack_from("<IQ", b, pos)
        pos += 12
        for _ in range(n):
            pos = _read_value(b, pos, etype)
        return pos
    raise ValueError(f"unknown GGUF value type {vtype}")


def gguf_layout(path):
    """A GGUF file taken apart without interpreting tensor types (gguf-py
    does not know the newest ones): metadata as [(key, type, raw value
    bytes)], tensor infos as [(name, dims, type id, offset)], and the tensor
    data section's bytes."""
    b = open(path, "rb").read()
    magic, version, n_tensors, n_kv = struct.unpack_from("<4sIQQ", b, 0)
    assert magic == b"GGUF", path
    pos = 24
    kv = []
    alignment = 32
    for _ in range(n_kv):
        (n,) = struct.unpack_from("<Q", b, pos)
        key = b[pos + 8 : pos + 8 + n].decode()
        pos += 8 + n
        (vtype,) = struct.unpack_from("<I", b, pos)
        end = _read_value(b, pos + 4, vtype)
        kv.append((key, vtype, b[pos + 4 : end]))
        if key == "general.alignment":
            (alignment,) = struct.unpack_from("<I", b, pos + 4)
        pos = end
    infos = []
    for _ in range(n_tensors):
        (n,) = struct.unpack_from("<Q", b, pos)
        name = b[pos + 8 : pos + 8 + n].decode()
        pos += 8 + n
        (n_dims,) = struct.unpack_from("<I", b, pos)
        dims = struct.unpack_from(f"<{n_dims}Q", b, pos + 4)
        pos += 4 + 8 * n_dims
        ttype, offset = struct.unpack_from("<IQ", b, pos)
        pos += 12
        infos.append((name, dims, ttype, offset))
    data_start = (pos + alignment - 1) // alignment * alignment
    return {"version": version, "kv": kv, "tensors": infos, "data": b[data_start:]}


def assert_same_gguf(ours, reference):
    """Same metadata (in order, without qforge's `qforge.*` provenance keys:
    ours has its own, and the reference copies the input's when that was
    made by qforge), same tensor infos, same tensor data, byte for byte."""
    a, b = gguf_layout(ours), gguf_layout(reference)
    a_kv = [kv for kv in a["kv"] if not kv[0].startswith("qforge.")]
    b_kv = [kv for kv in b["kv"] if not kv[0].startswith("qforge.")]
    assert [k for k, _, _ in a_kv] == [k for k, _, _ in b_kv], "metadata keys differ"
    for (k, t1, v1), (_, t2, v2) in zip(a_kv, b_kv):
        assert (t1, v1) == (t2, v2), f"metadata {k} differs"
    for x, y in zip(a["tensors"], b["tensors"]):
        assert x == y, f"tensor info differs: {x[:3]} vs {y[:3]}"
    assert len(a["tensors"]) == len(b["tensors"]), "tensor counts differ"
    if a["data"] != b["data"]:
        for name, dims, ttype, offset in a["tensors"]:
            nxt = [o for _, _, _, o in a["tensors"] if o > offset]
            end = min(nxt) if nxt else len(a["data"])
            if a["data"][offset:end] != b["data"][offset:end]:
                raise AssertionError(f"tensor data of {name} differs")
        raise AssertionError("tensor data differs (padding)")
