"""qforge's MLX quantization against `mlx_lm.convert`: for every fixture,
mlx-lm's mixed recipes (`--quant-predicate mixed_2_6 ...`) and plain
`--q-bits`/`--q-group-size`:

- the per-module plan of `qforge quantize --dry-run` quantizes the modules
  mlx-lm quantizes, with its bits and group size, and gives the
  `quantization` block mlx-lm writes into config.json;
- the folder `qforge quantize` writes holds the same tensors, byte for byte,
  and the same config.json (but for the rope keys qforge adds on purpose).

SmolLM2 under a recipe is in test_convert_mlx.py (`qforge convert --to mlx
--quant-predicate`).
"""

import hashlib
import json
import struct
import subprocess
import sys

import pytest

from conftest import ROOT

ARCHS = ["llama", "mistral", "qwen2", "qwen3", "gemma3", "phi3", "demo-llama"]
# (qforge arguments, mlx_lm.convert keyword arguments)
CASES = {
    **{r: (["--quant-predicate", r], dict(quant_predicate=r)) for r in
       ["mixed_2_6", "mixed_3_4", "mixed_3_6", "mixed_4_6"]},
    # 64-wide inputs do not hold groups of 128: those modules stay as they are.
    "mixed_3_6-g128": (["--quant-predicate", "mixed_3_6", "--group-size", "128"],
                       dict(quant_predicate="mixed_3_6", q_group_size=128)),
    "bits3-g32": (["--bits", "3", "--group-size", "32"], dict(q_bits=3, q_group_size=32)),
    "bits8-g128": (["--bits", "8", "--group-size", "128"], dict(q_bits=8, q_group_size=128)),
}

# mlx_lm.convert in a child process (mlx and its model code stay out of the
# test process): writes each requested folder's config.json and tensor
# shapes as JSON lines.
CONVERT = r"""
import hashlib, json, struct, sys, pathlib, contextlib, io
from mlx_lm.convert import convert
for line in sys.stdin:
    job = json.loads(line)
    with contextlib.redirect_stdout(io.StringIO()):
        convert(job["hf"], job["out"], quantize=True, **job["kwargs"])
    out = pathlib.Path(job["out"])
    shapes, tensors = {}, {}
    for f in sorted(out.glob("*.safetensors")):
        b = f.read_bytes()
        (n,) = struct.unpack_from("<Q", b, 0)
        for name, info in json.loads(b[8:8 + n]).items():
            if name != "__metadata__":
                shapes[name] = info["shape"]
                begin, end = info["data_offsets"]
                digest = hashlib.sha256(b[8 + n + begin:8 + n + end]).hexdigest()
                tensors[name] = [info["dtype"], info["shape"], digest]
    print(json.dumps({"config": json.loads((out / "config.json").read_text()), "shapes": shapes,
                      "tensors": tensors}), flush=True)
"""

# Top-level keys of qforge's config.json that mlx_lm.convert does not write
# (see test_convert_mlx.py: mlx-lm 0.32 reads the rope base only there).
ADDED_CONFIG_KEYS = {"rope_theta", "rope_local_base_freq", "rope_scaling"}


def folder_tensors(folder):
    """{name: [dtype, shape, sha256]} of every tensor of an MLX folder."""
    out = {}
    for f in sorted(folder.glob("*.safetensors")):
        b = f.read_bytes()
        (n,) = struct.unpack_from("<Q", b, 0)
        for name, info in json.loads(b[8:8 + n]).items():
            if name != "__metadata__":
                begin, end = info["data_offsets"]
                digest = hashlib.sha256(b[8 + n + begin:8 + n + end]).hexdigest()
                out[name] = [info["dtype"], info["shape"], digest]
    return out


@pytest.fixture(scope="session")
def mlx_lm_outputs(tmp_path_factory):
    """Every (arch, case) through mlx_lm.convert, in one child process."""
    d = tmp_path_factory.mktemp("mlx-lm")
    jobs = [(arch, case) for arch in ARCHS for case in CASES]
    lines = "".join(
        json.dumps({"hf": str(ROOT / "fixtures" / arch), "out": str(d / f"{arch}-{case}"),
                    "kwargs": CASES[case][1]}) + "\n"
        for arch, case in jobs
    )
    r = subprocess.run([sys.executable, "-c", CONVERT], input=lines, capture_output=True, text=True)
    assert r.returncode == 0, r.stderr[-3000:]
    results = [json.loads(line) for line in r.stdout.splitlines() if line.startswith("{")]
    assert len(results) == len(jobs), r.stdout[-2000:]
    for arch, case in jobs:
        subprocess.run(["rm", "-rf", str(d / f"{arch}-{case}")], check=True)
    return dict(zip(jobs, results))


@pytest.mark.parametrize("case", sorted(CASES))
@pytest.mark.parametrize("arch", ARCHS)
def test_plan_matches_mlx_lm(qforge, mlx_lm_outputs, arch, case):
    ref = mlx_lm_outputs[(arch, case)]
    r = subprocess.run(
        [str(qforge), "quantize", str(ROOT / "fixtures" / arch), "--dry-run", "--json", *CASES[case][0]],
        capture_output=True, text=True,
    )
    assert r.returncode == 0, r.stderr
    plan = json.loads(r.stdout)
    assert plan["quantization"] == ref["config"]["quantization"]
    assert plan["quantization"] == ref["config"]["quantization_config"]
    shapes = ref["shapes"]
    quantized = {name[: -len(".scales")] for name in shapes if name.endswith(".scales")}
    ours = {m["path"] for m in plan["modules"] if m["bits"] is not None}
    assert ours == quantized
    for m in plan["modules"]:
        if m["bits"] is None:
            assert shapes[m["path"] + ".weight"] == m["shape"], m["path"]
            continue
        rows, cols = m["shape"][:-1], m["shape"][-1]
        # mlx packs `bits`-bit values into uint32 words, one scale and bias per group.
        assert shapes[m["path"] + ".weight"] == [*rows, cols * m["bits"] // 32], m["path"]
        assert shapes[m["path"] + ".scales"] == [*rows, cols // m["group_size"]], m["path"]
        assert shapes[m["path"] + ".biases"] == [*rows, cols // m["group_size"]], m["path"]


@pytest.mark.parametrize("case", sorted(CASES))
@pytest.mark.parametrize("arch", ARCHS)
def test_folder_matches_mlx_lm(qforge, mlx_lm_outputs, arch, case, tmp_path):
    ref = mlx_lm_outputs[(arch, case)]
    out = tmp_path / "out"
    r = subprocess.run(
        [str(qforge), "quantize", str(ROOT / "fixtures" / arch), str(out), *CASES[case][0], "--method", "rtn"],
        capture_output=True, text=True,
    )
    assert r.returncode == 0, r.stderr
    ours = folder_tensors(out)
    assert sorted(ours) == sorted(ref["tensors"])
    for name, want in ref["tensors"].items():
        assert ours[name] == want, f"{name}: ours {ours[name][:2]}, mlx-lm {want[:2]} (or bytes differ)"
    config = json.loads((out / "config.json").read_text())
    added = {k for k in config if k not in ref["config"]}
    assert added <= ADDED_CONFIG_KEYS, added
    assert {k: v for k, v in config.items() if k not in added} == ref["config"]


def test_requantizing_an_mlx_folder_needs_allow_requantize(qforge, tmp_path):
    four = tmp_path / "four"
    r = subprocess.run([str(qforge), "quantize", str(ROOT / "fixtures" / "llama"), str(four), "--bits", "4"],
                       capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    eight = tmp_path / "eight"
    r = subprocess.run([str(qforge), "quantize", str(four), str(eight), "--bits", "8"],
                       capture_output=True, text=True)
    assert r.returncode == 1
    assert "--allow-requantize" in r.stderr and "already quantized" in r.stderr
    assert not eight.exists()
    r = subprocess.run([str(qforge), "quantize", str(four), str(eight), "--bits", "8", "--allow-requantize",
                        "--method", "rtn", "--json"], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    config = json.loads((eight / "config.json").read_text())
    assert config["quantization"] == {"group_size": 64, "bits": 8, "mode": "affine"}
    # The 8-bit copy of the 4-bit values stays within a quarter of a 4-bit step of them (an
    # 8-bit step is a 17th of it; the rest is bf16 rounding of the scales, biases and values).
    import mlx.core as mx
    a = mx.load(str(four / "model.safetensors"))
    b = mx.load(str(eight / "model.safetensors"))
    name = "model.layers.0.mlp.down_proj"
    wa = mx.dequantize(a[name + ".weight"], a[name + ".scales"], a[name + ".biases"], group_size=64, bits=4)
    wb = mx.dequantize(b[name + ".weight"], b[name + ".scales"], b[name + ".biases"], group_size=64, bits=8)
    step = (a[name + ".scales"].astype(mx.float32)).max().item() / 4
    assert mx.abs(wa.astype(mx.float32) - wb.astype(mx.float32)).max().item() <= step
