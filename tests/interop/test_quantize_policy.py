"""qforge's per-tensor type choice against llama-quantize's, on synthetic
models of many layer counts, widths, head layouts, expert counts and
architectures, for every file type llama-quantize knows, with and without
an importance matrix and with the type options.

llama-quantize really quantizes each model (they are a few rows per
matrix) and the types are read back from its output; qforge answers with
`quantize --dry-run --json`, which needs no kernel, so the mixes qforge
cannot write yet (IQ1/IQ2/IQ3, TQ, MXFP4) are checked too. For the types
whose lattice tables take llama-quantize seconds to build (IQ1, IQ2,
IQ3_XXS/S/M: up to 22 s per run), its own `--dry-run` answers instead: it
prints the types its first pass chose, the pass the real run writes by.
"""

import json
import re
import subprocess

import pytest
from conftest import llama_tool
from quant_synth import build_model, imatrix_entries, write_imatrix_dat, write_imatrix_gguf

# The file types qforge writes.
WRITABLE = [
    "F32", "F16", "BF16", "Q4_0", "Q4_1", "Q5_0", "Q5_1", "Q8_0",
    "Q2_K", "Q3_K_S", "Q3_K_M", "Q3_K_L", "Q4_K_S", "Q4_K_M",
    "Q5_K_S", "Q5_K_M", "Q6_K", "IQ4_NL", "IQ4_XS",
]
# The rest of llama-quantize's types (but COPY): qforge plans them, its
# kernels cannot make all their tensors yet. Their IQ grids take
# llama-quantize seconds to set up, so they run on fewer models.
PLAN_ONLY = ["TQ1_0", "TQ2_0", "MXFP4_MOE", "Q1_0", "Q2_0", "IQ3_XS", "IQ3_S", "IQ3_M"]
# The types whose choices depend on whether an imatrix is given, and the
# ones llama-quantize only makes with one.
IMATRIX_SENSITIVE = ["Q4_0", "Q5_0", "IQ4_NL", "IQ4_XS"]
NEED_IMATRIX = ["Q2_K_S", "IQ3_XXS", "IQ2_XXS", "IQ2_XS", "IQ2_S", "IQ2_M", "IQ1_S", "IQ1_M"]
# Types llama-quantize builds lattice tables for before quantizing.
GRID_TYPES = {"IQ3_S", "IQ3_M", "IQ3_XXS", "IQ2_XXS", "IQ2_XS", "IQ2_S", "IQ2_M", "IQ1_S", "IQ1_M"}
EXOTIC_CASES = {"llama-16l", "llama-80l-gqa8-70b", "llama-moe8", "falcon-32l", "qwen3-28l-tied"}

CASES = {
    # layer counts around every n/8, 7n/8, n/16 boundary
    **{f"llama-{n}l": dict(n_layer=n) for n in [1, 2, 3, 7, 8, 9, 12, 15, 17, 24, 31, 33]},
    "llama-30l-576-tied-gqa3": dict(n_layer=30, width=576, ff=1536, n_head=9, n_head_kv=3, tied=True),
    "llama-32l-mha": dict(n_layer=32, n_head=8, n_head_kv=8),
    "llama-80l-gqa8-70b": dict(n_layer=80, n_head=64, n_head_kv=8, ff=256),
    "llama-80l-mha-65b": dict(n_layer=80, n_head=8, n_head_kv=8, ff=256),
    "llama-width-96": dict(n_layer=8, width=96, ff=160),
    "llama-width-48": dict(n_layer=8, width=48, ff=80),
    "llama-width-320": dict(n_layer=10, width=320, ff=640),
    "llama-16l": dict(n_layer=16),
    "llama-moe8": dict(n_layer=8, n_expert=8),
    "llama-moe4-gqa1": dict(n_layer=6, n_expert=4, n_head=4, n_head_kv=4),
    "qwen2-80l": dict(arch="qwen2", n_layer=80, ff=256),
    "qwen3-28l-tied": dict(arch="qwen3", n_layer=28, tied=True, n_head=16, n_head_kv=8),
    "gemma3-26l-tied": dict(arch="gemma3", n_layer=26, tied=True, n_head=4, n_head_kv=1),
    "phi3-32l-fused": dict(arch="phi3", n_layer=32, fused_qkv=True, n_head=32, n_head_kv=32),
    "falcon-32l": dict(arch="falcon", n_layer=32, n_head=8, n_head_kv=1),
    "falcon-60l": dict(arch="falcon", n_layer=60, n_head=8, n_head_kv=8),
}


def file_types(qforge, path):
    """(name, type) of a GGUF's tensors in file order. gguf-py's reader
    does not know the newest types (Q2_0), so qforge's inspect reads them."""
    r = subprocess.run([str(qforge), "inspect", str(path), "--json"], capture_output=True, text=True, check=True)
    return [(t["name"], t["type"]) for t in json.loads(r.stdout)["tensors"]]


def llama_types(qforge, model, out, ftype, extra=()):
    """Types llama-quantize chose, in file order, or None when it refused."""
    dry = ftype in GRID_TYPES
    cmd = [str(llama_tool("llama-quantize")), *extra, *(["--dry-run"] if dry else []), str(model)]
    cmd += [ftype, "1"] if dry else [str(out), ftype, "1"]
    r = subprocess.run(cmd, capture_output=True, text=True)
    if r.returncode != 0:
        return None, r.stdout[-2000:] + r.stderr[-2000:]
    if dry:
        return dry_run_types(r.stdout + r.stderr), ""
    types = file_types(qforge, out)
    out.unlink()
    return types, ""


# `[  12/ 147] blk.1.attn_v.weight - [ 256, 2, 1, 1], type =    f16, size = ... (q4_K)`
DRY_RUN_LINE = re.compile(r"^\[\s*\d+/\s*\d+\]\s+(\S+)\s+- \[.*\], type =\s*(\w+), size =.*?(?:\((\w+)\))?$")


def dry_run_types(log):
    """(name, type) pairs of llama-quantize's --dry-run log, types in
    upper case as qforge names them."""
    out = []
    for line in log.splitlines():
        m = DRY_RUN_LINE.match(line.strip())
        if m:
            out.append((m.group(1), (m.group(3) or m.group(2)).upper()))
    assert out, f"no tensor lines in llama-quantize's --dry-run log:\n{log[-2000:]}"
    return out


def qforge_plan(qforge, model, ftype, extra=()):
    cmd = [str(qforge), "quantize", str(model), "--type", ftype, "--dry-run", "--json", *extra]
    r = subprocess.run(cmd, capture_output=True, text=True)
    if r.returncode != 0:
        return None, r.stderr
    return json.loads(r.stdout), ""


def compare(qforge, model, tmp_path, ftype, llama_extra=(), qforge_extra=(), imatrix=False):
    ref, log = llama_types(qforge, model, tmp_path / "ref.gguf", ftype, llama_extra)
    plan, err = qforge_plan(qforge, model, ftype, qforge_extra)
    if ref is None:
        # llama-quantize refused: qforge must refuse to write it too (its
        # plan lists the problem, or planning failed outright).
        assert plan is None or plan["problems"], f"{ftype}: llama-quantize failed but qforge plans it\n{log}"
        return "refused"
    assert plan is not None, f"{ftype}: llama-quantize wrote it, qforge could not plan it: {err}"
    ours = [(t["name"], t["to"]) for t in plan["tensors"]]
    diff = [(r, o) for r, o in zip(ref, ours) if r != o]
    assert len(ref) == len(ours) and not diff, f"{ftype}: (llama, qforge) differ: {diff[:6]}"
    blocking = [p for p in plan["problems"] if "cannot make" not in p["message"]]
    assert not blocking, f"{ftype}: llama-quantize wrote it, qforge reports {blocking}"
    return "same"


@pytest.mark.parametrize("case", sorted(CASES))
def test_types_match_llama_quantize(qforge, tmp_path, case):
    model = tmp_path / "model.gguf"
    matrices = build_model(model, **CASES[case])
    dat = tmp_path / "imatrix.dat"
    write_imatrix_dat(dat, imatrix_entries(matrices))
    with_imatrix = ["--imatrix", str(dat)]
    exotic = case in EXOTIC_CASES
    outcomes = {}
    for ftype in WRITABLE + (PLAN_ONLY if exotic else []):
        outcomes[ftype] = compare(qforge, model, tmp_path, ftype)
    for ftype in IMATRIX_SENSITIVE + NEED_IMATRIX[: None if exotic else 1]:
        outcomes[ftype + "+imatrix"] = compare(qforge, model, tmp_path, ftype, with_imatrix, with_imatrix)
    # The common mixes must all be writable for these shapes.
    for ftype in ["Q8_0", "Q4_0", "Q4_K_M", "Q6_K", "IQ4_XS+imatrix"]:
        assert outcomes[ftype] == "same", (ftype, outcomes[ftype])


def test_gguf_imatrix_choices_match(qforge, tmp_path):
    model = tmp_path / "model.gguf"
    matrices = build_model(model, n_layer=16)
    imat = tmp_path / "imatrix.gguf"
    write_imatrix_gguf(imat, imatrix_entries(matrices))
    for ftype in ["Q4_0", "IQ4_XS", "Q2_K_S", "IQ3_XXS"]:
        extra = ["--imatrix", str(imat)]
        assert compare(qforge, model, tmp_path, ftype, extra, extra) == "same"


OPTION_CASES = {
    "pure": (["--pure"], ["--pure"]),
    "leave-output": (["--leave-output-tensor"], ["--leave-output-tensor"]),
    "output-and-embd-types": (
        ["--output-tensor-type", "q8_0", "--token-embedding-type", "q4_0"],
        ["--output-tensor-type", "q8_0", "--token-embedding-type", "q4_0"],
    ),
    "tensor-type-regex": (
        ["--tensor-type", "attn_v=q8_0", "--tensor-type", r"blk\.1\d\.ffn_down=Q5_K"],
        ["--tensor-type", "attn_v=q8_0", "--tensor-type", r"blk\.1\d\.ffn_down=Q5_K"],
    ),
    "tensor-type-upper": (["--tensor-type", "ATTN_Q=q8_0"], ["--tensor-type", "ATTN_Q=q8_0"]),
}


@pytest.mark.parametrize("option", sorted(OPTION_CASES))
@pytest.mark.parametrize("tied", [False, True], ids=["untied", "tied"])
def test_type_options_match(qforge, tmp_path, option, tied):
    model = tmp_path / "model.gguf"
    build_model(model, n_layer=17, tied=tied)
    llama_extra, qforge_extra = OPTION_CASES[option]
    for ftype in ["Q4_0", "Q4_K_M", "Q3_K_M", "Q6_K", "F16"]:
        assert compare(qforge, model, tmp_path, ftype, llama_extra, qforge_extra) == "same", ftype
