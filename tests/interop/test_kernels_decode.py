"""GGUF types qforge reads but does not write (llama.cpp's IQ1/IQ2/IQ3,
ternary and FP4 types) against ggml itself, bit for bit.

For each type:
- random blocks (every byte random, the scale fields drawn so that they
  are finite) are dequantized by quant-kernels (through the `qk` example)
  and by ggml's `to_float`; the two must be equal bit for bit, and
  gguf-py's `gguf.quants.dequantize` must agree wherever it agrees with
  ggml (the oracle a file is run with is ggml);
- random weight blocks against random activation blocks of the type's
  `vec_dot_type` (any int8 including -128, Q8_K's `bsums` the sums of
  its values, as `from_float` writes them) give ggml's CPU `vec_dot`
  bit for bit;
- rows of SmolLM2-135M quantized to the type by ggml's own quantizer
  (with a random importance vector, which some of them require) are
  dequantized like ggml and gguf-py, and their dot products with other
  model rows quantized by ggml's `from_float` equal ggml's.
"""

import pathlib
import sys

import numpy as np
import pytest

ROOT = pathlib.Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "fixtures" / "golden" / "ggml"))
from ggml_ctypes import GEOMETRY, TYPE_IDS, row_size  # noqa: E402

import gguf  # noqa: E402
from gguf import GGMLQuantizationType  # noqa: E402
from test_kernels_ggml import assert_same_floats, ggml, qk, run_qk  # noqa: E402,F401

# type -> byte offsets of its f16 scale fields within a block
F16_FIELDS = {
    "IQ2_XXS": [0], "IQ2_XS": [0], "IQ2_S": [0], "IQ3_XXS": [0], "IQ3_S": [0],
    "IQ1_S": [0], "IQ1_M": [], "TQ1_0": [52], "TQ2_0": [64], "MXFP4": [], "NVFP4": [],
}
DECODE_TYPES = list(F16_FIELDS)
RANDOM_BLOCKS = 4096
DOT_ROWS = 256
DOT_BLOCKS_PER_ROW = 8


def finite_f16(rng, n, lo_exp, hi_exp):
    """`n` random finite f16 bit patterns with biased exponents in
    [lo_exp, hi_exp] (0: zero and subnormals), random sign and mantissa."""
    sign = rng.integers(0, 2, n).astype(np.uint16) << 15
    exp = rng.integers(lo_exp, hi_exp + 1, n).astype(np.uint16) << 10
    man = rng.integers(0, 1024, n).astype(np.uint16)
    return sign | exp | man


def random_blocks(ty, nblocks, rng, lo_exp=0, hi_exp=30):
    """Random blocks of `ty` with finite scales (exponents in the given
    range), as a flat uint8 array."""
    size = GEOMETRY[ty][1]
    b = rng.integers(0, 256, (nblocks, size), dtype=np.uint8)
    for off in F16_FIELDS[ty]:
        b[:, off:off + 2] = finite_f16(rng, nblocks, lo_exp, hi_exp).view(np.uint8).reshape(-1, 2)
    if ty == "IQ1_M":
        # The f16 scale is the top nibbles of the four u16 `scales` (bytes
        # 48..56), lowest nibble first.
        d = finite_f16(rng, nblocks, lo_exp, hi_exp)
        sc = b[:, 48:56].copy().view(np.uint16)
        for k in range(4):
            sc[:, k] = (sc[:, k] & 0x0FFF) | (((d >> (4 * k)) & 0xF) << 12)
        b[:, 48:56] = sc.view(np.uint8)
    if ty == "MXFP4" and hi_exp < 30:
        # E8M0 exponents near 1.0 for the dot products (2^-20 .. 2^20).
        b[:, 0] = rng.integers(107, 148, nblocks, dtype=np.uint8)
    return b.reshape(-1)


def random_activations(vdt, nblocks, rng):
    """Random activation blocks of `vdt` (Q8_K or Q8_0): any int8 values,
    -128 included, with a finite scale; Q8_K's bsums are the sums of each
    16 values, as ggml's quantizer writes them."""
    qs = rng.integers(-128, 128, (nblocks, 256 if vdt == "Q8_K" else 32), dtype=np.int8)
    # A third of the blocks saturated at -128/127, where sign tricks and
    # 16-bit pair sums meet their limits.
    sat = rng.random(nblocks) < 0.33
    qs[sat] = np.where(rng.random(qs[sat].shape) < 0.5, -128, 127).astype(np.int8)
    if vdt == "Q8_K":
        d = (rng.uniform(1e-4, 1e-1, nblocks) * rng.choice([-1, 1], nblocks)).astype(np.float32)
        bsums = qs.reshape(nblocks, 16, 16).astype(np.int16).sum(axis=2, dtype=np.int16)
        return np.concatenate([d.view(np.uint8).reshape(-1, 4), qs.view(np.uint8),
                               bsums.view(np.uint8).reshape(-1, 32)], axis=1).reshape(-1)
    d = np.float16(rng.uniform(1e-4, 1e-1, nblocks)).view(np.uint16)
    return np.concatenate([d.view(np.uint8).reshape(-1, 2), qs.view(np.uint8)], axis=1).reshape(-1)


def qk_dequantize(qk, ty, q, tmp_path):
    q.tofile(tmp_path / "q.bin")
    run_qk(qk, "dequantize", ty, tmp_path / "q.bin", tmp_path / "q.f32")
    return np.fromfile(tmp_path / "q.f32", dtype=np.float32)


def qk_vec_dot(qk, ty, w, a, n, tmp_path):
    w.tofile(tmp_path / "w.bin")
    a.tofile(tmp_path / "a.bin")
    run_qk(qk, "vec-dot", ty, tmp_path / "w.bin", tmp_path / "a.bin", tmp_path / "d.f32", "--n", n)
    return np.fromfile(tmp_path / "d.f32", dtype=np.float32)


def gguf_py_dequantize(ty, q):
    size = GEOMETRY[ty][1]
    return gguf.quants.dequantize(q.reshape(-1, size), GGMLQuantizationType[ty]).astype(
        np.float32).reshape(-1)


def check_dequantize(ggml, qk, ty, q, tmp_path, what):
    n = q.size // GEOMETRY[ty][1] * GEOMETRY[ty][0]
    ours = qk_dequantize(qk, ty, q, tmp_path)
    theirs = ggml.dequantize(ty, q, n)
    assert_same_floats(ty, ours, theirs, f"{what}: dequantize vs ggml to_float")
    py = gguf_py_dequantize(ty, q)
    oracles_agree = (py.view(np.uint32) == theirs.view(np.uint32)) | (np.isnan(py) & np.isnan(theirs))
    # gguf-py is the second oracle: it must agree with ggml almost
    # everywhere (else this comparison would say little), and we with it
    # wherever it does.
    assert oracles_agree.mean() > 0.99, f"{ty}: gguf-py and ggml agree on only {oracles_agree.mean():.3f}"
    assert_same_floats(ty, ours[oracles_agree], py[oracles_agree], f"{what}: dequantize vs gguf-py")
    return ours


@pytest.mark.parametrize("ty", DECODE_TYPES)
def test_dequantize_random_blocks_like_ggml(ty, ggml, qk, tmp_path):
    rng = np.random.default_rng(TYPE_IDS[ty])
    q = random_blocks(ty, RANDOM_BLOCKS, rng)
    ours = check_dequantize(ggml, qk, ty, q, tmp_path, f"{RANDOM_BLOCKS} random blocks")
    # The random scales must have produced real values, not only zeros.
    assert np.count_nonzero(ours) > ours.size // 4


@pytest.mark.parametrize("ty", DECODE_TYPES)
def test_vec_dot_random_blocks_like_ggml(ty, ggml, qk, tmp_path):
    rng = np.random.default_rng(100 + TYPE_IDS[ty])
    vdt = ggml.vec_dot_type(ty)
    # MXFP4's kernel takes blocks in pairs and the odd last one on its own:
    # give it an odd count.
    n = DOT_BLOCKS_PER_ROW * 256 + (32 if ty == "MXFP4" else 0)
    nb_w = DOT_ROWS * n // GEOMETRY[ty][0]
    nb_a = DOT_ROWS * n // GEOMETRY[vdt][0]
    # Scales of moderate size: products stay finite, so every value counts.
    w = random_blocks(ty, nb_w, rng, lo_exp=5, hi_exp=20)
    a = random_activations(vdt, nb_a, rng)
    ours = qk_vec_dot(qk, ty, w, a, n, tmp_path)
    wr, ar = w.reshape(DOT_ROWS, -1), a.reshape(DOT_ROWS, -1)
    theirs = np.array([ggml.vec_dot(ty, wr[i], ar[i], n) for i in range(DOT_ROWS)], dtype=np.float32)
    assert np.isfinite(theirs).all()
    assert_same_floats(ty, ours, theirs, f"vec_dot of {DOT_ROWS} random rows of {n}")


@pytest.fixture(scope="module")
def model_rows(smollm2):
    """Rows of SmolLM2's 1536-wide matrices (ffn_down), gguf-py's values."""
    reader = gguf.GGUFReader(smollm2)
    rows = []
    for t in reader.tensors:
        if t.name.endswith("ffn_down.weight"):
            x = gguf.quants.dequantize(t.data, t.tensor_type).astype(np.float32).reshape(-1, 1536)
            rows.append(x[::18])
    rows = np.concatenate(rows)
    assert rows.shape[0] >= 2 * DOT_ROWS, rows.shape
    return np.ascontiguousarray(rows[:2 * DOT_ROWS])


@pytest.mark.parametrize("ty", DECODE_TYPES)
def test_model_rows_like_ggml(ty, ggml, qk, model_rows, tmp_path):
    n = model_rows.shape[1]
    rng = np.random.default_rng(200 + TYPE_IDS[ty])
    imatrix = np.exp(rng.normal(0, 1, n)).astype(np.float32)
    w = ggml.quantize(ty, model_rows[:DOT_ROWS], n, imatrix)
    check_dequantize(ggml, qk, ty, w, tmp_path, f"{DOT_ROWS} SmolLM2 rows quantized by ggml")

    vdt = ggml.vec_dot_type(ty)
    act = (model_rows[DOT_ROWS:] * (10.0 ** rng.uniform(-2, 2, (DOT_ROWS, 1)))).astype(np.float32)
    a = ggml.from_float(vdt, act)
    ours = qk_vec_dot(qk, ty, w, a, n, tmp_path)
    wr, ar = w.reshape(DOT_ROWS, -1), a.reshape(DOT_ROWS, -1)
    theirs = np.array([ggml.vec_dot(ty, wr[i], ar[i], n) for i in range(DOT_ROWS)], dtype=np.float32)
    assert_same_floats(ty, ours, theirs, f"vec_dot of {DOT_ROWS} SmolLM2 rows")
