"""Issue 11: `qforge imatrix` against llama-imatrix.

On the same GGUF model, text (GPL-3), context and chunk count, both tools
write a GGUF importance matrix; gguf-py reads both:
- the same entries (every matrix of the decoder layers, by its GGUF
  name), the same token counts, the same metadata (`general.type`,
  `imatrix.chunk_count`, `imatrix.chunk_size`, `imatrix.datasets`);
- per entry, the sums of squared activations agree within SUM_TOL of the
  entry's largest sum (the engines differ in summation order and, for F16
  weights, llama.cpp rounds activations to f16 before its matmuls; the
  sums themselves are accumulated the same way, token by token in f32).
- llama-quantize --imatrix reads ours and quantizes with it, and
  `qforge quantize --imatrix` with ours gives llama-quantize's bytes.

Runtime: about 10 s for the six fixtures, 30 s for SmolLM2 on two cores.
"""

import subprocess

import gguf
import numpy as np
import pytest

from conftest import llama_tool, run_oracle
from test_convert_gguf import FIXTURES, fixture_dir, qforge_convert

CTX, CHUNKS = 128, 4
SMOLLM2_CHUNKS = 2
# Largest |ours - llama.cpp| of an entry over its largest value.
SUM_TOL = {"F32": 1e-3, "F16": 1e-2}


def read_imatrix(path):
    r = gguf.GGUFReader(str(path))
    sums, counts = {}, {}
    for t in r.tensors:
        data = np.array(t.data, dtype=np.float32).reshape(-1)
        if t.name.endswith(".in_sum2"):
            sums[t.name.removesuffix(".in_sum2")] = data
        elif t.name.endswith(".counts"):
            counts[t.name.removesuffix(".counts")] = data
    fields = {
        "general.type": r.fields["general.type"].contents(),
        "imatrix.chunk_count": r.fields["imatrix.chunk_count"].contents(),
        "imatrix.chunk_size": r.fields["imatrix.chunk_size"].contents(),
        "imatrix.datasets": r.fields["imatrix.datasets"].contents(),
    }
    return sums, counts, fields


def both_imatrices(qforge, model, text, ctx, chunks, tmp_path):
    ref = tmp_path / "llama.imatrix.gguf"
    run_oracle([llama_tool("llama-imatrix"), "-m", model, "-f", text, "-c", ctx, "--chunks", chunks,
                "-o", ref, "--no-ppl", "-t", "2"])
    ours = tmp_path / "qforge.imatrix.gguf"
    subprocess.run([str(qforge), "imatrix", str(model), "--text", str(text), "--ctx", str(ctx),
                    "--chunks", str(chunks), "-o", str(ours)], check=True, capture_output=True)
    return ours, ref


def assert_same_imatrix(ours, ref, tol):
    a_sums, a_counts, a_fields = read_imatrix(ours)
    b_sums, b_counts, b_fields = read_imatrix(ref)
    assert a_fields == b_fields
    assert sorted(a_sums) == sorted(b_sums)
    assert sorted(a_counts) == sorted(b_counts)
    worst = 0.0
    for name in b_sums:
        assert np.array_equal(a_counts[name], b_counts[name]), name
        a, b = a_sums[name], b_sums[name]
        assert a.shape == b.shape, name
        rel = float(np.abs(a - b).max() / max(float(np.abs(b).max()), 1e-30))
        worst = max(worst, rel)
        assert rel <= tol, f"{name}: relative difference {rel:.3g}"
    return worst


@pytest.mark.parametrize("arch", FIXTURES)
def test_imatrix_matches_llama_imatrix(qforge, arch, gpl3_text, tmp_path):
    model = tmp_path / f"{arch}.gguf"
    qforge_convert(qforge, fixture_dir(arch), model, "--outtype", "f32")
    ours, ref = both_imatrices(qforge, model, gpl3_text, CTX, CHUNKS, tmp_path)
    worst = assert_same_imatrix(ours, ref, SUM_TOL["F32"])
    print(f"{arch}: largest relative difference {worst:.3g}")


@pytest.fixture(scope="module")
def smollm2_f16(smollm2, tmp_path_factory):
    out = tmp_path_factory.mktemp("imatrix") / "smollm2-F16.gguf"
    run_oracle([llama_tool("llama-quantize"), "--allow-requantize", smollm2, out, "F16", "2"])
    return out


def test_smollm2_imatrix_matches_llama_imatrix_and_llama_quantize_takes_it(qforge, smollm2_f16, gpl3_text,
                                                                            tmp_path):
    ours, ref = both_imatrices(qforge, smollm2_f16, gpl3_text, CTX, SMOLLM2_CHUNKS, tmp_path)
    worst = assert_same_imatrix(ours, ref, SUM_TOL["F16"])
    print(f"smollm2: largest relative difference {worst:.3g}")

    theirs = tmp_path / "llama-q4_k_m.gguf"
    log = run_oracle([llama_tool("llama-quantize"), "--imatrix", ours, smollm2_f16, theirs, "Q4_K_M", "2"])
    n_entries = len(read_imatrix(ours)[0])
    assert f"loaded {n_entries} importance matrix entries" in log.stdout + log.stderr
    r = gguf.GGUFReader(str(theirs))
    assert r.fields["quantize.imatrix.entries_count"].contents() == n_entries
    mine = tmp_path / "qforge-q4_k_m.gguf"
    subprocess.run([str(qforge), "quantize", str(smollm2_f16), str(mine), "--type", "Q4_K_M", "--imatrix",
                    str(ours)], check=True, capture_output=True)
    want = {t.name: bytes(t.data) for t in r.tensors}
    got = {t.name: bytes(t.data) for t in gguf.GGUFReader(str(mine)).tensors}
    assert got == want
