#!/usr/bin/env python3
"""Benchmark for issue 12: requantizing SmolLM2-135M files that are already
quantized, qforge (`--exact-grid on`, the default) beside the reference
tools on the same sources, in the same run. Writes BENCH-requant.md.

    source tests/interop/oracles.env
    cargo build --release --bin qforge
    "$QFORGE_ORACLE_PYTHON" scripts/bench_requant.py [--chunks 4] [--workdir DIR] [--out BENCH-requant.md]

Sources (all from the oracle's SmolLM2 Q4_1 file, by llama-quantize):
- Q4_1: the file itself;
- Q4_0: llama-quantize Q4_1 -> F16 -> Q4_0;
- Q4_K_M: llama-quantize Q4_1 -> F16 -> Q4_K_M.

Per output, against its source:
- "values": gguf-py (GGUF) or mlx (MLX folder) dequantizes both and
  compares: "exact" when every value is the source's, else the RMS
  difference over all weights;
- KL divergence, top-1 agreement and PPL ratio by `qforge verify
  --reference SOURCE` (GPL-3, 512-token windows, `--chunks` of them);
- for GGUF outputs, the mean KL divergence by llama-perplexity
  --kl-divergence on the same windows (an oracle's second opinion).

The comparison rows: llama-quantize --allow-requantize of the same source
and type (what `--exact-grid off` reproduces byte for byte), and for MLX
mlx_lm.convert -q (4 bits, group 32) of the source's values in a float32
Hugging Face folder (`qforge convert --to safetensors`, lossless): mlx's
own requantization. Floor rows: the source against itself, and the
source's values in F32 (llama-quantize), which only change the compute
path.
"""

import argparse
import datetime
import json
import os
import pathlib
import re
import subprocess
import sys
import time

import gguf
import numpy as np

ROOT = pathlib.Path(__file__).resolve().parents[1]
TEXT = pathlib.Path("/usr/share/common-licenses/GPL-3")


def run(cmd, **kw):
    r = subprocess.run([str(c) for c in cmd], capture_output=True, text=True, **kw)
    if r.returncode != 0:
        sys.exit(f"failed: {' '.join(map(str, cmd))}\n{r.stdout[-2000:]}\n{r.stderr[-3000:]}")
    return r


def tool(name):
    return pathlib.Path(os.environ["QFORGE_LLAMA_BIN"]) / name


QFORGE = ROOT / "target" / "release" / "qforge"


def llama_quantize(src, dst, ftype):
    if not dst.exists():
        run([tool("llama-quantize"), "--allow-requantize", src, dst, ftype, "2"])
    return dst


def qforge_quantize(src, dst, ftype):
    if not dst.exists():
        run([QFORGE, "quantize", src, dst, "--type", ftype, "--allow-requantize", "--threads", "2"])
    return dst


def gguf_values(path):
    r = gguf.GGUFReader(str(path))
    return {t.name: gguf.quants.dequantize(t.data, t.tensor_type).astype(np.float32) for t in r.tensors}


def hf_name_map(src):
    """GGUF tensor name -> (HF name, row permutation heads) for llama."""
    r = gguf.GGUFReader(str(src))
    n_head = int(r.fields["llama.attention.head_count"].contents())
    n_kv = int(r.fields["llama.attention.head_count_kv"].contents())
    m = {"token_embd.weight": "model.embed_tokens.weight", "output_norm.weight": "model.norm.weight",
         "output.weight": "lm_head.weight"}
    parts = {"attn_q": ("self_attn.q_proj", n_head), "attn_k": ("self_attn.k_proj", n_kv),
             "attn_v": ("self_attn.v_proj", 0), "attn_output": ("self_attn.o_proj", 0),
             "ffn_gate": ("mlp.gate_proj", 0), "ffn_up": ("mlp.up_proj", 0), "ffn_down": ("mlp.down_proj", 0),
             "attn_norm": ("input_layernorm", 0), "ffn_norm": ("post_attention_layernorm", 0)}
    out = {}
    for t in r.tensors:
        if t.name in m:
            out[t.name] = (m[t.name], 0)
            continue
        _, i, part, _ = t.name.split(".")
        hf, heads = parts[part]
        out[t.name] = (f"model.layers.{i}.{hf}.weight", heads)
    return out


def mlx_values(folder):
    import mlx.core as mx

    config = json.loads((folder / "config.json").read_text())
    q = config.get("quantization", {})
    arrays = {}
    for f in sorted(folder.glob("*.safetensors")):
        arrays.update(mx.load(str(f)))
    out = {}
    for name, a in arrays.items():
        if name.endswith((".scales", ".biases")):
            continue
        prefix = name.removesuffix(".weight")
        if f"{prefix}.scales" in arrays:
            p = q.get(prefix, q)
            a = mx.dequantize(a, arrays[f"{prefix}.scales"].astype(mx.float32),
                              arrays[f"{prefix}.biases"].astype(mx.float32),
                              group_size=p["group_size"], bits=p["bits"])
        out[name] = np.array(a.astype(mx.float32))
    return out


def compare(want, got):
    """'exact' or the RMS difference over all values of `want`."""
    sq, n, exact = 0.0, 0, True
    for name, x in want.items():
        y = got[name].reshape(x.shape)
        if not np.array_equal(x, y):
            exact = False
        d = x.astype(np.float64) - y.astype(np.float64)
        sq += float((d * d).sum())
        n += x.size
    return "exact" if exact else f"RMS {np.sqrt(sq / n):.2e}"


def value_check(src, artifact):
    want = gguf_values(src)
    if not artifact.is_dir():
        return compare(want, gguf_values(artifact))
    got = {}
    mlx = mlx_values(artifact)
    for g, (hf, heads) in hf_name_map(src).items():
        if hf not in mlx:  # the tied output head
            continue
        v = mlx[hf]
        if heads:
            # Hugging Face rows into llama.cpp's rope order, as GGUF has them.
            r, c = v.shape
            v = v.reshape(heads, 2, r // heads // 2, c).swapaxes(1, 2).reshape(r, c)
        got[g] = v
    return compare({k: v for k, v in want.items() if k in got}, got)


def verify(artifact, reference, chunks):
    r = run([QFORGE, "verify", artifact, "--reference", reference, "--text", TEXT, "--ctx", "512",
             "--chunks", str(chunks), "--no-speed", "--sample-tokens", "0", "--json", "--threads", "2"])
    kl = json.loads(r.stdout)["kl"]
    return kl


def llama_kld(artifact, base, chunks):
    r = run([tool("llama-perplexity"), "-m", artifact, "-f", TEXT, "-c", "512", "--chunks", str(chunks),
             "-t", "2", "--kl-divergence-base", base, "--kl-divergence"])
    return float(re.search(r"Mean\s+KLD:\s+(-?[0-9.e-]+)", r.stdout + r.stderr).group(1))


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--chunks", type=int, default=4)
    ap.add_argument("--workdir", type=pathlib.Path, default=pathlib.Path("/tmp/qforge-bench-requant"))
    ap.add_argument("--out", type=pathlib.Path, default=ROOT / "BENCH-requant.md")
    args = ap.parse_args()
    w = args.workdir
    w.mkdir(parents=True, exist_ok=True)
    if not QFORGE.is_file():
        sys.exit(f"{QFORGE} is missing: cargo build --release --bin qforge")
    q4_1 = pathlib.Path(os.environ["QFORGE_SMOLLM2_GGUF"])
    f16 = llama_quantize(q4_1, w / "f16.gguf", "F16")
    q4_0 = llama_quantize(f16, w / "q4_0.gguf", "Q4_0")
    q4_k_m = llama_quantize(f16, w / "q4_k_m.gguf", "Q4_K_M")
    sources = {"Q4_1": q4_1, "Q4_0": q4_0, "Q4_K_M": q4_k_m}

    rows = []  # (source, output, tool, path)
    for name, src in sources.items():
        rows.append((name, name, "the source itself", src))
        rows.append((name, "F32", "llama-quantize (same values)", llama_quantize(src, w / f"{name}-F32.gguf", "F32")))
    for src_name, ftype in [("Q4_1", "Q5_1"), ("Q4_1", "Q8_0"), ("Q4_0", "Q8_0"), ("Q4_K_M", "Q5_K_M"),
                            ("Q4_K_M", "Q6_K")]:
        src = sources[src_name]
        rows.append((src_name, ftype, "qforge", qforge_quantize(src, w / f"{src_name}-{ftype}-qforge.gguf", ftype)))
        rows.append((src_name, ftype, "llama-quantize", llama_quantize(src, w / f"{src_name}-{ftype}-llama.gguf", ftype)))
    mlx_ours = w / "Q4_1-mlx-qforge"
    if not mlx_ours.exists():
        run([QFORGE, "convert", q4_1, mlx_ours, "--to", "mlx"])
    rows.append(("Q4_1", "MLX 4-bit g32 (+ 8-bit embedding)", "qforge convert", mlx_ours))
    hf = w / "Q4_1-hf"
    if not hf.exists():
        run([QFORGE, "convert", q4_1, hf, "--to", "safetensors"])
    mlx_ref = w / "Q4_1-mlx-mlx-lm"
    if not mlx_ref.exists():
        run([sys.executable, "-m", "mlx_lm", "convert", "--hf-path", hf, "--mlx-path", mlx_ref, "-q",
             "--q-bits", "4", "--q-group-size", "32"])
    rows.append(("Q4_1", "MLX 4-bit g32", "mlx_lm.convert (float32 copy)", mlx_ref))

    bases = {}
    for name, src in sources.items():
        base = w / f"{name}.kld"
        if not base.exists():
            run([tool("llama-perplexity"), "-m", src, "-f", TEXT, "-c", "512", "--chunks", str(args.chunks),
                 "-t", "2", "--kl-divergence-base", base])
        bases[name] = base

    results = []
    for src_name, out, who, path in rows:
        t0 = time.time()
        src = sources[src_name]
        values = "exact" if path == src else value_check(src, path)
        # The F32 rows only show llama.cpp's compute-path floor; qforge's
        # engine on F32 is the slowest path here, so they skip it.
        kl = None if out == "F32" else verify(path, src, args.chunks)
        lk = llama_kld(path, bases[src_name], args.chunks) if path.is_file() else None
        results.append((src_name, out, who, values, kl, lk))
        print(f"{src_name} -> {out} ({who}): {values}, KLD {kl and kl['mean_kld']}, llama {lk} "
              f"[{time.time() - t0:.0f} s]", flush=True)

    commit = run(["git", "-C", ROOT, "rev-parse", "--short", "HEAD"]).stdout.strip()
    load = pathlib.Path("/proc/loadavg").read_text().split()[:3]
    lines = [
        "# Requantizing quantized files: qforge beside llama-quantize",
        "",
        "Issue 12's benchmark, written by `scripts/bench_requant.py` (its docstring",
        "says what each column is). SmolLM2-135M-Instruct; the Q4_0 and Q4_K_M",
        "sources are llama-quantize's from the F16 copy of the oracle's Q4_1 file.",
        "KL divergence is against the row's source, on the GPL-3 in 512-token",
        f"windows ({args.chunks} of them, {args.chunks * 255} scored tokens).",
        "",
        "```",
        "source tests/interop/oracles.env",
        "cargo build --release --bin qforge",
        f'"$QFORGE_ORACLE_PYTHON" scripts/bench_requant.py --chunks {args.chunks}',
        "```",
        "",
        f"## {datetime.date.today()}, commit {commit}",
        "",
        f"2 threads per tool, load average {' '.join(load)} at the end (shared machine).",
        "",
        "| source | output | made by | values vs source | KLD (qforge verify) | top-1 | PPL ratio | KLD (llama-perplexity) |",
        "| --- | --- | --- | --- | ---: | ---: | ---: | ---: |",
    ]
    for src_name, out, who, values, kl, lk in results:
        ours = ("—", "—", "—") if kl is None else (
            f"{kl['mean_kld']:.6f} ± {kl['mean_kld_error']:.6f}", f"{100 * kl['same_top']:.1f}%",
            f"{kl['ppl_ratio']:.4f}")
        lines.append(f"| {src_name} | {out} | {who} | {values} | {' | '.join(ours)} | "
                     f"{'—' if lk is None else f'{lk:.6f}'} |")
    text = "\n".join(lines) + "\n"
    args.out.write_text(text)
    print(text)


if __name__ == "__main__":
    main()
