"""Issue 11's table: mean KL divergence of MLX folders against their
unquantized source, for mlx_lm.convert's round to nearest, qforge's
searched scales, and the search steered by `qforge imatrix`.

    source tests/interop/oracles.env
    cargo build --release --bin qforge
    $QFORGE_ORACLE_PYTHON tests/interop/kld_mlx_search.py --work /tmp/kld \\
        [--models smollm2,llama,mistral,qwen2,qwen3,gemma3,phi3] [--quants 4:64,3:64] \\
        [--chunks 8] [--ctx 512] [--fixture-ctx 128] [--fixture-chunks 40] \\
        [--mlx-check-chunks 1] [--mlx-check-ctx 256]

For each model and bits:group it writes
- `rtn`: mlx_lm.convert -q (the reference quantizer, run in this process);
- `search`: qforge convert --to mlx --method search;
- `search+imatrix`: the same with --imatrix from `qforge imatrix
  --process-output` (the output matrix is quantized too) on other texts
  than the one evaluated: the non-GPL licenses of IMATRIX_TEXTS, about
  14k tokens, all whole chunks of them;
then `qforge verify FOLDER --reference SOURCE --text GPL-3` gives the mean
KLD (llama-perplexity's definition), and mlx-lm itself (mlx_lm.load,
float32) gives perplexity and mean KLD on the first windows as a cross-check
of the same folders. SmolLM2's source is the oracle's Q4_1 GGUF widened to
a bf16 Hugging Face folder by `qforge convert --dtype bf16`. Prints a
Markdown table; --json writes the numbers too.
"""

import argparse
import json
import math
import os
import pathlib
import shutil
import subprocess
import sys
import time

import numpy as np

ROOT = pathlib.Path(__file__).resolve().parents[2]
FIXTURES = ROOT / "fixtures"
EVAL_TEXT = pathlib.Path("/usr/share/common-licenses/GPL-3")
# The importance matrix's text: license texts Debian ships outside the GPL
# family (the evaluated text is GPL-3), one version of each, about 64 KB.
IMATRIX_TEXTS = [pathlib.Path("/usr/share/common-licenses") / n
                 for n in ("Apache-2.0", "MPL-2.0", "Artistic", "CC0-1.0", "GFDL-1.3", "BSD")]
ARCHS = ["llama", "mistral", "qwen2", "qwen3", "gemma3", "phi3"]


def run(cmd, **kw):
    proc = subprocess.run([str(c) for c in cmd], capture_output=True, text=True, **kw)
    if proc.returncode != 0:
        sys.exit(f"{cmd} failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}")
    return proc.stdout


def mlx_ready_copy(src, dest):
    """A copy with the top-level rope keys mlx-lm 0.32 reads (FORMATS.md)."""
    shutil.copytree(src, dest)
    cfg = json.loads((dest / "config.json").read_text())
    rp = cfg.get("rope_parameters", {})
    if "full_attention" in rp:
        cfg["rope_theta"] = rp["full_attention"]["rope_theta"]
        cfg["rope_local_base_freq"] = rp["sliding_attention"]["rope_theta"]
    elif "rope_theta" in rp:
        cfg["rope_theta"] = rp["rope_theta"]
    (dest / "config.json").write_text(json.dumps(cfg, indent=2))
    return dest


def source(model, qforge, work):
    out = work / f"{model}-src"
    if out.exists():
        return out
    if model == "smollm2":
        tmp = work / "smollm2-bf16"
        if not tmp.exists():
            run([qforge, "convert", os.environ["QFORGE_SMOLLM2_GGUF"], tmp, "--to", "safetensors",
                 "--dtype", "bf16"])
        return mlx_ready_copy(tmp, out)
    return mlx_ready_copy(FIXTURES / model, out)


def folder_bytes(folder):
    """Tensor data bytes of a folder's safetensors files (the headers'
    JSON differs between writers: mlx orders keys another way)."""
    total = 0
    for p in folder.glob("*.safetensors"):
        with open(p, "rb") as f:
            n = int.from_bytes(f.read(8), "little")
        total += p.stat().st_size - 8 - n
    return total


def verify(qforge, folder, ref, ctx, chunks):
    out = run([qforge, "verify", folder, "--reference", ref, "--text", EVAL_TEXT, "--ctx", ctx,
               "--chunks", chunks, "--no-speed", "--sample-tokens", 0, "--json"])
    j = json.loads(out)
    return j["kl"]["mean_kld"], j["kl"]["mean_kld_error"], j["perplexity"]["ppl"]


def mlx_lm_check(folders, ref, ctx, chunks):
    """Perplexity and mean KLD (exact, float64 softmax) by mlx-lm on the
    first `chunks` windows of the evaluation text, second half scored, BOS
    first when the tokenizer adds one (as qforge verify does)."""
    import mlx.core as mx
    from mlx_lm import load

    def logits_of(path, windows):
        model, _ = load(str(path))
        model.set_dtype(mx.float32)
        out = []
        for w in windows:
            lg = np.array(model(mx.array(w)[None])[0].astype(mx.float32), dtype=np.float64)
            out.append(lg[ctx // 2:ctx - 1])
        return out

    _, tok = load(str(ref))
    ids = tok.encode(EVAL_TEXT.read_text())
    bos = tok.bos_token_id if tok.bos_token_id is not None and ids[:1] == [tok.bos_token_id] else None
    windows = []
    for i in range(chunks):
        w = list(ids[i * ctx:(i + 1) * ctx])
        if bos is not None:
            w[0] = bos
        windows.append(w)

    def log_softmax(x):
        m = x.max(-1, keepdims=True)
        return x - m - np.log(np.exp(x - m).sum(-1, keepdims=True))

    base = [log_softmax(l) for l in logits_of(ref, windows)]
    res = {}
    for name, path in folders.items():
        lq = [log_softmax(l) for l in logits_of(path, windows)]
        kld, nll = [], []
        for w, lb, l in zip(windows, base, lq):
            kld.extend((np.exp(lb) * (lb - l)).sum(-1).tolist())
            tgt = np.array(w[ctx // 2 + 1:ctx])
            nll.extend((-l[np.arange(len(tgt)), tgt]).tolist())
        res[name] = (float(np.mean(kld)), math.exp(float(np.mean(nll))))
    return res


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--work", type=pathlib.Path, required=True)
    ap.add_argument("--qforge", type=pathlib.Path, default=ROOT / "target" / "release" / "qforge")
    ap.add_argument("--models", default="smollm2," + ",".join(ARCHS))
    ap.add_argument("--quants", default="4:64,3:64")
    ap.add_argument("--ctx", type=int, default=512)
    ap.add_argument("--chunks", type=int, default=8)
    ap.add_argument("--fixture-ctx", type=int, default=128)
    ap.add_argument("--fixture-chunks", type=int, default=40)
    ap.add_argument("--mlx-check-chunks", type=int, default=1)
    ap.add_argument("--mlx-check-ctx", type=int, default=256)
    ap.add_argument("--json", type=pathlib.Path)
    a = ap.parse_args()
    from mlx_lm import convert as mlx_lm_convert

    a.work.mkdir(parents=True, exist_ok=True)
    text = a.work / "imatrix-text.txt"
    text.write_text("".join(p.read_text() for p in IMATRIX_TEXTS))
    rows = []
    for model in a.models.split(","):
        src = source(model, a.qforge, a.work)
        small = model != "smollm2"
        ctx = a.fixture_ctx if small else a.ctx
        chunks = a.fixture_chunks if small else a.chunks
        imat = a.work / f"{model}-imatrix.gguf"
        if not imat.exists():
            t = time.time()
            run([a.qforge, "imatrix", src, "--text", text, "--ctx", ctx, "--process-output", "-o", imat])
            print(f"{model}: imatrix in {time.time() - t:.1f} s", file=sys.stderr)
        for q in a.quants.split(","):
            bits, group = (int(v) for v in q.split(":"))
            tag = f"{model}-b{bits}g{group}"
            folders = {
                "rtn": a.work / f"{tag}-rtn",
                "weights-only": a.work / f"{tag}-weights-only",
                "search": a.work / f"{tag}-search",
                "search+imatrix": a.work / f"{tag}-search-imatrix",
            }
            if not folders["rtn"].exists():
                mlx_lm_convert(str(src), str(folders["rtn"]), quantize=True, q_bits=bits, q_group_size=group)
            for name, extra in [("weights-only", ["--calibration-tokens", 0]), ("search", []),
                                ("search+imatrix", ["--imatrix", imat])]:
                if not folders[name].exists():
                    run([a.qforge, "convert", src, folders[name], "--to", "mlx", "--bits", bits,
                         "--group-size", group, "--method", "search", *extra])
            row = {"model": model, "bits": bits, "group": group, "ctx": ctx, "chunks": chunks}
            for name, f in folders.items():
                kld, err, ppl = verify(a.qforge, f, src, ctx, chunks)
                row[name] = {"kld": kld, "kld_error": err, "ppl": ppl, "bytes": folder_bytes(f)}
            if a.mlx_check_chunks > 0:
                mctx = min(a.mlx_check_ctx, ctx)
                for name, (kld, ppl) in mlx_lm_check(folders, src, mctx, a.mlx_check_chunks).items():
                    row[name]["mlx_lm_kld"] = kld
                    row[name]["mlx_lm_ppl"] = ppl
                row["mlx_check"] = {"ctx": mctx, "chunks": a.mlx_check_chunks}
            rows.append(row)
            print(json.dumps(row), file=sys.stderr)
    names = ("rtn", "weights-only", "search", "search+imatrix")
    print("| model | bits/group | KLD rtn | weights only (ratio) | search (ratio) | search+imatrix (ratio) "
          "| mlx-lm KLD rtn / search / +imatrix | tensor bytes equal |")
    print("| --- | --- | ---: | ---: | ---: | ---: | ---: | --- |")
    for r in rows:
        k = {n: r[n]["kld"] for n in names}
        m = [r[n].get("mlx_lm_kld") for n in ("rtn", "search", "search+imatrix")]
        mcol = " / ".join(f"{v:.4g}" for v in m) if m[0] is not None else "-"
        same = len({r[n]["bytes"] for n in names}) == 1
        cells = " | ".join(f"{k[n]:.4g} ({k[n] / k['rtn']:.2f}x)" for n in names[1:])
        print(f"| {r['model']} | {r['bits']}/{r['group']} | {k['rtn']:.4g} | {cells} | {mcol} | "
              f"{'yes' if same else 'NO'} |")
    if a.json:
        a.json.write_text(json.dumps(rows, indent=1))


if __name__ == "__main__":
    main()
