"""quant-kernels' MLX kernels against mlx 0.32.4 itself, on real weights.

The weights are every 2-D tensor of the real SmolLM2-135M-Instruct model
(gguf-py dequantizes its Q4_1/Q8_0 blocks to f32), cast to each dtype by
mlx. Rows quantize independently, so the tensors are stacked by row length
into two matrices (576 and 1536 columns) and each is quantized whole: the
same bytes as tensor by tensor. Group size 128 does not divide 576, so for
it the 576-column matrix is viewed as rows of 1152.

Quantize is compared on the whole model for every setting; dequantize and
the slow fp modes on the 1536-column matrix (26.5M values).

Our side runs through the `mlxq` example binary (raw files in and out).
Every comparison is bit for bit; nothing is skipped.
"""

import os
import pathlib
import subprocess

import gguf
import mlx.core as mx
import numpy as np
import pytest
from gguf.quants import dequantize as gguf_dequantize

ROOT = pathlib.Path(__file__).resolve().parents[2]
DTYPES = {"float32": mx.float32, "float16": mx.float16, "bfloat16": mx.bfloat16}
AFFINE = [(b, g) for b in (1, 2, 3, 4, 5, 6, 8) for g in (32, 64, 128)]


@pytest.fixture(scope="session")
def mlxq():
    """The mlxq example, built in release mode once per session."""
    subprocess.run(
        ["cargo", "build", "--release", "--quiet", "-p", "quant-kernels", "--example", "mlxq"],
        cwd=ROOT,
        check=True,
    )
    target = pathlib.Path(os.environ.get("CARGO_TARGET_DIR", ROOT / "target"))
    return target / "release" / "examples" / "mlxq"


@pytest.fixture(scope="session")
def smollm2_f32(smollm2):
    """{row length: f32 matrix} of SmolLM2's 2-D tensors, stacked by row length."""
    reader = gguf.GGUFReader(str(smollm2))
    by_cols = {}
    for t in reader.tensors:
        if len(t.shape) != 2:
            continue
        w = gguf_dequantize(t.data, t.tensor_type).astype(np.float32)
        by_cols.setdefault(w.shape[1], []).append(w)
    mats = {cols: np.concatenate(ws) for cols, ws in by_cols.items()}
    assert sorted(mats) == [576, 1536], sorted(mats)
    assert sum(m.size for m in mats.values()) > 134_000_000
    return mats


class Inputs:
    """The stacked matrices in one dtype: mlx arrays and raw files for mlxq."""

    def __init__(self, mats, dtype, folder):
        self.dtype = dtype
        self.arrays = {}
        self.files = {}
        for cols, m in mats.items():
            a = mx.array(m).astype(DTYPES[dtype])
            mx.eval(a)
            path = folder / f"{dtype}_{cols}.bin"
            path.write_bytes(raw_bytes(a))
            self.arrays[cols] = a
            self.files[cols] = path

    def for_group(self, group):
        """(cols, mlx array, raw file) per matrix, the row length a multiple
        of the group size (the same bytes viewed as rows of 1152 if not)."""
        out = []
        for cols, a in self.arrays.items():
            path = self.files[cols]
            if cols % group:
                cols = 1152
                a = a.reshape(-1, cols)
            out.append((cols, a, path))
        return out


@pytest.fixture(scope="session")
def inputs(smollm2_f32, tmp_path_factory):
    cache = {}
    folder = tmp_path_factory.mktemp("mlx_inputs")

    def get(dtype):
        if dtype not in cache:
            cache.clear()  # one dtype at a time keeps memory down
            cache[dtype] = Inputs(smollm2_f32, dtype, folder)
        return cache[dtype]

    return get


def raw_bytes(a):
    """Little-endian bytes of an mlx array (bf16 through a uint16 view)."""
    if a.dtype == mx.bfloat16:
        a = a.view(mx.uint16)
    return np.array(a).tobytes()


def widened(a):
    """An mlx float array as an f32 numpy array (exact)."""
    return np.array(a.astype(mx.float32))


def run(mlxq, *args):
    subprocess.run([str(mlxq), *args], check=True)


def assert_same_bytes(what, ours, theirs, elem=4):
    if ours == theirs:
        return
    assert len(ours) == len(theirs), f"{what}: {len(ours)} bytes, mlx has {len(theirs)}"
    a = np.frombuffer(ours, np.uint8).reshape(-1, elem)
    b = np.frombuffer(theirs, np.uint8).reshape(-1, elem)
    bad = np.nonzero((a != b).any(axis=1))[0]
    raise AssertionError(f"{what}: {len(bad)} of {len(a)} elements differ, first at {bad[0]}")


def assert_same_f32(what, ours, theirs):
    ours = np.asarray(ours, np.float32).reshape(-1)
    theirs = np.asarray(theirs, np.float32).reshape(-1)
    same = (ours.view(np.uint32) == theirs.view(np.uint32)) | (np.isnan(ours) & np.isnan(theirs))
    if not same.all():
        bad = np.nonzero(~same)[0]
        raise AssertionError(
            f"{what}: {len(bad)} of {len(ours)} values differ, first at {bad[0]}: "
            f"ours {ours[bad[0]]!r} mlx {theirs[bad[0]]!r}"
        )


def elem_size(a):
    return {mx.float32: 4, mx.float16: 2, mx.bfloat16: 2, mx.uint8: 1, mx.uint32: 4}[a.dtype]


@pytest.mark.parametrize("dtype", list(DTYPES))
@pytest.mark.parametrize("bits,group", AFFINE, ids=[f"b{b}-g{g}" for b, g in AFFINE])
def test_affine_matches_mx_quantize_and_dequantize(mlxq, inputs, tmp_path, bits, group, dtype):
    data = inputs(dtype)
    for cols, a, path in data.for_group(group):
        wq, s, b = mx.quantize(a, group_size=group, bits=bits)
        out = tmp_path / f"q{cols}"
        run(mlxq, "quantize", "mode=affine", f"bits={bits}", f"group={group}", f"dtype={dtype}",
            f"cols={cols}", f"in={path}", f"out={out}")
        what = f"{dtype} b{bits} g{group} cols {cols}"
        assert_same_bytes(f"{what} weight", pathlib.Path(f"{out}.weight").read_bytes(), raw_bytes(wq))
        assert_same_bytes(f"{what} scales", pathlib.Path(f"{out}.scales").read_bytes(), raw_bytes(s), elem_size(s))
        assert_same_bytes(f"{what} biases", pathlib.Path(f"{out}.biases").read_bytes(), raw_bytes(b), elem_size(b))

        # Dequantize mlx's tensors: with mlx's own rounding (in the scales'
        # dtype), and in f32 (mlx from f32-widened scales and biases). mlx's
        # CPU dequantize is slow (~30M values/s), so this runs on the
        # 1536-column matrix only: every ffn_down of the model.
        if cols != 1536:
            continue
        y = tmp_path / f"y{cols}"
        common = ["dequantize", "mode=affine", f"bits={bits}", f"group={group}", f"scales_dtype={dtype}",
                  f"cols={cols}", f"weight={out}.weight", f"scales={out}.scales", f"biases={out}.biases", f"out={y}"]
        run(mlxq, *common, f"precision={dtype}")
        theirs = mx.dequantize(wq, s, b, group_size=group, bits=bits)
        assert_same_f32(f"{what} dequantize (mlx rounding)", np.fromfile(y, np.float32), widened(theirs))
        if dtype != "float32":
            run(mlxq, *common, "precision=f32")
            theirs = mx.dequantize(wq, s.astype(mx.float32), b.astype(mx.float32), group_size=group, bits=bits)
            assert_same_f32(f"{what} dequantize (f32)", np.fromfile(y, np.float32), widened(theirs))


FP_MODES = [("mxfp4", None), ("mxfp8", None), ("nvfp4", None), ("nvfp4", 0.0037)]


@pytest.mark.parametrize("dtype", list(DTYPES))
@pytest.mark.parametrize("mode,global_scale", FP_MODES, ids=["mxfp4", "mxfp8", "nvfp4", "nvfp4-global"])
def test_fp_modes_match_mx_quantize_and_dequantize(mlxq, inputs, tmp_path, mode, global_scale, dtype):
    # mlx runs these modes on CPU as a graph of array ops (~4M values/s), so
    # they get the 1536-column matrix: every ffn_down of the model.
    data = inputs(dtype)
    cols, a, path = 1536, data.arrays[1536], data.files[1536]
    kw = {} if global_scale is None else {"global_scale": mx.array(global_scale, dtype=mx.float32)}
    extra = [] if global_scale is None else [f"global_scale={float(np.float32(global_scale))!r}"]
    wq, s = mx.quantize(a, mode=mode, **kw)
    out = tmp_path / "q"
    run(mlxq, "quantize", f"mode={mode}", f"dtype={dtype}", f"cols={cols}", f"in={path}", f"out={out}", *extra)
    what = f"{dtype} {mode}{' global' if extra else ''}"
    assert_same_bytes(f"{what} weight", pathlib.Path(f"{out}.weight").read_bytes(), raw_bytes(wq))
    assert_same_bytes(f"{what} scales", pathlib.Path(f"{out}.scales").read_bytes(), raw_bytes(s), 1)
    y = tmp_path / "y"
    for odt, mdt in DTYPES.items():
        run(mlxq, "dequantize", f"mode={mode}", "scales_dtype=uint8", f"cols={cols}", f"weight={out}.weight",
            f"scales={out}.scales", f"out={y}", f"precision={odt}", *extra)
        theirs = mx.dequantize(wq, s, mode=mode, dtype=mdt, **kw)
        assert_same_f32(f"{what} dequantize to {odt}", np.fromfile(y, np.float32), widened(theirs))


def test_output_does_not_depend_on_thread_count(mlxq, inputs, tmp_path):
    data = inputs("bfloat16")
    path = data.files[576]
    outs = []
    for threads in (1, 2):
        out = tmp_path / f"t{threads}"
        run(mlxq, "quantize", "mode=affine", "bits=3", "group=64", "dtype=bfloat16", "cols=576",
            f"in={path}", f"out={out}", f"threads={threads}")
        outs.append([pathlib.Path(f"{out}.{k}").read_bytes() for k in ("weight", "scales", "biases")])
    assert outs[0] == outs[1]


# --- Lossless transcoding: GGML Q4_0/Q4_1/Q8_0 <-> MLX affine -------------


@pytest.fixture(scope="session")
def smollm2_blocks(smollm2):
    """{ggml type name: (concatenated raw blocks, [tensor names])} of the model."""
    reader = gguf.GGUFReader(str(smollm2))
    out = {}
    for t in reader.tensors:
        if t.tensor_type.name in ("Q4_0", "Q4_1", "Q8_0"):
            data, names = out.setdefault(t.tensor_type.name, ([], []))
            data.append(np.ascontiguousarray(t.data).tobytes())
            names.append(t.name)
    return {k: (b"".join(d), names) for k, (d, names) in out.items()}


@pytest.fixture(scope="session")
def smollm2_mx_load(smollm2):
    return mx.load(str(smollm2))


def mlx_stream(loaded, names, suffix):
    """The named tensors' `suffix` arrays, flattened and concatenated."""
    return b"".join(raw_bytes(loaded[f"{n.removesuffix('.weight')}.{suffix}"]) for n in names)


def test_smollm2_has_q4_1_and_q8_0_blocks(smollm2_blocks):
    assert sorted(smollm2_blocks) == ["Q4_1", "Q8_0"]
    assert len(smollm2_blocks["Q4_1"][1]) == 210


@pytest.mark.parametrize("ggml_type", ["Q4_1", "Q8_0"])
def test_ggml_to_mlx_equals_mx_load_and_round_trips(mlxq, smollm2_blocks, smollm2_mx_load, tmp_path, ggml_type):
    # Blocks convert independently, so all tensors of a type go through as
    # one stream of 32-element rows.
    blocks, names = smollm2_blocks[ggml_type]
    src = tmp_path / "blocks"
    src.write_bytes(blocks)
    out = tmp_path / "m"
    kind = ggml_type.lower()
    run(mlxq, "ggml-to-mlx", f"type={kind}", "cols=32", "scales_dtype=float16", f"in={src}", f"out={out}")
    for suffix in ("weight", "scales", "biases"):
        assert_same_bytes(f"{ggml_type} {suffix}", pathlib.Path(f"{out}.{suffix}").read_bytes(),
                          mlx_stream(smollm2_mx_load, names, suffix), 4 if suffix == "weight" else 2)
    back = tmp_path / "back"
    run(mlxq, "mlx-to-ggml", f"type={kind}", "group=32", "cols=32", "scales_dtype=float16",
        f"weight={out}.weight", f"scales={out}.scales", f"biases={out}.biases", f"out={back}")
    assert back.read_bytes() == blocks


def test_q4_0_round_trips_through_mlx(mlxq, smollm2_f32, tmp_path):
    # The model has no Q4_0 tensor: make some with gguf-py from real weights.
    from gguf.quants import quantize as gguf_quantize

    w = smollm2_f32[1536]
    blocks = gguf_quantize(w, gguf.GGMLQuantizationType.Q4_0).tobytes()
    src = tmp_path / "q4_0"
    src.write_bytes(blocks)
    out = tmp_path / "m"
    run(mlxq, "ggml-to-mlx", "type=q4_0", "cols=1536", "scales_dtype=float16", f"in={src}", f"out={out}")
    back = tmp_path / "back"
    run(mlxq, "mlx-to-ggml", "type=q4_0", "group=32", "cols=1536", "scales_dtype=float16",
        f"weight={out}.weight", f"scales={out}.scales", f"biases={out}.biases", f"out={back}")
    assert back.read_bytes() == blocks
    # And mlx's dequantization of our tensors (f32) is gguf-py's, value for value.
    wq = mx.array(np.fromfile(f"{out}.weight", np.uint32).reshape(w.shape[0], -1))
    s = mx.array(np.fromfile(f"{out}.scales", np.float16).reshape(w.shape[0], -1)).astype(mx.float32)
    b = mx.array(np.fromfile(f"{out}.biases", np.float16).reshape(w.shape[0], -1)).astype(mx.float32)
    ours = np.array(mx.dequantize(wq, s, b, group_size=32, bits=4))
    theirs = gguf_dequantize(np.frombuffer(blocks, np.uint8).reshape(w.shape[0], -1), gguf.GGMLQuantizationType.Q4_0)
    assert np.array_equal(ours, theirs)


@pytest.mark.parametrize("group", [32, 64, 128])
def test_mlx_4bit_to_q4_1_is_lossless_for_f16_scales(mlxq, inputs, tmp_path, group):
    data = inputs("float16")
    cols, a, path = 1536, data.arrays[1536], data.files[1536]
    wq, s, b = mx.quantize(a, group_size=group, bits=4)
    for name, arr in (("weight", wq), ("scales", s), ("biases", b)):
        (tmp_path / name).write_bytes(raw_bytes(arr))
    blocks = tmp_path / "q4_1"
    run(mlxq, "mlx-to-ggml", "type=q4_1", f"group={group}", f"cols={cols}", "scales_dtype=float16",
        f"weight={tmp_path / 'weight'}", f"scales={tmp_path / 'scales'}", f"biases={tmp_path / 'biases'}",
        f"out={blocks}")
    # gguf-py's Q4_1 dequantization equals mlx's f32 dequantization.
    theirs = gguf_dequantize(np.fromfile(blocks, np.uint8).reshape(a.shape[0], -1), gguf.GGMLQuantizationType.Q4_1)
    ours = widened(mx.dequantize(wq, s.astype(mx.float32), b.astype(mx.float32), group_size=group, bits=4))
    assert np.array_equal(ours, theirs)


@pytest.mark.parametrize("dtype", ["bfloat16", "float32"])
def test_mlx_4bit_to_q4_1_reports_inexact_scales(mlxq, inputs, tmp_path, dtype):
    # The transcoder must count the blocks whose scale or bias f16 cannot
    # hold (exit 3), never pass them silently. bf16 scales of real weights
    # sit in f16's normal range with 8 significant bits, so they all fit
    # (0 here); f32 ones mostly do not.
    data = inputs(dtype)
    wq, s, b = mx.quantize(data.arrays[1536][:256], group_size=64, bits=4)
    for name, arr in (("weight", wq), ("scales", s), ("biases", b)):
        (tmp_path / name).write_bytes(raw_bytes(arr))
    proc = subprocess.run(
        [str(mlxq), "mlx-to-ggml", "type=q4_1", "group=64", "cols=1536", f"scales_dtype={dtype}",
         f"weight={tmp_path / 'weight'}", f"scales={tmp_path / 'scales'}", f"biases={tmp_path / 'biases'}",
         f"out={tmp_path / 'q'}"],
        capture_output=True, text=True,
    )
    s32, b32 = widened(s).reshape(-1), widened(b).reshape(-1)
    exact = (s32.astype(np.float16).astype(np.float32) == s32) & (b32.astype(np.float16).astype(np.float32) == b32)
    inexact_blocks = int((~exact).sum()) * 2  # two Q4_1 blocks per group of 64
    assert proc.stdout.strip() == f"inexact_groups={inexact_blocks}"
    assert proc.returncode == (3 if inexact_blocks else 0), proc.stderr
    if dtype == "float32":
        assert inexact_blocks > 0
    else:
        assert inexact_blocks == 0
