#!/usr/bin/env python3
"""ggml's quantize / dequantize throughput on the rows the Rust bench uses.

Called by `cargo bench -p quant-kernels` (benches/ggml.rs) with
$QFORGE_ORACLE_PYTHON; prints one JSON object per line:
{"type": T, "op": "quantize"|"dequantize", "threads": N, "gbps": X}
GB/s counts f32 bytes (input of quantize, output of dequantize), best of
--reps runs after a warm-up. Threads are Python threads over row chunks:
ctypes releases the GIL, so ggml runs truly in parallel, as
llama-quantize's worker threads would.
"""

import argparse
import json
import pathlib
import sys
import time
from concurrent.futures import ThreadPoolExecutor

import numpy as np

try:  # numpy >= 2
    from numpy._core.multiarray import _set_madvise_hugepage
except ImportError:
    from numpy.core.multiarray import _set_madvise_hugepage

# numpy madvises large arrays into transparent huge pages; the Rust side's
# Vecs get 4 KiB pages, which costs it ~20% on the 32 MiB buffers here.
# Give ggml the same pages so the ratio compares the kernels.
_set_madvise_hugepage(False)

ROOT = pathlib.Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "fixtures" / "golden" / "ggml"))
from ggml_ctypes import TYPE_IDS, Ggml, _ptr, row_size  # noqa: E402


def timed(fn, reps):
    """Best of `reps` runs (the caller has warmed up)."""
    times = []
    for _ in range(reps):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return min(times)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("rows")
    ap.add_argument("--n-per-row", type=int, required=True)
    ap.add_argument("--types", required=True)
    ap.add_argument("--threads", default="1,2")
    ap.add_argument("--reps", type=int, default=3)
    args = ap.parse_args()

    x = np.fromfile(args.rows, dtype=np.float32)
    n = args.n_per_row
    nrows = x.size // n
    g = Ggml()
    for ty in args.types.split(","):
        tid = TYPE_IDS[ty]
        g.base.ggml_quantize_init(tid)
        rs = row_size(ty, n)
        q = np.zeros(nrows * rs, dtype=np.uint8)
        out = np.zeros(x.size, dtype=np.float32)
        to_float = g._fn("to_float", ty) if ty != "F32" else None
        for threads in map(int, args.threads.split(",")):
            step = -(-nrows // (4 * threads))
            chunks = [(r, min(step, nrows - r)) for r in range(0, nrows, step)]
            pool = ThreadPoolExecutor(threads)

            def quant():
                list(pool.map(lambda c: g.base.ggml_quantize_chunk(
                    tid, _ptr(x), _ptr(q), c[0] * n, c[1], n, None), chunks))

            def dequant():
                def one(c):
                    qa = q[c[0] * rs:(c[0] + c[1]) * rs]
                    oa = out[c[0] * n:(c[0] + c[1]) * n]
                    to_float(_ptr(qa), _ptr(oa), c[1] * n)
                list(pool.map(one, chunks))

            quant()  # warm up, and the bytes to dequantize
            tq = timed(quant, args.reps)
            print(json.dumps({"type": ty, "op": "quantize", "threads": threads,
                              "gbps": x.nbytes / tq / 1e9}), flush=True)
            if to_float is not None:
                dequant()
                td = timed(dequant, args.reps)
                print(json.dumps({"type": ty, "op": "dequantize", "threads": threads,
                                  "gbps": x.nbytes / td / 1e9}), flush=True)
            pool.shutdown()


if __name__ == "__main__":
    main()
