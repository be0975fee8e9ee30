"""The engine's MLX path against mlx-lm: fixture models converted with
mlx_lm.convert at every affine bit width and group size, logits of the
fixture prompt from qforge vs mlx-lm (float32, as FORMATS.md advises on
x86) on the same folder.
"""

import json
import pathlib
import shutil
import subprocess

import numpy as np
import pytest
from safetensors.numpy import load_file

ROOT = pathlib.Path(__file__).resolve().parents[2]
FIXTURES = ROOT / "fixtures"
# Largest |qforge - mlx-lm| over the row's largest |logit|: both dequantize
# w = scale*q + bias and compute in f32; only summation order differs.
TOL = 1e-4


def mlx_ready_copy(arch, dest):
    """The fixture with the top-level rope keys mlx-lm 0.32 reads
    (FORMATS.md: it ignores transformers 5's rope_parameters)."""
    shutil.copytree(FIXTURES / arch, dest)
    cfg = json.loads((dest / "config.json").read_text())
    rp = cfg.get("rope_parameters", {})
    if "full_attention" in rp:
        cfg["rope_theta"] = rp["full_attention"]["rope_theta"]
        cfg["rope_local_base_freq"] = rp["sliding_attention"]["rope_theta"]
    elif "rope_theta" in rp:
        cfg["rope_theta"] = rp["rope_theta"]
    (dest / "config.json").write_text(json.dumps(cfg, indent=2))
    return dest


@pytest.fixture(scope="session")
def mlx_folder(tmp_path_factory):
    from mlx_lm import convert

    work = tmp_path_factory.mktemp("mlx")
    made = {}

    def make(arch, bits, group):
        key = (arch, bits, group)
        if key not in made:
            src = work / f"{arch}-hf"
            if not src.exists():
                mlx_ready_copy(arch, src)
            out = work / f"{arch}-b{bits}-g{group}"
            convert(str(src), mlx_path=str(out), quantize=True, q_bits=bits, q_group_size=group)
            made[key] = out
        return made[key]

    return make


def compare(qforge, folder, arch, tmp_path):
    import mlx.core as mx
    from mlx_lm import load

    ids = load_file(str(FIXTURES / arch / "golden.safetensors"))["input_ids"].tolist()
    model, _ = load(str(folder))
    model.set_dtype(mx.float32)
    want = np.array(model(mx.array(ids)[None])[0].astype(mx.float32))
    tokens = tmp_path / "ids.json"
    tokens.write_text(json.dumps(ids))
    out = tmp_path / "logits.bin"
    subprocess.run([str(qforge), "verify", str(folder), "--tokens", str(tokens), "--logits-out", str(out)],
                   check=True)
    got = np.fromfile(out, dtype=np.float32).reshape(want.shape)
    rel = (np.abs(got - want).max(1) / np.maximum(np.abs(want).max(1), 1.0)).max()
    assert rel <= TOL, f"{folder.name}: relative max diff {rel}"
    assert (got.argmax(1) == want.argmax(1)).all()


@pytest.mark.parametrize("group", [32, 64, 128])
@pytest.mark.parametrize("bits", [2, 3, 4, 5, 6, 8])
def test_mlx_affine_logits_match_mlx_lm(qforge, mlx_folder, tmp_path, bits, group):
    compare(qforge, mlx_folder("demo-llama", bits, group), "demo-llama", tmp_path)


@pytest.mark.parametrize("arch", ["mistral", "qwen2", "qwen3", "gemma3", "phi3"])
def test_mlx_architectures_match_mlx_lm(qforge, mlx_folder, tmp_path, arch):
    compare(qforge, mlx_folder(arch, 4, 32), arch, tmp_path)
