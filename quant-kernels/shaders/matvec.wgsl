// Quantized matrix-vector products: y[t][r] = W[r] . x[t] for the rows of
// one chunk of a weight matrix, for every token t.
//
// A workgroup computes 8 rows of one token; 32 lanes share a row, each
// summing "units" of 32 consecutive columns (a legacy block, a quarter of
// a K-quant sub-block pair, 32 MLX values), then the lanes reduce in
// workgroup memory. Ordinary float arithmetic: the result is within a
// stated tolerance of the CPU (matvec.rs), not bit-identical.
//
// matvec_f32: the weights exactly as dequantized, times f32 activations.
// matvec_q8: the activations quantized on the CPU as ggml's CPU backend
// does (Q8_0 / Q8_1 / Q8_K blocks), integer block sums as ggml's vec_dot.

struct MvParams {
    rows: u32,
    cols: u32,
    // Bytes per weight row (GGML), or 0 for MLX.
    row_bytes: u32,
    // 0 Q8_0, 1 Q4_0, 2 Q4_1, 3 Q4_K, 4 Q6_K, 5 MLX affine.
    kind: u32,
    // Activations: first word and words per token.
    x_offset: u32,
    x_stride: u32,
    // Output: first float and floats per token.
    y_offset: u32,
    y_stride: u32,
    // MLX: word offsets of scales and biases in the weight buffer, bits,
    // group size, scale dtype (0 f32, 1 f16, 2 bf16).
    sb_offset: u32,
    bb_offset: u32,
    bits: u32,
    group: u32,
    dtype: u32,
    n_tok: u32,
    // 1: add the products to the outputs (a residual add) instead of
    // storing them.
    accumulate: u32,
    pad1: u32,
}

@group(0) @binding(0) var<storage, read> wts: array<u32>;
@group(0) @binding(1) var<storage, read> xs: array<u32>;
@group(0) @binding(2) var<storage, read_write> ys: array<f32>;
@group(0) @binding(3) var<uniform> mp: MvParams;

const K_Q8_0: u32 = 0u;
const K_Q4_0: u32 = 1u;
const K_Q4_1: u32 = 2u;
const K_Q4_K: u32 = 3u;
const K_Q6_K: u32 = 4u;

// Little-endian u32 at byte `i` of the weights (any alignment).
fn w32(i: u32) -> u32 {
    let s = (i & 3u) * 8u;
    let w = i >> 2u;
    if (s == 0u) {
        return wts[w];
    }
    return (wts[w] >> s) | (wts[w + 1u] << (32u - s));
}

fn wbyte(i: u32) -> u32 {
    return (wts[i >> 2u] >> ((i & 3u) * 8u)) & 0xffu;
}

fn wf16(i: u32) -> f32 {
    return bitcast<f32>(sf_from_f16(wbyte(i) | (wbyte(i + 1u) << 8u)));
}

fn x32(i: u32) -> u32 {
    let s = (i & 3u) * 8u;
    let w = i >> 2u;
    if (s == 0u) {
        return xs[w];
    }
    return (xs[w] >> s) | (xs[w + 1u] << (32u - s));
}

fn xf16(i: u32) -> f32 {
    return bitcast<f32>(sf_from_f16(x32(i) & 0xffffu));
}

fn xf(i: u32) -> f32 {
    return bitcast<f32>(xs[i]);
}

// Signed byte k of a word.
fn sb(w: u32, k: u32) -> i32 {
    return bitcast<i32>(w << (24u - 8u * k)) >> 24u;
}

fn nib(w: u32, k: u32) -> u32 {
    return (w >> (8u * k)) & 0xfu;
}

// Q4_K scale and min of sub-block j of the block at byte `blk`.
fn q4k_scale_min(blk: u32, j: u32) -> vec2<u32> {
    let sc = blk + 4u;
    if (j < 4u) {
        return vec2<u32>(wbyte(sc + j) & 63u, wbyte(sc + j + 4u) & 63u);
    }
    return vec2<u32>(
        (wbyte(sc + j + 4u) & 0xfu) | ((wbyte(sc + j - 4u) >> 6u) << 4u),
        (wbyte(sc + j + 4u) >> 4u) | ((wbyte(sc + j) >> 6u) << 4u),
    );
}

// The 32 weight values of unit u of row `row`, four at a time, as f32
// exactly as dequantized; `sink` receives them with their column.
// Implemented per kind in the two drivers below to keep registers low.

fn mlx_scale(idx: u32, base: u32) -> f32 {
    if (mp.dtype == 0u) {
        return bitcast<f32>(wts[base + idx]);
    }
    let h = (wts[base + idx / 2u] >> ((idx & 1u) * 16u)) & 0xffffu;
    if (mp.dtype == 1u) {
        return bitcast<f32>(sf_from_f16(h));
    }
    return bitcast<f32>(h << 16u);
}

fn unit_f32(row: u32, u: u32, xb: u32) -> f32 {
    var acc = 0.0;
    let c0 = 32u * u;
    switch (mp.kind) {
        case 0u: {
            let blk = row * mp.row_bytes + 34u * u;
            let d = wf16(blk);
            for (var k = 0u; k < 8u; k = k + 1u) {
                let q = w32(blk + 2u + 4u * k);
                for (var i = 0u; i < 4u; i = i + 1u) {
                    acc = acc + (f32(sb(q, i)) * d) * xf(xb + c0 + 4u * k + i);
                }
            }
        }
        case 1u: {
            let blk = row * mp.row_bytes + 18u * u;
            let d = wf16(blk);
            for (var k = 0u; k < 4u; k = k + 1u) {
                let q = w32(blk + 2u + 4u * k);
                for (var i = 0u; i < 4u; i = i + 1u) {
                    acc = acc + (f32(i32(nib(q, i)) - 8) * d) * xf(xb + c0 + 4u * k + i);
                    acc = acc + (f32(i32(nib(q >> 4u, i)) - 8) * d) * xf(xb + c0 + 16u + 4u * k + i);
                }
            }
        }
        case 2u: {
            let blk = row * mp.row_bytes + 20u * u;
            let d = wf16(blk);
            let m = wf16(blk + 2u);
            for (var k = 0u; k < 4u; k = k + 1u) {
                let q = w32(blk + 4u + 4u * k);
                for (var i = 0u; i < 4u; i = i + 1u) {
                    acc = acc + (f32(nib(q, i)) * d + m) * xf(xb + c0 + 4u * k + i);
                    acc = acc + (f32(nib(q >> 4u, i)) * d + m) * xf(xb + c0 + 16u + 4u * k + i);
                }
            }
        }
        case 3u: {
            let blk = row * mp.row_bytes + 144u * (u / 8u);
            let j = u % 8u;
            let d = wf16(blk);
            let dmin = wf16(blk + 2u);
            let sm = q4k_scale_min(blk, j);
            let d1 = d * f32(sm.x);
            let m1 = dmin * f32(sm.y);
            let qs = blk + 16u + 32u * (j / 2u);
            let shift = 4u * (j % 2u);
            for (var k = 0u; k < 8u; k = k + 1u) {
                let q = w32(qs + 4u * k) >> shift;
                for (var i = 0u; i < 4u; i = i + 1u) {
                    acc = acc + (d1 * f32(nib(q, i)) - m1) * xf(xb + c0 + 4u * k + i);
                }
            }
        }
        case 4u: {
            let blk = row * mp.row_bytes + 210u * (u / 8u);
            let r0 = 32u * (u % 8u);
            let half = r0 / 128u;
            let quarter = (r0 % 128u) / 32u;
            let d = wf16(blk + 208u);
            let ql0 = blk + 64u * half + 32u * (quarter % 2u);
            let qh0 = blk + 128u + 32u * half;
            let lo_shift = 4u * (quarter / 2u);
            for (var k = 0u; k < 8u; k = k + 1u) {
                let sc = f32(sb(w32(blk + 192u + 8u * half + (4u * k) / 16u + 2u * quarter), 0u));
                let ds = d * sc;
                let ql = w32(ql0 + 4u * k) >> lo_shift;
                let qh = w32(qh0 + 4u * k) >> (2u * quarter);
                for (var i = 0u; i < 4u; i = i + 1u) {
                    let q = i32(((ql >> (8u * i)) & 0xfu) | (((qh >> (8u * i)) & 3u) << 4u)) - 32;
                    acc = acc + (ds * f32(q)) * xf(xb + c0 + 4u * k + i);
                }
            }
        }
        default: {
            // MLX affine: element index within the chunk.
            let e0 = row * mp.cols + c0;
            let g = e0 / mp.group;
            let s = mlx_scale(g, mp.sb_offset);
            let b = mlx_scale(g, mp.bb_offset);
            let mask = (1u << mp.bits) - 1u;
            for (var i = 0u; i < 32u; i = i + 1u) {
                let pos = (e0 + i) * mp.bits;
                let w = pos / 32u;
                let sh = pos % 32u;
                var q = wts[w] >> sh;
                if (sh + mp.bits > 32u) {
                    q = q | (wts[w + 1u] << (32u - sh));
                }
                acc = acc + (f32(q & mask) * s + b) * xf(xb + c0 + i);
            }
        }
    }
    return acc;
}

// Integer dot of 4 signed weight bytes (as i32 values) with 4 signed
// activation bytes packed in a word.
fn idot4(w: vec4<i32>, a: u32) -> i32 {
    return w.x * sb(a, 0u) + w.y * sb(a, 1u) + w.z * sb(a, 2u) + w.w * sb(a, 3u);
}

fn unit_q8(row: u32, u: u32, xb: u32) -> f32 {
    switch (mp.kind) {
        case 0u: {
            let blk = row * mp.row_bytes + 34u * u;
            let ab = xb + 34u * u;
            var isum = 0;
            for (var k = 0u; k < 8u; k = k + 1u) {
                let q = w32(blk + 2u + 4u * k);
                isum = isum + idot4(vec4<i32>(sb(q, 0u), sb(q, 1u), sb(q, 2u), sb(q, 3u)), x32(ab + 2u + 4u * k));
            }
            return (wf16(blk) * xf16(ab)) * f32(isum);
        }
        case 1u: {
            let blk = row * mp.row_bytes + 18u * u;
            let ab = xb + 34u * u;
            var isum = 0;
            for (var k = 0u; k < 4u; k = k + 1u) {
                let q = w32(blk + 2u + 4u * k);
                let lo = vec4<i32>(i32(nib(q, 0u)), i32(nib(q, 1u)), i32(nib(q, 2u)), i32(nib(q, 3u))) - vec4<i32>(8);
                let hq = q >> 4u;
                let hi = vec4<i32>(i32(nib(hq, 0u)), i32(nib(hq, 1u)), i32(nib(hq, 2u)), i32(nib(hq, 3u))) - vec4<i32>(8);
                isum = isum + idot4(lo, x32(ab + 2u + 4u * k)) + idot4(hi, x32(ab + 18u + 4u * k));
            }
            return (wf16(blk) * xf16(ab)) * f32(isum);
        }
        case 2u: {
            let blk = row * mp.row_bytes + 20u * u;
            let ab = xb + 36u * u;
            var isum = 0;
            for (var k = 0u; k < 4u; k = k + 1u) {
                let q = w32(blk + 4u + 4u * k);
                let lo = vec4<i32>(i32(nib(q, 0u)), i32(nib(q, 1u)), i32(nib(q, 2u)), i32(nib(q, 3u)));
                let hq = q >> 4u;
                let hi = vec4<i32>(i32(nib(hq, 0u)), i32(nib(hq, 1u)), i32(nib(hq, 2u)), i32(nib(hq, 3u)));
                isum = isum + idot4(lo, x32(ab + 4u + 4u * k)) + idot4(hi, x32(ab + 20u + 4u * k));
            }
            return (wf16(blk) * xf16(ab)) * f32(isum) + wf16(blk + 2u) * xf16(ab + 2u);
        }
        case 3u: {
            let b = u / 8u;
            let j = u % 8u;
            let blk = row * mp.row_bytes + 144u * b;
            let ab = xb + 292u * b;
            let da = bitcast<f32>(x32(ab));
            let sm = q4k_scale_min(blk, j);
            let qs = blk + 16u + 32u * (j / 2u);
            let shift = 4u * (j % 2u);
            var isum = 0;
            for (var k = 0u; k < 8u; k = k + 1u) {
                let q = w32(qs + 4u * k) >> shift;
                let v = vec4<i32>(i32(nib(q, 0u)), i32(nib(q, 1u)), i32(nib(q, 2u)), i32(nib(q, 3u)));
                isum = isum + idot4(v, x32(ab + 4u + 32u * j + 4u * k));
            }
            let bs = x32(ab + 260u + 4u * j);
            let bsum = (bitcast<i32>(bs << 16u) >> 16u) + (bitcast<i32>(bs) >> 16u);
            return (da * wf16(blk)) * f32(i32(sm.x) * isum) - (da * wf16(blk + 2u)) * f32(i32(sm.y) * bsum);
        }
        default: {
            let b = u / 8u;
            let r0 = 32u * (u % 8u);
            let half = r0 / 128u;
            let quarter = (r0 % 128u) / 32u;
            let blk = row * mp.row_bytes + 210u * b;
            let ab = xb + 292u * b;
            let da = bitcast<f32>(x32(ab));
            let ql0 = blk + 64u * half + 32u * (quarter % 2u);
            let qh0 = blk + 128u + 32u * half;
            let lo_shift = 4u * (quarter / 2u);
            var total = 0;
            for (var g = 0u; g < 2u; g = g + 1u) {
                let sc = sb(w32(blk + 192u + 8u * half + g + 2u * quarter), 0u);
                var isum = 0;
                for (var k = 0u; k < 4u; k = k + 1u) {
                    let o = 16u * g + 4u * k;
                    let ql = w32(ql0 + o) >> lo_shift;
                    let qh = w32(qh0 + o) >> (2u * quarter);
                    var v: vec4<i32>;
                    for (var i = 0u; i < 4u; i = i + 1u) {
                        v[i] = i32(((ql >> (8u * i)) & 0xfu) | (((qh >> (8u * i)) & 3u) << 4u)) - 32;
                    }
                    isum = isum + idot4(v, x32(ab + 4u + r0 + o));
                }
                total = total + sc * isum;
            }
            return (da * wf16(blk + 208u)) * f32(total);
        }
    }
}

var<workgroup> part: array<f32, 256>;

fn reduce_and_store(lid: u32, row: u32, tok: u32, acc: f32) {
    part[lid] = acc;
    workgroupBarrier();
    let lane = lid % 32u;
    for (var s = 16u; s > 0u; s = s >> 1u) {
        if (lane < s) {
            part[lid] = part[lid] + part[lid + s];
        }
        workgroupBarrier();
    }
    if (lane == 0u && row < mp.rows) {
        let at = mp.y_offset + tok * mp.y_stride + row;
        if (mp.accumulate == 1u) {
            ys[at] = ys[at] + part[lid];
        } else {
            ys[at] = part[lid];
        }
    }
}

@compute @workgroup_size(256)
fn matvec_f32(
    @builtin(workgroup_id) wid: vec3<u32>,
    @builtin(local_invocation_index) lid: u32,
) {
    let row = wid.x * 8u + lid / 32u;
    let tok = wid.y;
    var acc = 0.0;
    if (row < mp.rows) {
        let xb = mp.x_offset + tok * mp.x_stride;
        for (var u = lid % 32u; u < mp.cols / 32u; u = u + 32u) {
            acc = acc + unit_f32(row, u, xb);
        }
    }
    reduce_and_store(lid, row, tok, acc);
}

@compute @workgroup_size(256)
fn matvec_q8(
    @builtin(workgroup_id) wid: vec3<u32>,
    @builtin(local_invocation_index) lid: u32,
) {
    let row = wid.x * 8u + lid / 32u;
    let tok = wid.y;
    var acc = 0.0;
    if (row < mp.rows) {
        let xb = (mp.x_offset + tok * mp.x_stride) * 4u;
        for (var u = lid % 32u; u < mp.cols / 32u; u = u + 32u) {
            acc = acc + unit_q8(row, u, xb);
        }
    }
    reduce_and_store(lid, row, tok, acc);
}
