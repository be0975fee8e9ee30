"""Issue 11: MLX folders from `qforge convert --to mlx --method search`
against mlx-lm.

- The folder is plain mlx-lm affine: the same tensor names, dtypes and
  shapes (so the same tensor bytes) and the same config.json as
  `mlx_lm.convert -q` at those bits and group size; `mlx_lm.load` loads
  it and `mlx_lm.generate` generates from it.
- mlx-lm itself (float32, its own dequantization and forward pass)
  measures the mean KL divergence of the folder's next-token
  distributions against the unquantized model, on windows of the GPL-3
  text: the search's is below mlx_lm.convert's, and on SmolLM2 at most
  0.7 of it (issue 11's bar; BENCH-mlx-search.md has the full table).
- With an importance matrix from `qforge imatrix` the search takes it.

mlx-lm runs in this process (the suite runs under the oracle Python).
Runtime (measured, 2 busy cores): the six fixtures at 4 and 3 bits about
6 s, the importance-matrix test under 1 s, the SmolLM2 test about 60 s
plus 25 s to make the Hugging Face copy (shared with test_convert_mlx.py).
"""

import json
import subprocess

import mlx.core as mx
import numpy as np
import pytest
from mlx_lm import convert as mlx_lm_convert
from mlx_lm import generate as mlx_lm_generate
from mlx_lm import load as mlx_lm_load

from test_convert_gguf import FIXTURES, qforge_convert
from test_convert_mlx import assert_same_config, raw_tensors
from test_verify_mlx import mlx_ready_copy



def log_softmax(x):
    m = x.max(-1, keepdims=True)
    return x - m - np.log(np.exp(x - m).sum(-1, keepdims=True))


def mlx_lm_windows(folder, text, ctx, n):
    """Windows of `ctx` tokens of `text` by the folder's tokenizer (BOS
    first when it adds one, as qforge verify does)."""
    _, tok = mlx_lm_load(str(folder))
    ids = tok.encode(text)
    bos = tok.bos_token_id if tok.bos_token_id is not None and ids[:1] == [tok.bos_token_id] else None
    out = []
    for i in range(n):
        w = list(ids[i * ctx:(i + 1) * ctx])
        assert len(w) == ctx, "the text is too short"
        if bos is not None:
            w[0] = bos
        out.append(w)
    return out


def mlx_lm_log_probs(folder, windows):
    """Log-probabilities of the second half of each window, by mlx-lm in
    float32 (FORMATS.md: mlx on x86 in float32)."""
    model, _ = mlx_lm_load(str(folder))
    model.set_dtype(mx.float32)
    out = []
    for w in windows:
        logits = np.array(model(mx.array(w)[None])[0].astype(mx.float32), dtype=np.float64)
        out.append(log_softmax(logits[len(w) // 2:len(w) - 1]))
    return out


def mean_kld(base, other):
    return float(np.mean(np.concatenate([(np.exp(b) * (b - o)).sum(-1) for b, o in zip(base, other)])))


def assert_plain_mlx_lm_folder(ours, ref):
    """Same tensors (names, dtypes, shapes) and config as mlx_lm.convert's
    folder; the bytes of the tensors differ, their sizes do not."""
    a, b = raw_tensors(ours), raw_tensors(ref)
    assert sorted(a) == sorted(b)
    for name in b:
        assert a[name][:2] == b[name][:2], f"{name}: ours {a[name][:2]}, mlx-lm {b[name][:2]}"
        assert len(a[name][2]) == len(b[name][2]), name
    assert_same_config(ours, ref)


@pytest.fixture(scope="module")
def gpl3(gpl3_text):
    return gpl3_text.read_text()


# Fixture windows: 6 of 96 tokens (the fixtures' tokenizers cut GPL-3 into
# far more). Random-weight models: the best scale and bias per group cuts
# the squared error of Gaussian weights to about 0.78 of round to nearest
# (a dense grid search says so), so their KL divergence drops less than a
# trained model's; the bar here is "lower than mlx_lm.convert's" per
# case, and 0.9 of it on average over the twelve.
FIXTURE_CTX, FIXTURE_WINDOWS = 96, 6
FIXTURE_MEAN_RATIO = 0.9


def test_fixture_search_is_plain_mlx_and_beats_round_to_nearest(qforge, gpl3, tmp_path):
    ratios = {}
    for arch in FIXTURES:
        src = mlx_ready_copy(arch, tmp_path / f"{arch}-src")
        windows = mlx_lm_windows(src, gpl3, FIXTURE_CTX, FIXTURE_WINDOWS)
        base = mlx_lm_log_probs(src, windows)
        for bits in (4, 3):
            ref = tmp_path / f"{arch}-{bits}-rtn"
            mlx_lm_convert(str(src), str(ref), quantize=True, q_bits=bits, q_group_size=64)
            ours = tmp_path / f"{arch}-{bits}-search"
            report = qforge_convert(qforge, src, ours, "--to", "mlx", "--bits", bits, "--group-size", 64)
            assert report["method"] == "search"
            assert report["importance_tensors"] > 0, "the calibration pass weighted nothing"
            assert_plain_mlx_lm_folder(ours, ref)
            k_rtn = mean_kld(base, mlx_lm_log_probs(ref, windows))
            k_search = mean_kld(base, mlx_lm_log_probs(ours, windows))
            ratios[(arch, bits)] = k_search / k_rtn
            print(f"{arch} {bits}-bit: mlx-lm KLD rtn {k_rtn:.5g}, search {k_search:.5g} "
                  f"({k_search / k_rtn:.2f}x)")
            assert k_search < k_rtn, (arch, bits)
        if arch in ("llama", "mistral"):  # the others' padded vocabularies hold ids no token has
            model, tok = mlx_lm_load(str(ours))
            assert isinstance(mlx_lm_generate(model, tok, prompt="The license", max_tokens=4), str)
    mean = sum(ratios.values()) / len(ratios)
    assert mean <= FIXTURE_MEAN_RATIO, ratios


def test_search_takes_an_importance_matrix(qforge, gpl3_text, tmp_path):
    """--imatrix from `qforge imatrix`: it weighs every quantized matrix
    but the token embedding and the output matrix (llama-imatrix's layout
    has no entry for them); the calibration pass weighs the output matrix
    (an untied embedding is only looked up: nothing weighs it) and adds
    its estimate to the matrix's; the folder stays plain mlx-lm."""
    src = mlx_ready_copy("qwen2", tmp_path / "src")
    imat = tmp_path / "imatrix.gguf"
    subprocess.run([str(qforge), "imatrix", str(src), "--text", str(gpl3_text), "--ctx", "64", "--chunks", "4",
                    "-o", str(imat)], check=True, capture_output=True)
    ours = tmp_path / "search"
    report = qforge_convert(qforge, src, ours, "--to", "mlx", "--bits", 4, "--group-size", 64,
                            "--imatrix", imat)
    quantized = [t for t in report["tensors"] if t["to"].startswith("MLX")]
    assert report["importance_tensors"] == len(quantized) - 1
    assert any("no entry for 2 of the quantized tensors (model.embed_tokens.weight, lm_head.weight)" in w
               and "qforge imatrix --process-output" in w for w in report["warnings"]), report["warnings"]
    ref = tmp_path / "rtn"
    mlx_lm_convert(str(src), str(ref), quantize=True, q_bits=4, q_group_size=64)
    assert_plain_mlx_lm_folder(ours, ref)

    # With --process-output the matrix weighs lm_head too; the untied
    # embedding, only looked up, has no entry in either layout, and the
    # warning no longer points to --process-output.
    subprocess.run([str(qforge), "imatrix", str(src), "--text", str(gpl3_text), "--ctx", "64", "--chunks", "4",
                    "--process-output", "-o", str(imat)], check=True, capture_output=True)
    report = qforge_convert(qforge, src, tmp_path / "search-output", "--to", "mlx", "--bits", 4,
                            "--group-size", 64, "--imatrix", imat)
    assert report["importance_tensors"] == len(quantized) - 1
    warned = [w for w in report["warnings"] if "no entry for" in w]
    assert len(warned) == 1 and "(model.embed_tokens.weight)" in warned[0], report["warnings"]
    assert "--process-output" not in warned[0], warned


# SmolLM2 (the transformers copy of the oracle's Q4_1 file, float32): one
# window of 128 tokens through mlx-lm for the float model, mlx_lm.convert's
# 4-bit folder and ours. Issue 11's bar is 0.7; measured 0.40 here (4
# windows of 512 by qforge verify: 0.33; BENCH-mlx-search.md).
SMOLLM2_CTX = 128
SMOLLM2_RATIO = 0.7


def test_smollm2_search_kld_is_at_most_0_7_of_mlx_lm_convert(qforge, smollm2_hf, gpl3, tmp_path):
    """mlx-lm 0.32 needs a top-level rope_theta: added to the shared copy's
    config.json for the test, and the file restored after."""
    src = smollm2_hf
    original = (src / "config.json").read_text()
    cfg = json.loads(original)
    if "rope_theta" not in cfg:
        cfg["rope_theta"] = cfg["rope_parameters"]["rope_theta"]
        (src / "config.json").write_text(json.dumps(cfg, indent=2))
    try:
        ref = tmp_path / "rtn"
        mlx_lm_convert(str(src), str(ref), quantize=True, q_bits=4, q_group_size=64)
        ours = tmp_path / "search"
        qforge_convert(qforge, src, ours, "--to", "mlx", "--bits", 4, "--group-size", 64)
        assert_plain_mlx_lm_folder(ours, ref)
        windows = mlx_lm_windows(src, gpl3, SMOLLM2_CTX, 1)
        base = mlx_lm_log_probs(src, windows)
        k_rtn = mean_kld(base, mlx_lm_log_probs(ref, windows))
        k_search = mean_kld(base, mlx_lm_log_probs(ours, windows))
    finally:
        (src / "config.json").write_text(original)
    print(f"smollm2 4-bit: mlx-lm KLD rtn {k_rtn:.4g}, search {k_search:.4g} ({k_search / k_rtn:.2f}x)")
    assert k_search <= SMOLLM2_RATIO * k_rtn
