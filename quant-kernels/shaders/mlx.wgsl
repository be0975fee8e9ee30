// MLX affine quantization (mlx's CPU backend, `quantize` in
// backend/cpu/quantized.cpp, as src/mlx/affine.rs transcribes it) and
// dequantization, for 2, 3, 4, 5, 6 and 8 bits and groups of 32, 64, 128.
//
// params: n_units = groups in the chunk, a = bits, b = group size,
// c = dtype of the input and of the scales/biases (0 f32, 1 f16, 2 bf16).
//
// Quantize output (words): the packed values of every group, then the
// scales, then the biases (2-byte dtypes two to a word, each part padded
// to a whole word). One invocation quantizes a pair of groups, so a scale
// word is never shared between invocations.

const MLX_F32: u32 = 0u;
const MLX_F16: u32 = 1u;
const MLX_EPS: u32 = 0x33d6bf95u; // (float)1e-7
const NEG_INF: u32 = 0xff800000u;

// Element e of the input, widened to f32 bits.
fn mlx_in(e: u32) -> u32 {
    if (params.c == MLX_F32) {
        return src[e];
    }
    let h = (src[e >> 1u] >> ((e & 1u) * 16u)) & 0xffffu;
    if (params.c == MLX_F16) {
        return sf_from_f16(h);
    }
    return h << 16u;
}

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

fn affine_params(first: u32, gs: u32, nb: u32) -> GroupParams {
    var w_min = SF_INF;
    var w_max = NEG_INF;
    for (var i = 0u; i < gs; i = i + 1u) {
        let x = mlx_in(first + i);
        note_if_not_finite(first + i, x);
        // std::max(a, b) is `a < b ? b : a`; std::min(a, b) `b < a ? b : a`.
        if (sf_lt(w_max, x)) {
            w_max = x;
        }
        if (sf_lt(x, w_min)) {
            w_min = x;
        }
    }
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

@compute @workgroup_size(64)
fn mlx_quantize(
    @builtin(workgroup_id) wid: vec3<u32>,
    @builtin(num_workgroups) nwg: vec3<u32>,
    @builtin(local_invocation_index) lid: u32,
) {
    let first = invocation_index(wid, nwg, lid) * 2u;
    if (first >= params.n_units) {
        return;
    }
    let bits = params.a;
    let gs = params.b;
    let wpg = gs * bits / 32u;
    let nb = sf_from_i32(i32((1u << bits) - 1u));
    let count = min(2u, params.n_units - first);
    var stored: array<vec2<u32>, 2>;
    for (var g = 0u; g < count; g = g + 1u) {
        let group = first + g;
        let e0 = group * gs;
        let p = affine_params(e0, gs, nb);
        var acc = 0u;
        var nbits = 0u;
        var word = group * wpg;
        for (var i = 0u; i < gs; i = i + 1u) {
            let y = sf_div_fast(sf_sub(mlx_in(e0 + i), p.bias), p.scale);
            var r = sf_rint(y);
            if (sf_lt(r, 0u)) {
                r = 0u;
            }
            if (sf_lt(nb, r)) {
                r = nb;
            }
            let q = u32(sf_cvtt(r));
            acc = acc | (q << nbits);
            nbits = nbits + bits;
            if (nbits >= 32u) {
                dst[word] = acc;
                word = word + 1u;
                nbits = nbits - 32u;
                acc = 0u;
                if (nbits > 0u) {
                    acc = q >> (bits - nbits);
                }
            }
        }
        stored[g] = vec2<u32>(mlx_store(p.scale), mlx_store(p.bias));
    }
    let packed_words = params.n_units * wpg;
    if (params.c == MLX_F32) {
        let scale_words = params.n_units;
        for (var g = 0u; g < count; g = g + 1u) {
            dst[packed_words + first + g] = stored[g].x;
            dst[packed_words + scale_words + first + g] = stored[g].y;
        }
    } else {
        let scale_words = (params.n_units + 1u) / 2u;
        let k = first / 2u;
        var s = stored[0].x;
        var b = stored[0].y;
        if (count == 2u) {
            s = s | (stored[1].x << 16u);
            b = b | (stored[1].y << 16u);
        }
        dst[packed_words + k] = s;
        dst[packed_words + scale_words + k] = b;
    }
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
