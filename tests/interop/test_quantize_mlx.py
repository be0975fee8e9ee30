"""qforge's MLX quantization choices against `mlx_lm.convert`: for every
fixture, mlx-lm's mixed recipes (`--quant-predicate mixed_2_6 ...`) and
plain `--q-bits`/`--q-group-size`, the per-module plan of `qforge quantize
--dry-run` quantizes the modules mlx-lm quantizes, with its bits and group
size, and gives the `quantization` block mlx-lm writes into config.json.

What is not here yet: `qforge quantize` writing the MLX folder (tensors
byte for byte); `qforge convert --to mlx` writes plain --bits folders and
is tested in test_convert_mlx.py.
"""

import json
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
import json, struct, sys, pathlib, contextlib, io
from mlx_lm.convert import convert
for line in sys.stdin:
    job = json.loads(line)
    with contextlib.redirect_stdout(io.StringIO()):
        convert(job["hf"], job["out"], quantize=True, **job["kwargs"])
    out = pathlib.Path(job["out"])
    shapes = {}
    for f in sorted(out.glob("*.safetensors")):
        b = f.read_bytes()
        (n,) = struct.unpack_from("<Q", b, 0)
        for name, info in json.loads(b[8:8 + n]).items():
            if name != "__metadata__":
                shapes[name] = info["shape"]
    print(json.dumps({"config": json.loads((out / "config.json").read_text()), "shapes": shapes}), flush=True)
"""


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
