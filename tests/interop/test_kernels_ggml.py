"""quant-kernels' GGML kernels against ggml itself on a real model.

Every tensor of SmolLM2-135M is dequantized to f32 with gguf-py, then
requantized to each GGUF type by our kernels (through the `qk` example
binary) and by ggml's `ggml_quantize_chunk` (libggml-base through ctypes),
with and without a random importance vector; the bytes must be equal.
Our dequantization must equal gguf-py's `gguf.quants.dequantize` and
ggml's `to_float` bit for bit, and gguf-py's quantizers (where it has one)
must give our bytes too.

Row lengths: SmolLM2's weight rows are 576 or 1536 values wide. Types with
256-value super-blocks (K-quants, IQ4_XS) take the 1536-wide rows as they
are; the 576-wide tensors are regrouped into rows of 2304 = 4 x 576 (every
such tensor has a multiple of 4 rows), with the importance vector tiled to
match. llama-quantize would instead fall back to another type for those
tensors; the regrouping exists only to feed all of the model's values
through every quantizer.
"""

import os
import pathlib
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest

ROOT = pathlib.Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "fixtures" / "golden" / "ggml"))
from ggml_ctypes import GEOMETRY, IMATRIX_IGNORED, QUANT_TYPES, Ggml, row_size  # noqa: E402

import gguf  # noqa: E402
from gguf import GGMLQuantizationType  # noqa: E402

THREADS = 2
# Rows per width taken from SmolLM2's weights, evenly spaced over all of them.
MODEL_ROWS = 16384


@pytest.fixture(scope="session")
def ggml():
    return Ggml()


@pytest.fixture(scope="session")
def qk():
    subprocess.run(
        ["cargo", "build", "--release", "--quiet", "-p", "quant-kernels", "--example", "qk"],
        cwd=ROOT, check=True)
    target = pathlib.Path(os.environ.get("CARGO_TARGET_DIR", ROOT / "target"))
    return target / "release" / "examples" / "qk"


def run_qk(qk, *args):
    subprocess.run([str(qk), *map(str, args)], check=True)


@pytest.fixture(scope="session")
def model(smollm2):
    return gguf.GGUFReader(smollm2)


@pytest.fixture(scope="session")
def rows_by_width(model, tmp_path_factory):
    """All weight rows of the model as f32 (gguf-py's dequantization),
    concatenated per row width: {width: (path, array)}."""
    tmp = tmp_path_factory.mktemp("smollm2_rows")
    groups = {}
    for t in model.tensors:
        if len(t.shape) < 2:
            continue
        width = int(t.shape[0])
        x = gguf.quants.dequantize(t.data, t.tensor_type).astype(np.float32).reshape(-1, width)
        groups.setdefault(width, []).append(x)
    out = {}
    for width, parts in groups.items():
        # Every tensor contributes rows, but at most MODEL_ROWS in all per
        # width (CI time): the model's value distributions, not its size,
        # are what these cases add to the random and adversarial rows.
        rows = np.concatenate(parts)
        step = max(1, rows.shape[0] // MODEL_ROWS)
        a = np.ascontiguousarray(rows[::step][:MODEL_ROWS]).reshape(-1)
        path = tmp / f"rows_{width}.f32"
        a.tofile(path)
        out[width] = (path, a)
    assert sorted(out) == [576, 1536]
    return out


def imatrix_for(width, n_per_row):
    """A random importance vector per original row width (positive, a few
    zeros), tiled when rows are regrouped."""
    rng = np.random.default_rng(width)
    w = np.exp(rng.normal(0, 1, width)).astype(np.float32)
    w[rng.choice(width, 4, replace=False)] = 0.0
    return np.tile(w, n_per_row // width)


def n_per_row_for(ty, width):
    blk = GEOMETRY[ty][0]
    if width % blk == 0:
        return width
    assert (4 * width) % blk == 0
    return 4 * width


def ggml_quantize_threaded(ggml, ty, x, n_per_row, imatrix):
    nrows = x.size // n_per_row
    out = np.zeros(nrows * row_size(ty, n_per_row), dtype=np.uint8)
    ggml.base.ggml_quantize_init(__import__("ggml_ctypes").TYPE_IDS[ty])
    step = max(1, nrows // (8 * THREADS))
    with ThreadPoolExecutor(THREADS) as pool:
        list(pool.map(lambda r: ggml.quantize_into(ty, x, out, r, min(step, nrows - r),
                                                   n_per_row, imatrix),
                      range(0, nrows, step)))
    return out


def assert_same_bytes(ty, ours, theirs, what):
    assert ours.size == theirs.size, f"{ty}: {ours.size} bytes vs {theirs.size}"
    if not np.array_equal(ours, theirs):
        bs = GEOMETRY[ty][1]
        bad = np.flatnonzero((ours != theirs).reshape(-1, bs).any(axis=1))
        pytest.fail(f"{ty} {what}: {bad.size} of {ours.size // bs} blocks differ, "
                    f"first block {bad[0]}")


def assert_same_floats(ty, ours, theirs, what):
    assert ours.shape == theirs.shape
    a, b = ours.view(np.uint32), theirs.view(np.uint32)
    same = (a == b) | (np.isnan(ours) & np.isnan(theirs))
    if not same.all():
        i = int(np.flatnonzero(~same)[0])
        pytest.fail(f"{ty} {what}: {int((~same).sum())} values differ, first at {i}: "
                    f"{ours[i]!r} vs {theirs[i]!r}")


def test_dequantize_model_tensors_like_gguf_py(model, qk, tmp_path):
    """Our dequantization of the file's own Q4_1 / Q8_0 / F32 bytes."""
    seen = set()
    for t in model.tensors:
        name = t.tensor_type.name
        raw = np.ascontiguousarray(t.data).view(np.uint8).reshape(-1)
        src = tmp_path / "t.bin"
        raw.tofile(src)
        run_qk(qk, "dequantize", name, src, tmp_path / "t.f32")
        ours = np.fromfile(tmp_path / "t.f32", dtype=np.float32)
        theirs = gguf.quants.dequantize(t.data, t.tensor_type).astype(np.float32).reshape(-1)
        assert_same_floats(name, ours, theirs, f"tensor {t.name}")
        seen.add(name)
    assert seen == {"F32", "Q4_1", "Q8_0"}


# Types whose ggml quantizer reads an importance matrix get a second case
# with one; the others ignore it, so that case would repeat the first.
REQUANT_CASES = [(ty, False) for ty in QUANT_TYPES] + [
    (ty, True) for ty in QUANT_TYPES if ty not in IMATRIX_IGNORED
]


@pytest.mark.parametrize(
    "ty,with_imatrix", REQUANT_CASES, ids=[f"{t}-{'imatrix' if m else 'plain'}" for t, m in REQUANT_CASES]
)
def test_requantize_model_like_ggml(ty, with_imatrix, rows_by_width, ggml, qk, tmp_path):
    for width, (path, x) in sorted(rows_by_width.items()):
        n_per_row = n_per_row_for(ty, width)
        imatrix = imatrix_for(width, n_per_row) if with_imatrix else None
        args = ["quantize", ty, path, tmp_path / "q.bin", "--n-per-row", n_per_row]
        if imatrix is not None:
            imatrix.tofile(tmp_path / "imatrix.f32")
            args += ["--imatrix", tmp_path / "imatrix.f32"]
        run_qk(qk, *args)
        ours = np.fromfile(tmp_path / "q.bin", dtype=np.uint8)
        theirs = ggml_quantize_threaded(ggml, ty, x, n_per_row, imatrix)
        assert_same_bytes(ty, ours, theirs, f"rows of {n_per_row}"
                          + (" with imatrix" if with_imatrix else ""))

        # Dequantizing those bytes: ours == gguf-py == ggml's to_float.
        run_qk(qk, "dequantize", ty, tmp_path / "q.bin", tmp_path / "back.f32")
        back = np.fromfile(tmp_path / "back.f32", dtype=np.float32)
        qtype = GGMLQuantizationType[ty]
        gguf_back = gguf.quants.dequantize(
            theirs.reshape(-1, row_size(ty, n_per_row)), qtype).astype(np.float32).reshape(-1)
        assert_same_floats(ty, back, gguf_back, "dequantize vs gguf-py")
        if not with_imatrix:
            ggml_back = ggml.dequantize(ty, theirs, x.size)
            assert_same_floats(ty, back, ggml_back, "dequantize vs ggml to_float")

            # gguf-py's own quantizer, where it has one.
            try:
                py = gguf.quants.quantize(x.reshape(-1, n_per_row), qtype)
            except NotImplementedError:
                continue
            py = np.ascontiguousarray(py).view(np.uint8).reshape(-1)
            assert_same_bytes(ty, ours, py, "vs gguf-py quantize")


DOT_ROWS = 2048


@pytest.mark.parametrize("ty", ["F16", "F32"])
def test_batched_mul_mat_like_ggml_cpu(ty, rows_by_width, ggml, qk, tmp_path):
    """ggml's `mul_mat` takes llamafile's tinyBLAS for batches of F16 and
    F32 weights (at least two tokens, rows a multiple of 4, rows of a
    multiple of 16 values), whose order of additions is not `vec_dot`'s.
    `ggml::gemm_batch` (through `qk mul-mat`) must give ggml's bits there
    and `vec_dot`'s elsewhere: model weight rows times other model rows
    scaled by random powers of ten, as ggml computes them through a graph
    of one `mul_mat` (its activations converted to the weights'
    `vec_dot_type` by ggml itself)."""
    vdt = ggml.vec_dot_type(ty)
    rng = np.random.default_rng(11)
    for width, (_, x) in sorted(rows_by_width.items()):
        rows = x.reshape(-1, width)
        # tinyBLAS; rows not a multiple of 4 and a single token: vec_dot.
        for m, n_tok, tiny in [(64, 7, True), (62, 5, False), (64, 1, False)]:
            w = np.ascontiguousarray(rows[:m])
            act = (rows[m:m + n_tok] * (10.0 ** rng.uniform(-2, 2, (n_tok, 1)))).astype(np.float32)
            wq = ggml.quantize(ty, w, width)
            aq = ggml.from_float(vdt, act)
            wq.tofile(tmp_path / "w.bin")
            aq.tofile(tmp_path / "a.bin")
            run_qk(qk, "mul-mat", ty, tmp_path / "w.bin", tmp_path / "a.bin", tmp_path / "y.f32",
                   "--n", width)
            ours = np.fromfile(tmp_path / "y.f32", dtype=np.float32)
            theirs = ggml.mul_mat(ty, wq, width, act, threads=THREADS).reshape(-1)
            assert_same_floats(ty, ours, theirs, f"mul_mat of {m} rows of {width} by {n_tok} tokens")
            per_pair = np.array([ggml.vec_dot(ty, wq.reshape(m, -1)[i], aq.reshape(n_tok, -1)[t], width)
                                 for t in range(n_tok) for i in range(m)], dtype=np.float32)
            differ = int((per_pair.view(np.uint32) != theirs.view(np.uint32)).sum())
            # The case tests the order only where the two orders part.
            assert (differ > 0) == tiny, f"{ty} {m}x{width} by {n_tok}: {differ} pairs differ from vec_dot"


@pytest.mark.parametrize("ty", QUANT_TYPES)
def test_vec_dot_model_like_ggml_cpu(ty, rows_by_width, ggml, qk, tmp_path):
    """Activations quantized like the CPU backend's from_float, and dot
    products of model weight rows with them, equal to ggml's bit for bit.

    Weights: the first rows of each width group; activations: the rows
    after them, each scaled by a random power of ten (10^-2..10^2)."""
    vdt = ggml.vec_dot_type(ty)
    rng = np.random.default_rng(7)
    for width, (_, x) in sorted(rows_by_width.items()):
        n = n_per_row_for(ty, width)
        rows = x.reshape(-1, n)
        r = min(DOT_ROWS, rows.shape[0] // 2)
        w = np.ascontiguousarray(rows[:r])
        act = (rows[r:2 * r] * (10.0 ** rng.uniform(-2, 2, (r, 1)))).astype(np.float32)
        wq = ggml.quantize(ty, w, n)
        aq = ggml.from_float(vdt, act)

        act.tofile(tmp_path / "act.f32")
        run_qk(qk, "quantize-act", vdt, tmp_path / "act.f32", tmp_path / "act.bin")
        assert_same_bytes(vdt, np.fromfile(tmp_path / "act.bin", dtype=np.uint8), aq,
                          f"activations of {n}")

        wq.tofile(tmp_path / "w.bin")
        aq.tofile(tmp_path / "a.bin")
        run_qk(qk, "vec-dot", ty, tmp_path / "w.bin", tmp_path / "a.bin", tmp_path / "d.f32",
               "--n", n)
        ours = np.fromfile(tmp_path / "d.f32", dtype=np.float32)
        wr, ar = wq.reshape(r, -1), aq.reshape(r, -1)
        theirs = np.array([ggml.vec_dot(ty, wr[i], ar[i], n) for i in range(r)],
                          dtype=np.float32)
        assert_same_floats(ty, ours, theirs, f"vec_dot over rows of {n}")
