// MLX affine quantization (mlx's CPU backend, `quantize` in
// backend/cpu/quantized.cpp, as src/mlx/affine.rs transcribes it) and
// dequantization, for 2, 3, 4, 5, 6 and 8 bits and groups of 32, 64, 128.
//
// params: n_units = groups in the chunk, a = bits, b = group size,
// c = dtype of the input and of the scales/biases (0 f32, 1 f16, 2 bf16).
//
// Quantize output (words): the packed values of every group, then the
// scales, then the biases (2-byte dtypes two to a word, each part padded
// to a whole word). One invocation per row of 32 values, 64 rows per
// workgroup (below).

const MLX_F32: u32 = 0u;
const MLX_F16: u32 = 1u;
const MLX_EPS: u32 = 0x33d6bf95u; // (float)1e-7
const NEG_INF: u32 = 0xff800000u;

// f32 bits rounded to the storage dtype, as stored (f32 bits, or the f16 /
// bf16 bits in the low half).
fn mlx_store(x: u32) -> u32 {
    if (params.c == MLX_F32) {
        return x;
    }
    if (params.c == MLX_F16) {
        return sf_to_f16(x);
    }
    return sf_round_bf16(x) >> 16u;
}

struct GroupParams {
    scale: u32,
    bias: u32,
}

// mlx's scale and bias from the group's min and max.
fn affine_params(w_min: u32, w_max: u32, nb: u32) -> GroupParams {
    let mask = sf_gt(sf_abs(w_min), sf_abs(w_max));
    var scale = sf_div_fast(sf_sub(w_max, w_min), nb);
    if (sf_lt(scale, MLX_EPS)) {
        scale = MLX_EPS;
    }
    if (!mask) {
        scale = sf_neg(scale);
    }
    let edge = select(w_max, w_min, mask);
    let q0 = sf_rint(sf_div_fast(edge, scale));
    if (!sf_eq(q0, 0u)) {
        return GroupParams(sf_div_fast(edge, q0), edge);
    }
    return GroupParams(scale, 0u);
}

// The code of x, `rint(clamp((x - bias)/scale, 0, nb))`, exactly.
fn mlx_code_exact(x: u32, p: GroupParams, nb: u32) -> u32 {
    var r = sf_rint(sf_div_fast(sf_sub(x, p.bias), p.scale));
    if (sf_lt(r, 0u)) {
        r = 0u;
    }
    if (sf_lt(nb, r)) {
        r = nb;
    }
    return u32(sf_cvtt(r));
}

// Rows of 32 values: the quantizer works in tiles of 64 rows (2048
// values, whole groups of 32, 64 or 128), one workgroup each, as the GGML
// legacy quantizers do (ggml_quantize.wgsl): coalesced loads into
// workgroup memory, one invocation per row, the row's packed words staged
// and written with coalesced stores.
const MLX_ROWS: u32 = 64u;
const MLX_ROW: u32 = 33u;

var<workgroup> mt_in: array<u32, 2112>;
// Packed words, row r's at r * (bits | 1): an odd stride keeps the rows'
// stores in different banks.
var<workgroup> mt_out: array<u32, 576>;
// Each row's least and greatest order key (common.wgsl).
var<workgroup> mt_min: array<i32, 64>;
var<workgroup> mt_max: array<i32, 64>;
var<workgroup> mt_params: array<vec2<u32>, 64>;
var<workgroup> mt_stored: array<vec2<u32>, 64>;

// Codes of the tile's row r in place of its values. Each code comes from
// the float unit where that is provably the exact one: the subtraction
// (the bias is 0 or a normal value above 5e-8, so a flushed subnormal x
// or a flushed subnormal difference gives the same code as the exact
// one), then an estimate of the quotient through the correctly rounded
// reciprocal `inv`: below 512 it is within 2^-13 of the correctly rounded
// quotient (two roundings of 2^-24 relative each, fused or not), so it
// decides the rounding when it lies more than 2^-10 from a half-integer.
// The other values, and every value of a group whose scale is outside
// [2^-40, 2^100], take the exact division after.
fn mlx_row_codes(r: u32, p: GroupParams, nb: u32) {
    let base = r * MLX_ROW;
    let mag = p.scale & 0x7fffffffu;
    var exact = 0xffffffffu;
    if (mag >= 0x2b800000u && mag <= 0x71800000u) {
        exact = 0u;
        let inv = bitcast<f32>(sf_div_fast(0x3f800000u, p.scale));
        let bias = bitcast<f32>(p.bias);
        let top = bitcast<f32>(nb);
        for (var i = 0u; i < 32u; i = i + 1u) {
            let d = fenced(bitcast<f32>(mt_in[base + i]) - bias);
            let y = bitcast<f32>(d) * inv;
            let t = floor(y + 0.5);
            if (abs(y - t) < 0.4990234375 && abs(y) < 512.0) {
                mt_in[base + i] = u32(clamp(t, 0.0, top));
            } else {
                exact = exact | (1u << i);
            }
        }
    }
    // One value per pass: the mask loses a bit each time.
    while (exact != 0u) {
        let i = firstTrailingBit(exact);
        exact = exact & (exact - 1u);
        mt_in[base + i] = mlx_code_exact(mt_in[base + i], p, nb);
    }
}

// The quantizer's body. `bits` is a constant at the 4- and 8-bit entry
// points (below), so the driver turns the packing loop and the divisions
// by `bits` into shifts there; the generic entry point reads it from the
// parameters.
fn mlx_quantize_tile(wid: vec3<u32>, nwg: vec3<u32>, lid: u32, bits: u32) {
    let gs = params.b;
    // Rows per group (1, 2 or 4) as a shift.
    let rpg_shift = firstTrailingBit(gs) - 5u;
    let rpg = 1u << rpg_shift;
    let total_rows = params.n_units * rpg;
    let first_row = (wid.x + wid.y * nwg.x) * MLX_ROWS;
    if (first_row >= total_rows) {
        return;
    }
    let rows = min(MLX_ROWS, total_rows - first_row);
    let nb = sf_from_i32(i32((1u << bits) - 1u));

    // The tile's values, widened to f32 bits (the dtype decided outside
    // the loops, so that each loop's loads can be in flight together); the
    // first non-finite one is noted once after the loop (an atomic inside
    // it would keep the loads from overlapping).
    let words = rows * 32u;
    let e0 = first_row * 32u;
    var bad = 0xffffffffu;
    if (params.c == MLX_F32) {
        for (var i = 0u; i < 32u; i = i + 1u) {
            let w = lid + i * MLX_ROWS;
            if (w < words) {
                let x = src[e0 + w];
                bad = first_non_finite(bad, e0 + w, x);
                mt_in[w + w / 32u] = x;
            }
        }
    } else {
        // Two values per word: invocation i widens word i of the tile.
        let f16 = params.c == MLX_F16;
        for (var i = 0u; i < 16u; i = i + 1u) {
            let h = lid + i * MLX_ROWS;
            if (2u * h < words) {
                let pair = src[(e0 >> 1u) + h];
                for (var k = 0u; k < 2u; k = k + 1u) {
                    let bits = (pair >> (16u * k)) & 0xffffu;
                    let x = select(bits << 16u, sf_from_f16(bits), f16);
                    let w = 2u * h + k;
                    bad = first_non_finite(bad, e0 + w, x);
                    mt_in[w + w / 32u] = x;
                }
            }
        }
    }
    note_first_non_finite(bad);
    workgroupBarrier();

    // Each row's min and max, then each group's, as integer extremes of
    // order keys (non-finite input is refused); a zero comes back as +0,
    // where mlx's scan keeps the first zero's sign, which never reaches
    // the output (a zero edge gives q0 = 0: bias 0, and a scale decided by
    // magnitudes alone, as src/mlx/affine.rs notes).
    let r = lid;
    var lo = order_key(SF_INF);
    var hi = order_key(NEG_INF);
    if (r < rows) {
        for (var j = 0u; j < 32u; j = j + 1u) {
            let k = order_key(mt_in[r * MLX_ROW + j]);
            hi = max(hi, k);
            lo = min(lo, k);
        }
    }
    mt_min[r] = lo;
    mt_max[r] = hi;
    workgroupBarrier();

    // Invocation g computes group g's scale and bias, once per group.
    let groups = rows >> rpg_shift;
    if (lid < groups) {
        let r0 = lid << rpg_shift;
        var lo_g = mt_min[r0];
        var hi_g = mt_max[r0];
        for (var k = 1u; k < rpg; k = k + 1u) {
            lo_g = min(lo_g, mt_min[r0 + k]);
            hi_g = max(hi_g, mt_max[r0 + k]);
        }
        let p = affine_params(key_bits(lo_g), key_bits(hi_g), nb);
        mt_params[lid] = vec2<u32>(p.scale, p.bias);
        mt_stored[lid] = vec2<u32>(mlx_store(p.scale), mlx_store(p.bias));
    }
    workgroupBarrier();

    if (r < rows) {
        let pp = mt_params[r >> rpg_shift];
        let p = GroupParams(pp.x, pp.y);
        mlx_row_codes(r, p, nb);
        // 32 codes fill `bits` words exactly.
        var acc = 0u;
        var nbits = 0u;
        var word = r * (bits | 1u);
        for (var i = 0u; i < 32u; i = i + 1u) {
            let q = mt_in[r * MLX_ROW + i];
            acc = acc | (q << nbits);
            nbits = nbits + bits;
            if (nbits >= 32u) {
                mt_out[word] = acc;
                word = word + 1u;
                nbits = nbits - 32u;
                acc = 0u;
                if (nbits > 0u) {
                    acc = q >> (bits - nbits);
                }
            }
        }
    }
    workgroupBarrier();

    // Packed words (every group's, in order), then the scales, then the
    // biases (2-byte dtypes two to a word: a tile holds an even number of
    // groups except at the very end).
    let out_words = rows * bits;
    let base = first_row * bits;
    for (var i = 0u; i < 8u; i = i + 1u) {
        let w = lid + i * MLX_ROWS;
        if (w < out_words) {
            let row = w / bits;
            dst[base + w] = mt_out[row * (bits | 1u) + w - row * bits];
        }
    }
    let g_first = first_row >> rpg_shift;
    let packed_words = params.n_units * gs * bits / 32u;
    if (params.c == MLX_F32) {
        if (lid < groups) {
            dst[packed_words + g_first + lid] = mt_stored[lid].x;
            dst[packed_words + params.n_units + g_first + lid] = mt_stored[lid].y;
        }
    } else {
        let scale_words = (params.n_units + 1u) / 2u;
        if (2u * lid < groups) {
            var s = mt_stored[2u * lid].x;
            var b = mt_stored[2u * lid].y;
            if (2u * lid + 1u < groups) {
                s = s | (mt_stored[2u * lid + 1u].x << 16u);
                b = b | (mt_stored[2u * lid + 1u].y << 16u);
            }
            dst[packed_words + g_first / 2u + lid] = s;
            dst[packed_words + scale_words + g_first / 2u + lid] = b;
        }
    }
}

@compute @workgroup_size(64)
fn mlx_quantize(
    @builtin(workgroup_id) wid: vec3<u32>,
    @builtin(num_workgroups) nwg: vec3<u32>,
    @builtin(local_invocation_index) lid: u32,
) {
    mlx_quantize_tile(wid, nwg, lid, params.a);
}

@compute @workgroup_size(64)
fn mlx_quantize_4(
    @builtin(workgroup_id) wid: vec3<u32>,
    @builtin(num_workgroups) nwg: vec3<u32>,
    @builtin(local_invocation_index) lid: u32,
) {
    mlx_quantize_tile(wid, nwg, lid, 4u);
}

@compute @workgroup_size(64)
fn mlx_quantize_8(
    @builtin(workgroup_id) wid: vec3<u32>,
    @builtin(num_workgroups) nwg: vec3<u32>,
    @builtin(local_invocation_index) lid: u32,
) {
    mlx_quantize_tile(wid, nwg, lid, 8u);
}

// Dequantization: 4 outputs per invocation (n_units = elements / 4). The
// input is the packed words, then the scales, then the biases, laid out as
// the quantizer writes them. Output: `f32(f32(q * scale) + bias)`, the
// CPU reference's DequantPrecision::F32, with integer-exact arithmetic
// unless the product is exact and every value is far from the subnormal
// range (f16/bf16 scales), where the GPU's own multiply-add gives the same
// bits, fused or not.

fn mlx_stored(words_before: u32, index: u32) -> u32 {
    if (params.c == MLX_F32) {
        return src[words_before + index];
    }
    let h = (src[words_before + index / 2u] >> ((index & 1u) * 16u)) & 0xffffu;
    if (params.c == MLX_F16) {
        return sf_from_f16(h);
    }
    return h << 16u;
}

fn safe_for_float_unit(x: u32) -> bool {
    let e = (x >> 23u) & 0xffu;
    return x == 0u || x == SF_SIGN || (e >= 30u && e <= 240u);
}

@compute @workgroup_size(64)
fn mlx_dequantize(
    @builtin(workgroup_id) wid: vec3<u32>,
    @builtin(num_workgroups) nwg: vec3<u32>,
    @builtin(local_invocation_index) lid: u32,
) {
    let u = invocation_index(wid, nwg, lid);
    if (u >= params.n_units) {
        return;
    }
    let bits = params.a;
    let gs = params.b;
    let e0 = u * 4u;
    let n_groups = params.n_units * 4u / gs;
    let packed_words = n_groups * gs * bits / 32u;
    var scale_words = n_groups;
    if (params.c != MLX_F32) {
        scale_words = (n_groups + 1u) / 2u;
    }
    let group = e0 / gs;
    let s = mlx_stored(packed_words, group);
    let b = mlx_stored(packed_words + scale_words, group);
    let fast = params.c != MLX_F32 && safe_for_float_unit(s) && safe_for_float_unit(b);
    let mask = (1u << bits) - 1u;
    for (var i = 0u; i < 4u; i = i + 1u) {
        let pos = (e0 + i) * bits;
        let w = pos / 32u;
        let shift = pos % 32u;
        var q = src[w] >> shift;
        if (shift + bits > 32u) {
            q = q | (src[w + 1u] << (32u - shift));
        }
        q = q & mask;
        var v: u32;
        if (fast) {
            v = bitcast<u32>(f32(q) * bitcast<f32>(s) + bitcast<f32>(b));
        } else {
            v = sf_add(sf_mul_fast(sf_from_i32(i32(q)), s), b);
        }
        dst[e0 + i] = v;
    }
}
