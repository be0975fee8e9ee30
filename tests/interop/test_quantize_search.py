"""Issue 11: `qforge quantize --method search` for the legacy GGUF types
(Q4_0, Q4_1, Q5_0, Q5_1) against llama.cpp.

SmolLM2 (the oracle's Q4_1 values as F16) quantized with `--pure` by
llama-quantize and by qforge with searched block scales:
- gguf-py reads ours: the same tensors, types, shapes and byte sizes;
- llama-perplexity's KL divergence against the F16 model (its own
  `--kl-divergence-base` file, the same windows) is lower for ours.
Without `--method search` qforge's bytes are llama-quantize's
(test_quantize_gguf.py checks that).

Runtime: about a minute on two cores (measured Q4_0 0.66x, Q4_1 0.69x,
Q5_0 0.78x, Q5_1 0.05x of llama-quantize's KLD; the source holds Q4_1
values, which llama-quantize's Q5_1 rounds badly).
"""

import re

import gguf
import pytest

from conftest import llama_tool, run_oracle

CTX, CHUNKS = 128, 4


@pytest.fixture(scope="module")
def work(tmp_path_factory):
    return tmp_path_factory.mktemp("quantize-search")


@pytest.fixture(scope="module")
def smollm2_f16(work, smollm2):
    out = work / "smollm2-F16.gguf"
    run_oracle([llama_tool("llama-quantize"), "--allow-requantize", smollm2, out, "F16", "2"])
    return out


@pytest.fixture(scope="module")
def kld_base(work, smollm2_f16, gpl3_text):
    base = work / "f16.kld"
    run_oracle([llama_tool("llama-perplexity"), "-m", smollm2_f16, "-f", gpl3_text, "-c", CTX, "--chunks", CHUNKS,
                "-t", "2", "--kl-divergence-base", base])
    return base


def mean_kld(model, base, text):
    log = run_oracle([llama_tool("llama-perplexity"), "-m", model, "-f", text, "-c", CTX, "--chunks", CHUNKS,
                      "-t", "2", "--kl-divergence-base", base, "--kl-divergence"])
    return float(re.search(r"Mean\s+KLD:\s+([0-9.]+)", log.stdout + log.stderr).group(1))


# Q4_0 (symmetric, 4 bits) and Q5_1 (affine, 5 bits) cover both block
# forms and both code widths; the quant-kernels unit tests check all four
# types block by block against ggml's own quantizers.
@pytest.mark.parametrize("ftype", ["Q4_0", "Q5_1"])
def test_searched_legacy_blocks_beat_llama_quantize(qforge, smollm2_f16, kld_base, gpl3_text, work, ftype):
    theirs = work / f"llama-{ftype}.gguf"
    run_oracle([llama_tool("llama-quantize"), "--pure", smollm2_f16, theirs, ftype, "2"])
    ours = work / f"qforge-{ftype}.gguf"
    run_oracle([qforge, "quantize", "--pure", smollm2_f16, ours, "--type", ftype, "--method", "search"])
    a = {t.name: t for t in gguf.GGUFReader(str(ours)).tensors}
    b = {t.name: t for t in gguf.GGUFReader(str(theirs)).tensors}
    assert sorted(a) == sorted(b)
    differ = 0
    for name, t in b.items():
        assert a[name].tensor_type == t.tensor_type, name
        assert list(a[name].shape) == list(t.shape), name
        assert a[name].n_bytes == t.n_bytes, name
        differ += bytes(a[name].data) != bytes(t.data)
    assert differ > 0
    k_theirs = mean_kld(theirs, kld_base, gpl3_text)
    k_ours = mean_kld(ours, kld_base, gpl3_text)
    print(f"{ftype}: llama-perplexity mean KLD llama-quantize {k_theirs:.5f}, qforge search {k_ours:.5f} "
          f"({k_ours / k_theirs:.2f}x)")
    assert k_ours < k_theirs
