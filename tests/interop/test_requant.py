"""Requantizing what is already quantized (issue 12), against gguf-py,
llama-quantize and llama-perplexity, on SmolLM2-135M.

- Where the target's grid holds the source's (Q4_1 -> Q5_1; Q4_0 -> Q8_0),
  every tensor of qforge's output dequantizes (gguf-py) to the source's
  values, and the plan says so; llama-quantize's output of the same type
  does not (the check can fail).
- Elsewhere the grid search's blocks are never further from the source
  values than llama-quantize's blocks of the same type, block by block
  (gguf-py dequantizes all three files).
- `--exact-grid off` writes llama-quantize's bytes.
- A Q4_K_M source (llama-quantize from F16): qforge's Q5_K_M and Q6_K have
  a lower KL divergence against it than llama-quantize's, by
  llama-perplexity --kl-divergence over two windows.

MLX group 32 from the Q4_1 file (`qforge convert --to mlx`, which
transcodes Q4_0/Q4_1/Q8_0 blocks) is test_convert_mlx.py's
test_smollm2_gguf_to_mlx_is_lossless (mlx dequantizes our folder). A GGUF
changes types only through `qforge quantize` (convert refuses).
"""

import json
import re
import subprocess

import gguf
import numpy as np
import pytest

from conftest import llama_tool
from quant_synth import assert_same_gguf

THREADS = "2"
CTX = "512"
# Two windows of 512 tokens (510 scored): the differences measured here
# are tenfold, far above the noise of so few tokens.
CHUNKS = "2"


def llama_quantize(src, dst, ftype, requantize=True):
    cmd = [str(llama_tool("llama-quantize"))]
    if requantize:
        cmd.append("--allow-requantize")
    r = subprocess.run([*cmd, str(src), str(dst), ftype, THREADS], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr[-3000:]
    return dst


def qforge_quantize(qforge, src, dst, ftype, *extra):
    cmd = [str(qforge), "quantize", str(src), str(dst), "--type", ftype, "--threads", THREADS, *extra]
    r = subprocess.run(cmd, capture_output=True, text=True)
    assert r.returncode == 0, r.stderr[-3000:]
    return dst


def qforge_plan(qforge, src, ftype, *extra):
    r = subprocess.run([str(qforge), "quantize", str(src), "--type", ftype, "--dry-run", "--json", *extra],
                       capture_output=True, text=True)
    assert r.returncode == 0, r.stderr[-3000:]
    return {t["name"]: t for t in json.loads(r.stdout)["tensors"]}


def values(path, names=None):
    """{name: (type name, float32 values)} as gguf-py dequantizes them (of
    the tensors in `names`, default all)."""
    r = gguf.GGUFReader(str(path))
    return {t.name: (t.tensor_type.name, gguf.quants.dequantize(t.data, t.tensor_type).astype(np.float32))
            for t in r.tensors if names is None or t.name in names}


@pytest.fixture(scope="module")
def work(tmp_path_factory):
    return tmp_path_factory.mktemp("requant")


@pytest.fixture(scope="module")
def f16(work, smollm2):
    """SmolLM2's values in F16, by llama-quantize."""
    return llama_quantize(smollm2, work / "f16.gguf", "F16")


@pytest.fixture(scope="module")
def q4_0(work, f16):
    return llama_quantize(f16, work / "q4_0.gguf", "Q4_0", requantize=False)


@pytest.fixture(scope="module")
def q4_k_m(work, f16):
    return llama_quantize(f16, work / "q4_k_m.gguf", "Q4_K_M", requantize=False)


def assert_holds_source_values(src, out):
    want, got = values(src), values(out)
    assert want.keys() == got.keys()
    changed = [name for name, (_, v) in want.items() if not np.array_equal(v, got[name][1])]
    assert not changed, f"{len(changed)} tensors changed value, e.g. {changed[:3]}"
    return want, got


@pytest.mark.parametrize("source,ftype,source_type", [("smollm2", "Q5_1", "Q4_1"), ("q4_0", "Q8_0", "Q4_0")])
def test_nested_grids_keep_every_value(qforge, request, work, source, ftype, source_type):
    src = request.getfixturevalue(source)
    plan = qforge_plan(qforge, src, ftype)
    moved = [t for t in plan.values() if t["from"] == source_type]
    assert len(moved) == 210, len(moved)
    assert all(t["method"] == "exact" and t["lossless"] for t in moved), moved[:2]
    # Lossless: no --allow-requantize needed.
    ours = qforge_quantize(qforge, src, work / f"ours-{ftype}.gguf", ftype)
    want, got = assert_holds_source_values(src, ours)
    assert {got[t["name"]][0] for t in moved} == {ftype}
    # The oracle tells the two apart: llama-quantize's values differ (in
    # every one of the first layers' matrices).
    ref = llama_quantize(src, work / f"llama-{ftype}.gguf", ftype)
    first = {t["name"] for t in moved if t["name"].startswith(("blk.0.", "blk.1."))}
    ref_values = values(ref, first)
    assert len(first) == 14 and all(not np.array_equal(want[n][1], ref_values[n][1]) for n in first)
    for p in (ours, ref):
        p.unlink()


def block_sq_errors(src, out, block):
    d = (out.astype(np.float64) - src.astype(np.float64)).reshape(-1, block)
    return (d * d).sum(axis=1)


@pytest.mark.parametrize("source,ftype,searched", [
    ("smollm2", "Q8_0", "Q4_1"),   # 210 Q4_1 matrices into Q8_0 blocks
    ("q4_k_m", "Q6_K", "Q4_K"),    # the ffn_down matrices llama.cpp left in Q4_K
])
def test_grid_search_is_never_worse_than_llama_quantize(qforge, request, work, source, ftype, searched):
    src = request.getfixturevalue(source)
    plan = qforge_plan(qforge, src, ftype, "--allow-requantize")
    names = [n for n, t in plan.items() if t["method"] == "grid search"]
    assert names and all(plan[n]["from"] == searched for n in names)
    ours = values(qforge_quantize(qforge, src, work / "ours.gguf", ftype, "--allow-requantize"), names)
    ref = values(llama_quantize(src, work / "llama.gguf", ftype), names)
    want = values(src, names)
    block = 32 if ftype == "Q8_0" else 256
    total_ours = total_ref = 0.0
    for n in names:
        x = want[n][1]
        eo, er = block_sq_errors(x, ours[n][1], block), block_sq_errors(x, ref[n][1], block)
        worse = np.flatnonzero(eo > er * (1 + 1e-9) + 1e-30)
        assert worse.size == 0, f"{n}: {worse.size} blocks further from the source than llama-quantize's"
        total_ours, total_ref = total_ours + eo.sum(), total_ref + er.sum()
    print(f"{source} -> {ftype}: squared error against the source {total_ours:.4e}, llama-quantize {total_ref:.4e}")
    assert total_ours < 0.8 * total_ref, (total_ours, total_ref)


@pytest.mark.parametrize("source,ftype", [("smollm2", "Q5_1"), ("smollm2", "Q8_0"), ("q4_k_m", "Q6_K")])
def test_exact_grid_off_is_llama_quantize(qforge, request, work, source, ftype):
    src = request.getfixturevalue(source)
    ours = qforge_quantize(qforge, src, work / "ours.gguf", ftype, "--allow-requantize", "--exact-grid", "off")
    ref = llama_quantize(src, work / "llama.gguf", ftype)
    assert_same_gguf(ours, ref)


def kld(model, base, text):
    r = subprocess.run(
        [str(llama_tool("llama-perplexity")), "-m", str(model), "-f", str(text), "-c", CTX, "--chunks", CHUNKS,
         "-t", THREADS, "--kl-divergence-base", str(base), "--kl-divergence"],
        capture_output=True, text=True)
    assert r.returncode == 0, r.stderr[-3000:]
    return float(re.search(r"Mean\s+KLD:\s+(-?[0-9.e-]+)", r.stdout + r.stderr).group(1))


def test_q4_k_m_requantized_beats_llama_quantize_on_kl_divergence(qforge, work, q4_k_m, gpl3_text):
    base = work / "q4_k_m.kld"
    r = subprocess.run(
        [str(llama_tool("llama-perplexity")), "-m", str(q4_k_m), "-f", str(gpl3_text), "-c", CTX,
         "--chunks", CHUNKS, "-t", THREADS, "--kl-divergence-base", str(base)],
        capture_output=True, text=True)
    assert r.returncode == 0, r.stderr[-3000:]
    results = {}
    for ftype in ["Q5_K_M", "Q6_K"]:
        ours = qforge_quantize(qforge, q4_k_m, work / f"ours-{ftype}.gguf", ftype, "--allow-requantize")
        ref = llama_quantize(q4_k_m, work / f"llama-{ftype}.gguf", ftype)
        results[ftype] = (kld(ours, base, gpl3_text), kld(ref, base, gpl3_text))
        ours.unlink()
        ref.unlink()
    # The floor: the source's very values in F32 (llama.cpp then quantizes
    # no activations), measured 0.005 over these windows.
    f32 = llama_quantize(q4_k_m, work / "f32.gguf", "F32")
    floor = kld(f32, base, gpl3_text)
    f32.unlink()
    print(f"KLD against the Q4_K_M source (ours, llama-quantize): {results}; same values in F32: {floor}")
    for ftype, (ours, ref) in results.items():
        assert ours < ref, f"{ftype}: qforge {ours}, llama-quantize {ref}"
    # Every Q4_K_M value has a place in Q5_K_M (Q5_0 -> Q5_1, Q4_K -> Q5_K,
    # the rest copied): what is left is the compute path's noise (measured
    # 0.0062; llama-quantize's Q5_K_M 0.040).
    assert results["Q5_K_M"][0] < 1.5 * floor, (results, floor)
