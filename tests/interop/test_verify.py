"""qforge verify against the reference implementations on SmolLM2-135M:
logits against llama.cpp (llama-cpp-python), perplexity against
llama-perplexity, KL divergence against llama-perplexity --kl-divergence,
and perplexity of an MLX 4-bit conversion against mlx-lm's Python API.

Derived models are made in the test with the reference tools
(llama-quantize; transformers' GGUF loader + mlx_lm.convert), never
committed. Every comparison runs both sides on the same file and the same
token windows.
"""

import json
import math
import os
import re
import subprocess

import numpy as np
import pytest

from conftest import llama_tool

CTX = 512
PROMPT = (
    "The quick brown fox jumps over the lazy dog, and then the small model "
    "predicts the next word of every sentence it reads, one token at a time."
)
# Logits of every GGUF type the tests below use, against llama.cpp.
LOGIT_TYPES = ["F16", "Q4_1", "Q8_0", "Q4_K_M", "Q2_K"]
# llama.cpp's types that qforge reads but does not write: the ftype
# llama-quantize is given (with an importance matrix, which the IQ1 and
# IQ2 types require), the GGML type its 1536-wide ffn_down matrices must
# then hold, and whether it runs with `--pure`. Without it the ftype's
# mix may leave the type out (IQ2_XS and IQ3_S stand in for IQ2_S, Q2_K
# for the first IQ1/IQ2 layers); with it a ternary model is noise (every
# other matrix Q4_0), whose logits llama.cpp's own two attention paths
# do not agree on either. 576-wide rows do not fill 256-value blocks:
# llama-quantize falls back to another type for those matrices.
DECODE_FTYPES = {
    "IQ1_S": ("IQ1_S", True), "IQ1_M": ("IQ1_M", True), "IQ2_XXS": ("IQ2_XXS", True),
    "IQ2_XS": ("IQ2_XS", True), "IQ2_M": ("IQ2_S", True), "IQ3_XXS": ("IQ3_XXS", True),
    "IQ3_S": ("IQ3_S", True), "TQ1_0": ("TQ1_0", False), "TQ2_0": ("TQ2_0", False),
    "MXFP4_MOE": ("MXFP4", True),
}
# KL divergence against the F16 model (issue 6: Q8_0, Q4_K_M, Q2_K).
KLD_TYPES = ["Q8_0", "Q4_K_M", "Q2_K"]
# Windows of CTX tokens per comparison: both sides score the same ones, and
# four keep the suite short on two cores.
CHUNKS = 4


@pytest.fixture(scope="session")
def work(tmp_path_factory):
    return tmp_path_factory.mktemp("verify")


def llama_quantize(src, dst, ftype, allow_requantize=False, extra=()):
    cmd = [str(llama_tool("llama-quantize")), *map(str, extra)]
    if allow_requantize:
        cmd.append("--allow-requantize")
    cmd += [str(src), str(dst), ftype, "2"]
    subprocess.run(cmd, check=True, capture_output=True)
    return dst


@pytest.fixture(scope="session")
def smollm2_f16(work, smollm2):
    """SmolLM2's Q4_1 values requantized to F16 by llama-quantize."""
    return llama_quantize(smollm2, work / "smollm2-F16.gguf", "F16", allow_requantize=True)


@pytest.fixture(scope="session")
def smollm2_imatrix(work, smollm2_f16):
    """llama-imatrix over Apache-2.0 (not the evaluated GPL-3), 2 chunks."""
    out = work / "smollm2.imatrix.gguf"
    subprocess.run([str(llama_tool("llama-imatrix")), "-m", str(smollm2_f16), "-f",
                    "/usr/share/common-licenses/Apache-2.0", "-c", str(CTX), "--chunks", "2",
                    "-t", "2", "-o", str(out)], check=True, capture_output=True)
    return out


@pytest.fixture(scope="session")
def gguf_of_type(work, smollm2, smollm2_f16, request):
    made = {}

    def make(ftype):
        if ftype == "Q4_1":
            return smollm2
        if ftype == "F16":
            return smollm2_f16
        if ftype not in made:
            extra = []
            if ftype in DECODE_FTYPES:
                extra = ["--imatrix", request.getfixturevalue("smollm2_imatrix")]
                if DECODE_FTYPES[ftype][1]:
                    extra.append("--pure")
            made[ftype] = llama_quantize(smollm2_f16, work / f"smollm2-{ftype}.gguf", ftype, extra=extra)
        return made[ftype]

    return make


@pytest.fixture(scope="session")
def gpl3_llama_tokens(work, smollm2, gpl3_text):
    """GPL-3 tokenized by llama.cpp as llama-perplexity does (special
    tokens on, BOS as the vocabulary says)."""
    from llama_cpp import Llama

    vocab = Llama(model_path=str(smollm2), vocab_only=True, verbose=False)
    ids = vocab.tokenize(gpl3_text.read_bytes(), add_bos=True, special=True)
    path = work / "gpl3.llama.tokens.json"
    path.write_text(json.dumps(ids))
    return path


def verify_json(qforge, *args):
    out = subprocess.run(
        [str(qforge), "verify", *map(str, args), "--json", "--threads", "2"],
        check=True,
        capture_output=True,
        text=True,
    )
    return json.loads(out.stdout)


def llama_perplexity(*args):
    """llama-perplexity with flash attention off: qforge computes
    llama.cpp's other attention path (f16 K/Q products, softmax weights
    rounded to f16 before the product with V), and the CPU flash-attention
    kernel rounds differently (on SmolLM2's Q4_1 file at ctx 512, 4 chunks:
    PPL 18.3363 with it, 18.2422 without; qforge 18.2239)."""
    out = subprocess.run(
        [str(llama_tool("llama-perplexity")), *map(str, args), "-t", "2", "-fa", "off"],
        check=True,
        capture_output=True,
        text=True,
    )
    return out.stdout + out.stderr


def llama_cpp_logits(model, flash_attn=False):
    from llama_cpp import Llama

    llm = Llama(model_path=str(model), logits_all=True, n_ctx=CTX, n_threads=2, flash_attn=flash_attn,
                verbose=False)
    ids = llm.tokenize(PROMPT.encode(), add_bos=True, special=True)
    llm.eval(ids)
    return ids, np.array(llm.scores[: len(ids)], dtype=np.float32)


def qforge_logits(qforge, model, ids, work):
    tokens = work / "prompt.tokens.json"
    tokens.write_text(json.dumps(ids))
    out = work / f"logits-{model.stem}.bin"
    subprocess.run([str(qforge), "verify", str(model), "--tokens", str(tokens), "--logits-out", str(out)],
                   check=True)
    return np.fromfile(out, dtype=np.float32).reshape(len(ids), -1)


def test_f16_logits_match_llama_cpp(qforge, gguf_of_type, work):
    """Every position's logits of a fixed prompt against llama-cpp-python
    (logits_all) on the F16 file. Tolerance: max |diff| <= 0.1 and mean
    |diff| <= 0.015 on logits up to ~33 in magnitude, same argmax
    everywhere. llama.cpp's own two attention paths (flash attention
    on/off) differ by 0.073 max on this prompt: the bound sits at that
    spread."""
    model = gguf_of_type("F16")
    ids, want = llama_cpp_logits(model)
    got = qforge_logits(qforge, model, ids, work)
    diff = np.abs(got - want)
    assert diff.max() <= 0.1, f"max |diff| {diff.max()}"
    assert diff.mean() <= 0.015, f"mean |diff| {diff.mean()}"
    assert (got.argmax(1) == want.argmax(1)).all()


@pytest.mark.parametrize("ftype", [t for t in LOGIT_TYPES if t != "F16"])
def test_quantized_logits_match_llama_cpp(qforge, gguf_of_type, work, ftype):
    """Quantized files (Q4_1 is SmolLM2 as shipped) against llama.cpp,
    within llama.cpp's own spread. Both sides use ggml's dot products bit
    for bit (the first positions agree exactly), but activations are
    rounded to 8 bits before every product, so a last-bit difference in an
    attention sum flips a rounding and grows through the layers: llama.cpp
    with flash attention on vs off differs by 1.4-2.9 max, 0.21-0.32 mean
    on this prompt. qforge vs llama.cpp (flash attention off, its default)
    must stay within 1.5x that spread, and agree on the top token as often
    as llama.cpp's two paths agree with each other (one position of
    slack)."""
    diff = assert_logits_within_llama_spread(qforge, gguf_of_type(ftype), work, ftype)
    if ftype in ("Q8_0", "Q4_1"):
        # No repacked kernels in llama.cpp for these: the first position
        # (no attention sum yet) is bit for bit the same.
        assert (diff[0] == 0).all(), f"{ftype}: first position differs by {diff[0].max()}"


def assert_logits_within_llama_spread(qforge, model, work, ftype):
    """The bounds of the test above; returns |qforge - llama.cpp|."""
    ids, want = llama_cpp_logits(model)
    _, other = llama_cpp_logits(model, flash_attn=True)
    got = qforge_logits(qforge, model, ids, work)
    spread, diff = np.abs(other - want), np.abs(got - want)
    assert diff.max() <= 1.5 * spread.max(), f"{ftype}: max |diff| {diff.max()}, llama.cpp spread {spread.max()}"
    assert diff.mean() <= 1.5 * spread.mean(), f"{ftype}: mean |diff| {diff.mean()}, spread {spread.mean()}"
    agree = (got.argmax(1) == want.argmax(1)).sum()
    assert agree >= (other.argmax(1) == want.argmax(1)).sum() - 1, f"{ftype}: top-1 agrees on {agree}/{len(ids)}"
    return diff


@pytest.mark.parametrize("ftype", list(DECODE_FTYPES))
def test_decode_only_type_logits_match_llama_cpp(qforge, gguf_of_type, work, ftype):
    """Files in the types qforge reads but does not write, made by
    llama-quantize: the matrices the type can hold have it, and the logits
    stay within llama.cpp's own spread as above."""
    import gguf

    model = gguf_of_type(ftype)
    held = {t.tensor_type.name for t in gguf.GGUFReader(model).tensors if t.name.endswith("ffn_down.weight")}
    assert held == {DECODE_FTYPES[ftype][0]}, f"{ftype}: ffn_down holds {held}"
    assert_logits_within_llama_spread(qforge, model, work, ftype)


def test_perplexity_matches_llama_perplexity(qforge, smollm2, gpl3_text, gpl3_llama_tokens):
    """SmolLM2's Q4_1 GGUF on GPL-3 at ctx 512, the text tokenized by
    qforge from the GGUF vocabulary: within 0.5% of llama-perplexity on the
    same file, text and windows."""
    log = llama_perplexity("-m", smollm2, "-f", gpl3_text, "-c", CTX, "--chunks", CHUNKS)
    want = float(re.search(r"Final estimate: PPL = ([0-9.]+)", log).group(1))
    got = verify_json(qforge, smollm2, "--text", gpl3_text, "--ctx", CTX, "--chunks", CHUNKS,
                      "--no-speed", "--sample-tokens", 0)
    ppl = got["perplexity"]["ppl"]
    assert got["perplexity"]["chunks"] == CHUNKS
    assert abs(ppl / want - 1) <= 0.005, f"qforge {ppl}, llama-perplexity {want}"
    # The same windows from llama.cpp's own tokens give the same number.
    by_ids = verify_json(qforge, smollm2, "--tokens", gpl3_llama_tokens, "--ctx", CTX, "--chunks", CHUNKS,
                         "--no-speed", "--sample-tokens", 0)
    assert by_ids["perplexity"]["ppl"] == ppl


@pytest.fixture(scope="session")
def kld_base(work, smollm2_f16, gpl3_text):
    """llama-perplexity's base log-probs of the F16 model."""
    path = work / "f16.kld"
    llama_perplexity("-m", smollm2_f16, "-f", gpl3_text, "-c", CTX, "--chunks", CHUNKS,
                     "--kl-divergence-base", path)
    return path


@pytest.mark.parametrize("ftype", KLD_TYPES)
def test_kld_matches_llama_perplexity(qforge, gguf_of_type, smollm2_f16, gpl3_text, gpl3_llama_tokens, kld_base, ftype):
    """Mean KL divergence against the F16 model within 5% of llama-perplexity
    --kl-divergence on the same files and windows; top-1 agreement and the
    PPL ratio within their reported uncertainty."""
    model = gguf_of_type(ftype)
    log = llama_perplexity("-m", model, "-f", gpl3_text, "-c", CTX, "--chunks", CHUNKS,
                           "--kl-divergence-base", kld_base, "--kl-divergence")
    want_kld = float(re.search(r"Mean\s+KLD:\s+([0-9.]+)", log).group(1))
    want_top = float(re.search(r"Same top p:\s+([0-9.]+)", log).group(1)) / 100
    want_ratio = float(re.search(r"Mean PPL\(Q\)/PPL\(base\)\s+:\s+([0-9.]+)", log).group(1))
    got = verify_json(qforge, model, "--reference", smollm2_f16, "--tokens", gpl3_llama_tokens,
                      "--ctx", CTX, "--chunks", CHUNKS, "--no-speed", "--sample-tokens", 0)
    kl = got["kl"]
    assert abs(kl["mean_kld"] / want_kld - 1) <= 0.05, f"{ftype}: qforge {kl['mean_kld']}, llama {want_kld}"
    assert abs(kl["same_top"] - want_top) <= 3 * max(kl["same_top_error"], 1e-3), (kl["same_top"], want_top)
    assert abs(kl["ppl_ratio"] - want_ratio) <= 3 * max(kl["ppl_ratio_error"], 1e-4), (kl["ppl_ratio"], want_ratio)


@pytest.fixture(scope="session")
def smollm2_mlx4(work, smollm2):
    """SmolLM2 through transformers' GGUF loader into an HF folder, then
    mlx_lm.convert to 4-bit group 64 (FORMATS.md: top-level rope_theta)."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    hf = work / "smollm2-hf"
    tok = AutoTokenizer.from_pretrained(smollm2.parent, gguf_file=smollm2.name)
    model = AutoModelForCausalLM.from_pretrained(smollm2.parent, gguf_file=smollm2.name)
    model.hf_quantizer = None
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    model.save_pretrained(hf)
    tok.save_pretrained(hf)
    cfg = json.loads((hf / "config.json").read_text())
    cfg["rope_theta"] = cfg.get("rope_theta") or cfg["rope_parameters"]["rope_theta"]
    (hf / "config.json").write_text(json.dumps(cfg, indent=2))
    out = work / "smollm2-mlx4"
    subprocess.run(
        [os.environ["QFORGE_ORACLE_PYTHON"], "-m", "mlx_lm", "convert", "--hf-path", str(hf),
         "--mlx-path", str(out), "-q", "--q-bits", "4", "--q-group-size", "64"],
        check=True, capture_output=True,
    )
    return out


# mlx's quantized matmul on an x86 CPU runs a 512-token window in minutes:
# two windows keep the test affordable.
MLX_CHUNKS = 2


def test_mlx_perplexity_matches_mlx_lm(qforge, smollm2_mlx4, gpl3_text, work):
    """Perplexity of the MLX 4-bit folder within 0.5% of mlx-lm's, computed
    with its Python API (float32, as FORMATS.md advises on x86) on the same
    windows: the folder's tokenizer, second half of each window scored."""
    import mlx.core as mx
    from mlx_lm import load

    model, tok = load(str(smollm2_mlx4))
    model.set_dtype(mx.float32)
    ids = tok.encode(gpl3_text.read_text())
    first = CTX // 2
    nll = []
    for i in range(MLX_CHUNKS):
        w = ids[i * CTX:(i + 1) * CTX]
        logits = np.array(model(mx.array(w)[None])[0].astype(mx.float32), dtype=np.float64)[first:CTX - 1]
        m = logits.max(-1)
        lse = np.log(np.exp(logits - m[:, None]).sum(-1)) + m
        tgt = np.array(w[first + 1:CTX])
        nll.extend((lse - logits[np.arange(len(tgt)), tgt]).tolist())
    want = math.exp(sum(nll) / len(nll))
    tokens = work / "gpl3.hf.tokens.json"
    tokens.write_text(json.dumps(ids))
    got = verify_json(qforge, smollm2_mlx4, "--tokens", tokens, "--ctx", CTX, "--chunks", MLX_CHUNKS,
                      "--no-speed", "--sample-tokens", 0)
    ppl = got["perplexity"]["ppl"]
    assert got["perplexity"]["bos"] is None
    assert abs(ppl / want - 1) <= 0.005, f"qforge {ppl}, mlx-lm {want}"
    # Text input through the folder's own tokenizer gives the same windows.
    by_text = verify_json(qforge, smollm2_mlx4, "--text", gpl3_text, "--ctx", CTX, "--chunks", MLX_CHUNKS,
                          "--no-speed", "--sample-tokens", 0)
    assert by_text["perplexity"]["ppl"] == ppl
