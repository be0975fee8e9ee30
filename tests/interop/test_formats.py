"""Issue 2: our GGUF, safetensors and MLX files as the reference readers see
them (gguf-py, the safetensors package, mlx), and llama.cpp's own tools on
our rewrite of the real SmolLM2 model."""

import json
import pathlib
import re
import subprocess

import gguf
import mlx.core as mx
import numpy as np
import pytest
from safetensors.numpy import load_file as st_load_file

from conftest import ROOT, llama_tool


@pytest.fixture(scope="session")
def write_formats():
    subprocess.run(
        ["cargo", "build", "--release", "--quiet", "--example", "write_formats"],
        cwd=ROOT,
        check=True,
    )
    return ROOT / "target" / "release" / "examples" / "write_formats"


def field_value(field):
    """A gguf-py field as (type list, python value)."""
    types = [t.name for t in field.types]
    if types[0] == "ARRAY" and len(types) > 1 and types[1] == "ARRAY":
        # gguf-py has no contents() for nested arrays; compare raw parts.
        return types, [bytes(p.tobytes()) for p in field.parts]
    return types, field.contents()


def reader_summary(path):
    r = gguf.GGUFReader(str(path))
    fields = {
        name: field_value(f)
        for name, f in r.fields.items()
        if not name.startswith("GGUF.")
    }
    tensors = {
        t.name: (t.tensor_type.name, [int(x) for x in t.shape], bytes(t.data.tobytes()))
        for t in r.tensors
    }
    return fields, tensors


def test_cli_rewrite_matches_source_for_gguf_py(qforge, smollm2, tmp_path):
    out = tmp_path / "rewrite.gguf"
    proc = subprocess.run(
        [qforge, "convert", smollm2, out, "--to", "gguf", "--json"],
        check=True,
        capture_output=True,
        text=True,
    )
    report = json.loads(proc.stdout)
    src_fields, src_tensors = reader_summary(smollm2)
    out_fields, out_tensors = reader_summary(out)

    added = {k for k in out_fields if k not in src_fields}
    assert added and all(k.startswith("qforge.") for k in added), added
    for key, value in src_fields.items():
        assert out_fields[key] == value, key
    assert list(out_fields)[: len(src_fields)] == list(src_fields), "key order changed"
    assert out_tensors == src_tensors

    sha = subprocess.run(["sha256sum", smollm2], check=True, capture_output=True, text=True)
    assert out_fields["qforge.source.sha256"][1] == [sha.stdout.split()[0]]
    out_sha = subprocess.run(["sha256sum", out], check=True, capture_output=True, text=True)
    assert report["files"][0]["sha256"] == out_sha.stdout.split()[0]


def perplexity(model, text, tmp_path):
    proc = subprocess.run(
        [
            llama_tool("llama-perplexity"),
            "-m", model, "-f", text, "-c", "128", "--chunks", "6", "-t", "2",
            "--no-warmup",
        ],
        capture_output=True,
        text=True,
        cwd=tmp_path,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    found = re.search(r"Final estimate: PPL = ([0-9.]+) \+/- ([0-9.]+)", proc.stdout + proc.stderr)
    assert found, (proc.stdout + proc.stderr)[-3000:]
    return found.group(1), found.group(2)


def test_rewrite_gives_the_same_llama_perplexity(qforge, smollm2, gpl3_text, tmp_path):
    out = tmp_path / "rewrite.gguf"
    subprocess.run([qforge, "convert", smollm2, out, "--json"], check=True, capture_output=True)
    original = perplexity(smollm2, gpl3_text, tmp_path)
    rewritten = perplexity(out, gpl3_text, tmp_path)
    assert float(original[0]) > 1.0
    assert rewritten == original


def test_cli_split_and_merge_for_llama_cpp(qforge, smollm2, gpl3_text, tmp_path):
    """Our split set loads in llama.cpp, and llama-gguf-split merges it."""
    subprocess.run(
        [qforge, "convert", smollm2, tmp_path / "smol.gguf", "--split-max-tensors", "100", "--json"],
        check=True,
        capture_output=True,
    )
    parts = sorted(tmp_path.glob("smol-*-of-*.gguf"))
    assert [p.name for p in parts] == [
        "smol-00001-of-00003.gguf",
        "smol-00002-of-00003.gguf",
        "smol-00003-of-00003.gguf",
    ]
    assert perplexity(parts[0], gpl3_text, tmp_path) == perplexity(smollm2, gpl3_text, tmp_path)
    merged = tmp_path / "merged.gguf"
    proc = subprocess.run(
        [llama_tool("llama-gguf-split"), "--merge", parts[0], merged],
        capture_output=True,
        text=True,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    _, src_tensors = reader_summary(smollm2)
    _, merged_tensors = reader_summary(merged)
    assert merged_tensors == src_tensors


KV_CASES = [
    ("u8", 200), ("i8", -100), ("u16", 60000), ("i16", -30000),
    ("u32", 4_000_000_000), ("i32", -2_000_000_000), ("u64", 2**63 + 5),
    ("i64", -(2**62)), ("f32", 1.5), ("f64", -2.25), ("bool", True),
    ("string", "héllo\nwörld"),
]


def test_gguf_written_by_us_reads_in_gguf_py(write_formats, tmp_path):
    rng = np.random.default_rng(7)
    kv = [{"key": "general.architecture", "type": "string", "value": "llama"}]
    kv += [{"key": f"test.{t}", "type": t, "value": v} for t, v in KV_CASES]
    kv += [
        {"key": "test.strings", "type": "array", "element_type": "string", "value": ["a", "", "ünï"]},
        {"key": "test.floats", "type": "array", "element_type": "f32", "value": [0.5, -1.0]},
        {"key": "test.empty", "type": "array", "element_type": "i32", "value": []},
        {"key": "test.bools", "type": "array", "element_type": "bool", "value": [True, False]},
        {
            "key": "test.nested",
            "type": "array",
            "element_type": "array",
            "value": [
                {"element_type": "u16", "value": [1, 2, 3]},
                {"element_type": "string", "value": ["x"]},
            ],
        },
    ]
    arrays = {
        "f32.weight": ("F32", rng.standard_normal((3, 64)).astype(np.float32)),
        "f16.weight": ("F16", rng.standard_normal((2, 32)).astype(np.float16)),
        "scalar": ("F32", np.array([3.0], dtype=np.float32)),
    }
    tensors = []
    for name, (ty, arr) in arrays.items():
        raw = tmp_path / f"{name}.bin"
        raw.write_bytes(arr.tobytes())
        tensors.append({"name": name, "file": str(raw), "ggml_type": ty, "dims": list(arr.shape[::-1])})
    for ty in ["Q8_0", "Q4_0", "Q4_1", "Q5_0", "Q5_1", "BF16"]:
        arr = rng.standard_normal((4, 64)).astype(np.float32)
        qtype = gguf.GGMLQuantizationType[ty]
        data = gguf.quants.quantize(arr, qtype)
        raw = tmp_path / f"{ty}.bin"
        raw.write_bytes(data.tobytes())
        tensors.append({"name": f"q.{ty}", "file": str(raw), "ggml_type": ty, "dims": [64, 4]})
    out = tmp_path / "ours.gguf"
    spec = tmp_path / "spec.json"
    spec.write_text(json.dumps({"format": "gguf", "out": str(out), "kv": kv, "tensors": tensors}))
    subprocess.run([write_formats, spec], check=True)

    r = gguf.GGUFReader(str(out))
    fields = {k: f for k, f in r.fields.items() if not k.startswith("GGUF.")}
    assert list(fields) == [e["key"] for e in kv]
    for t, v in KV_CASES:
        f = fields[f"test.{t}"]
        assert f.types[0].name == {
            "u8": "UINT8", "i8": "INT8", "u16": "UINT16", "i16": "INT16", "u32": "UINT32",
            "i32": "INT32", "u64": "UINT64", "i64": "INT64", "f32": "FLOAT32",
            "f64": "FLOAT64", "bool": "BOOL", "string": "STRING",
        }[t]
        assert f.contents() == v, t
    assert fields["test.strings"].contents() == ["a", "", "ünï"]
    assert fields["test.floats"].contents() == [0.5, -1.0]
    assert fields["test.empty"].contents() == []
    assert fields["test.bools"].contents() == [True, False]
    nested = fields["test.nested"]
    assert [t.name for t in nested.types][:2] == ["ARRAY", "ARRAY"]
    by_name = {t.name: t for t in r.tensors}
    assert set(by_name) == {t["name"] for t in tensors}
    for spec_t in tensors:
        t = by_name[spec_t["name"]]
        assert t.tensor_type.name == spec_t["ggml_type"]
        assert [int(x) for x in t.shape] == spec_t["dims"]
        assert t.data.tobytes() == pathlib.Path(spec_t["file"]).read_bytes()
        assert t.data_offset % 32 == 0


def st_tensors(rng, tmp_path):
    arrays = {
        "model.embed_tokens.weight": rng.standard_normal((16, 8)).astype(np.float32),
        "model.layers.0.mlp.down_proj.weight": rng.standard_normal((8, 16)).astype(np.float16),
        "model.norm.weight": rng.standard_normal((8,)).astype(np.float32),
        "ids": np.arange(5, dtype=np.int64),
        "mask": np.array([1, 0, 1], dtype=np.uint8),
    }
    specs = []
    dtypes = {"float32": "F32", "float16": "F16", "int64": "I64", "uint8": "U8"}
    for name, arr in arrays.items():
        raw = tmp_path / f"{name}.bin"
        raw.write_bytes(arr.tobytes())
        specs.append({"name": name, "file": str(raw), "dtype": dtypes[str(arr.dtype)], "shape": list(arr.shape)})
    return arrays, specs


def test_safetensors_written_by_us_reads_in_safetensors(write_formats, tmp_path):
    arrays, specs = st_tensors(np.random.default_rng(1), tmp_path)
    single = tmp_path / "single.safetensors"
    spec = tmp_path / "spec.json"
    spec.write_text(json.dumps({
        "format": "safetensors", "out": str(single), "tensors": specs,
        "metadata": {"format": "pt", "note": "qforge"},
    }))
    subprocess.run([write_formats, spec], check=True)
    loaded = st_load_file(str(single))
    assert set(loaded) == set(arrays)
    for name, arr in arrays.items():
        assert loaded[name].dtype == arr.dtype and np.array_equal(loaded[name], arr), name
    from safetensors import safe_open
    with safe_open(str(single), "np") as f:
        assert f.metadata() == {"format": "pt", "note": "qforge"}
    # The reference writer's layout: header padded to 8, same bytes as
    # safetensors.numpy.save_file for the same tensors and metadata (one
    # metadata key: the reference keeps them in a hash map, in no set order).
    from safetensors.numpy import save_file
    ours = tmp_path / "ours.safetensors"
    spec.write_text(json.dumps({
        "format": "safetensors", "out": str(ours), "tensors": specs, "metadata": {"format": "pt"},
    }))
    subprocess.run([write_formats, spec], check=True)
    ref = tmp_path / "ref.safetensors"
    save_file(arrays, str(ref), metadata={"format": "pt"})
    assert ref.read_bytes() == ours.read_bytes()

    sharded = tmp_path / "sharded"
    spec.write_text(json.dumps({
        "format": "safetensors", "out": str(sharded), "tensors": specs, "max_shard_bytes": 300,
    }))
    subprocess.run([write_formats, spec], check=True)
    index = json.loads((sharded / "model.safetensors.index.json").read_text())
    shards = sorted(set(index["weight_map"].values()))
    assert len(shards) > 1
    merged = {}
    for shard in shards:
        part = st_load_file(str(sharded / shard))
        assert all(index["weight_map"][k] == shard for k in part)
        merged.update(part)
    assert set(merged) == set(arrays)
    assert index["metadata"]["total_size"] == sum(a.nbytes for a in arrays.values())


def test_mlx_folder_written_by_us_loads_in_mlx(write_formats, tmp_path):
    rng = np.random.default_rng(3)
    w = mx.array(rng.standard_normal((8, 64)).astype(np.float32)).astype(mx.float16)
    wq, scales, biases = mx.quantize(w, group_size=32, bits=4)
    arrays = {
        "model.layers.0.mlp.up_proj.weight": np.array(wq),
        "model.layers.0.mlp.up_proj.scales": np.array(scales),
        "model.layers.0.mlp.up_proj.biases": np.array(biases),
        "model.norm.weight": rng.standard_normal((64,)).astype(np.float16),
    }
    specs = []
    for name, arr in arrays.items():
        raw = tmp_path / f"{name}.bin"
        raw.write_bytes(arr.tobytes())
        dtype = {"uint32": "U32", "float16": "F16"}[str(arr.dtype)]
        specs.append({"name": name, "file": str(raw), "dtype": dtype, "shape": list(arr.shape)})
    out = tmp_path / "mlx-model"
    spec = tmp_path / "spec.json"
    config = {"model_type": "llama", "quantization": {"group_size": 32, "bits": 4, "mode": "affine"}}
    spec.write_text(
        json.dumps({"format": "mlx", "out": str(out), "tensors": specs, "config": config, "total_parameters": 576})
    )
    subprocess.run([write_formats, spec], check=True)

    # mlx-lm's save_config mirrors `quantization` as `quantization_config`.
    assert json.loads((out / "config.json").read_text()) == {**config, "quantization_config": config["quantization"]}
    index = json.loads((out / "model.safetensors.index.json").read_text())
    assert index["metadata"] == {"total_size": sum(a.nbytes for a in arrays.values()), "total_parameters": 576}
    assert set(index["weight_map"]) == set(arrays)
    loaded, meta = mx.load(str(out / "model.safetensors"), return_metadata=True)
    assert meta == {"format": "mlx"}
    for name, arr in arrays.items():
        assert np.array_equal(np.array(loaded[name]), arr), name
    deq = mx.dequantize(
        loaded["model.layers.0.mlp.up_proj.weight"],
        loaded["model.layers.0.mlp.up_proj.scales"],
        loaded["model.layers.0.mlp.up_proj.biases"],
        group_size=32,
        bits=4,
    )
    assert np.array_equal(np.array(deq), np.array(mx.dequantize(wq, scales, biases, group_size=32, bits=4)))
