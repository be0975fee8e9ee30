#!/usr/bin/env python3
"""How close the K-quant searches' decisions are to their own rounding.

ggml's Q6_K search (make_qx_quants, nmax 32, rmse_type 1) and Q4_K search
(make_qkx2_quants, nmax 15, rmin -1, rdelta 0.1, nstep 20, squared error)
try a list of candidate scales per sub-block and keep a candidate when an
f32 comparison says it beats the best so far:

- Q6_K: sumlx^2 > best * suml2, where best = (sumlx/suml2) * sumlx of the
  winner: both sides are the weighted energy the fit explains, so two
  candidates differ by a small fraction of it;
- Q4_K: cur_error < best_error, the weighted squared residuals.

A GPU kernel could skip emulating the reference step by step only where
an approximate computation provably takes the same decision: where the
two sides differ by more than a bound on the f32 rounding of both (about
2^-16 relative for these sums of 16 or 32 terms). This script runs both
searches in float32 exactly as ggml does (numpy's float32 operations round
correctly and are never fused; np.rint is nearest_int's round half to even
for |p| < 2^22), vectorised over many sub-blocks, and reports:

- the relative gap of every decision between candidates whose levels
  differ (identical levels give identical bits, which any kernel can
  detect), as the share of decisions and of sub-blocks under 2^-k;
- for Q6_K, how often the float32 decision differs from the same decision
  taken in float64 from the same levels: such sub-blocks cannot be
  reproduced by any computation that does not round as the reference does.

Usage: kquant_decisions.py [--blocks N] [--safetensors FILE]
(the oracle venv of tests/interop has numpy and safetensors).
"""

import argparse

import numpy as np

F = np.float32
KS = (12, 14, 16, 18, 20)


def q6k_decisions(x):
    """x: (n, 16) float32 sub-blocks. Returns per-decision gaps, sub-block ids, f32/f64 disagreement flags."""
    n = x.shape[0]
    amax_i = np.argmax(np.abs(x), axis=1)
    mx = x[np.arange(n), amax_i]
    keep = np.abs(mx) >= F(1e-15)
    x, mx = x[keep], mx[keep]
    n = x.shape[0]
    w = x * x
    wx = w * x
    x64 = x.astype(np.float64)

    def levels(iscale):
        return np.clip(np.rint(iscale[:, None] * x), -32, 31).astype(F)

    def sums(lv):
        s = np.zeros(n, F)
        q = np.zeros(n, F)
        for i in range(16):
            s = s + wx[:, i] * lv[:, i]
            q = q + (w[:, i] * lv[:, i]) * lv[:, i]
        return s, q

    def energy64(lv):
        lv = lv.astype(np.float64)
        s = (x64**3 * lv).sum(1)
        q = (x64**2 * lv * lv).sum(1)
        return s * s / q

    best_l = levels(F(-32) / mx)
    s, q = sums(best_l)
    best = (s / q) * s
    best_e64 = energy64(best_l)
    gaps, ids, disagree = [], [], []
    for step in list(range(-9, 0)) + list(range(1, 10)):
        iscale = -(F(32) + F(0.1) * F(step)) / mx
        lv = levels(iscale)
        s, q = sums(lv)
        differ = (lv != best_l).any(1)
        take = (q > 0) & (s * s > best * q)
        e64 = energy64(lv)
        take64 = e64 > best_e64
        gap = np.abs(s.astype(np.float64) ** 2 / (best.astype(np.float64) * q) - 1.0)
        gaps.append(gap[differ])
        ids.append(np.nonzero(differ)[0])
        disagree.append(differ & (take != take64))
        best = np.where(take, (s / q) * s, best)
        best_l = np.where(take[:, None], lv, best_l)
        best_e64 = np.where(take, e64, best_e64)
    return np.concatenate(gaps), np.concatenate(ids), np.any(disagree, axis=0), n


def q4k_decisions(x):
    """x: (n, 32) float32 sub-blocks, with Q4_K's weights av_x + |x|."""
    n = x.shape[0]
    sum_x2 = np.zeros(n, F)
    for i in range(32):
        sum_x2 = sum_x2 + x[:, i] * x[:, i]
    av_x = np.sqrt(sum_x2 / F(32))
    wt = av_x[:, None] + np.abs(x)
    vmin = x[:, 0].copy()
    vmax = x[:, 0].copy()
    sum_w = wt[:, 0].copy()
    sum_x = sum_w * x[:, 0]
    for i in range(1, 32):
        vmin = np.minimum(vmin, x[:, i])
        vmax = np.maximum(vmax, x[:, i])
        sum_w = sum_w + wt[:, i]
        sum_x = sum_x + wt[:, i] * x[:, i]
    vmin = np.where(vmin > 0, F(0), vmin)
    keep = vmax != vmin
    x, wt, vmin, vmax, sum_w, sum_x = x[keep], wt[keep], vmin[keep], vmax[keep], sum_w[keep], sum_x[keep]
    n = x.shape[0]

    def error(scale, m, lv):
        e = np.zeros(n, F)
        for i in range(32):
            d = scale * lv[:, i] + m - x[:, i]
            e = e + wt[:, i] * (d * d)
        return e

    iscale = F(15) / (vmax - vmin)
    scale = F(1) / iscale
    best_l = np.clip(np.rint(iscale[:, None] * (x - vmin[:, None])), 0, 15).astype(F)
    best_err = error(scale, vmin, best_l)
    gaps, ids = [], []
    for step in range(21):
        iscale = (F(-1) + F(0.1) * F(step) + F(15)) / (vmax - vmin)
        lv = np.clip(np.rint(iscale[:, None] * (x - vmin[:, None])), 0, 15).astype(F)
        sl = np.zeros(n, F)
        sl2 = np.zeros(n, F)
        sxl = np.zeros(n, F)
        for i in range(32):
            sl = sl + wt[:, i] * lv[:, i]
            sl2 = sl2 + (wt[:, i] * lv[:, i]) * lv[:, i]
            sxl = sxl + (wt[:, i] * lv[:, i]) * x[:, i]
        d = sum_w * sl2 - sl * sl
        ok = d > 0
        dd = np.where(ok, d, F(1))
        ts = (sum_w * sxl - sum_x * sl) / dd
        tm = (sl2 * sum_x - sl * sxl) / dd
        pos = tm > 0
        tm = np.where(pos, F(0), tm)
        ts = np.where(pos, sxl / np.where(sl2 > 0, sl2, F(1)), ts)
        cur = error(ts, tm, lv)
        differ = ok & (lv != best_l).any(1)
        with np.errstate(divide="ignore", invalid="ignore"):
            gap = np.abs(cur.astype(np.float64) / best_err - 1.0)
        gaps.append(gap[differ])
        ids.append(np.nonzero(differ)[0])
        take = ok & (cur < best_err)
        best_err = np.where(take, cur, best_err)
        vmin = np.where(take, tm, vmin)
        best_l = np.where(take[:, None], lv, best_l)
    return np.concatenate(gaps), np.concatenate(ids), n


def report(name, gaps, ids, n, extra=""):
    print(f"{name}: {n} sub-blocks, {len(gaps)} decisions between different levels{extra}")
    for k in KS:
        close = gaps < 2.0**-k
        blocks = len(np.unique(ids[close]))
        print(f"  gap < 2^-{k}: {close.mean() * 100:6.2f}% of decisions, {blocks / n * 100:6.2f}% of sub-blocks")


def run(label, values, blocks):
    v = values[: (len(values) // 256) * 256]
    if blocks:
        v = v[: blocks * 256]
    g, i, dis, n = q6k_decisions(v.reshape(-1, 16))
    report(f"{label} Q6_K", g, i, n, f"; f32 and f64 decide differently in {dis.mean() * 100:.2f}% of sub-blocks")
    g, i, n = q4k_decisions(v.reshape(-1, 32))
    report(f"{label} Q4_K", g, i, n)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--blocks", type=int, default=2000, help="256-value blocks per source")
    ap.add_argument("--safetensors", help="also run over this file's 2-D tensors")
    a = ap.parse_args()
    rng = np.random.default_rng(20261127)
    run("N(0,1)", rng.standard_normal(a.blocks * 256).astype(F), a.blocks)
    if a.safetensors:
        # torch reads bf16 files, which numpy cannot.
        from safetensors.torch import load_file

        ts = load_file(a.safetensors)
        vals = np.concatenate([t.float().numpy().ravel() for _, t in sorted(ts.items()) if t.ndim == 2])
        pick = rng.choice(len(vals) // 256, size=min(a.blocks, len(vals) // 256), replace=False)
        run("safetensors", vals.reshape(-1, 256)[pick].ravel(), a.blocks)


if __name__ == "__main__":
    main()
