// Token steps of a llama-family decoder, kept on the GPU: appended to
// softfloat.wgsl and matvec.wgsl (whose matvec_q8 / matvec_f32 run every
// weight product, with `accumulate` for the residual adds). The host
// records every kernel of a batch of steps into one command buffer; only
// the logits come back (decoder.rs).
//
// A batch is a run of consecutive tokens at positions state[0],
// state[0] + 1, ...: every kernel runs all of them at once, the token
// being the workgroup's y index, each with its own row in the work
// buffers (the strides below); attention is causal within the batch.
//
// The kernels follow the CPU engine's arithmetic (src/engine/model.rs,
// ops.rs) step for step, in f32:
// - vec_quant: RMS norm, or the gated activation, or a copy, of one vector,
//   then its encodings as ggml's CPU backend quantizes activations for
//   vec_dot (Q8_0, Q8_1, Q8_K). These encodings are bit-identical to
//   quant-kernels' quantize_activations given the same f32 input: the
//   divisions, products and roundings go through softfloat.wgsl.
// - rope_store: q/k/v biases, rope (cos/sin from a table computed on the
//   host in f64, as the CPU's RopeTable does), the f16 rounding of an f16
//   KV cache, and the append of k and v to the layer's cache.
// - attention: one workgroup per query head over the cache (grouped-query
//   heads share their key/value head), causal, optional sliding window.
// Norm sums, softmax and dot products use the GPU's float unit, so a step
// is within a tolerance of the CPU, not bit-identical (decoder.rs).

struct DecParams {
    // Vector length (vec_quant).
    n: u32,
    // vec_quant: 0 copy, 1 RMS norm, 2 SiLU-gated, 3 GELU(tanh)-gated.
    mode: u32,
    // Activation encodings to write: bit 0 Q8_0, bit 1 Q8_1, bit 2 Q8_K.
    act_mask: u32,
    eps: f32,
    n_head: u32,
    n_head_kv: u32,
    head_dim: u32,
    n_rot: u32,
    q_dim: u32,
    kv_dim: u32,
    // Positions the cache holds.
    cap: u32,
    // Float offset of the layer's rope table: per position, n_rot/2
    // (cos, sin) pairs.
    rope_off: u32,
    // 1: rope pairs (i, i + n_rot/2); 0: adjacent pairs (2i, 2i+1).
    neox: u32,
    // 1: round q, k, v and the softmax weights to f16 (llama.cpp's f16
    // KV cache).
    kv_f16: u32,
    // Keys older than this many positions are masked; 0 for none.
    window: u32,
    attn_scale: f32,
    // 1: `nw` holds the q, k and v biases (in qkv's layout).
    bias: u32,
    // tanh soft-capping of attention scores; 0 for none.
    softcap: f32,
    // vec_quant: floats per token of vin and vout.
    in_stride: u32,
    out_stride: u32,
}

@group(0) @binding(4) var<uniform> dp: DecParams;
@group(0) @binding(5) var<storage, read_write> vin: array<f32>;
@group(0) @binding(6) var<storage, read_write> vout: array<f32>;
@group(0) @binding(7) var<storage, read> nw: array<f32>;
@group(0) @binding(8) var<storage, read_write> act_q8_0: array<u32>;
@group(0) @binding(9) var<storage, read_write> act_q8_1: array<u32>;
@group(0) @binding(10) var<storage, read_write> act_q8_k: array<u32>;
@group(0) @binding(11) var<storage, read_write> kcache: array<f32>;
@group(0) @binding(12) var<storage, read_write> vcache: array<f32>;
@group(0) @binding(13) var<storage, read_write> scores: array<f32>;
// state[0]: the position of the batch's first token.
@group(0) @binding(14) var<storage, read> state: array<u32>;
@group(0) @binding(15) var<storage, read> rope: array<f32>;

const DWG: u32 = 256u;
const F32_127: u32 = 0x42fe0000u;
const F32_M127: u32 = 0xc2fe0000u;
const F32_ONE: u32 = 0x3f800000u;

var<workgroup> red: array<f32, 256>;
var<workgroup> redi: array<u32, 256>;
var<workgroup> rix: array<u32, 256>;
var<workgroup> tq: array<i32, 256>;
var<workgroup> thdr: array<u32, 8>;
var<workgroup> tbs: array<i32, 16>;

fn wg_sum(lid: u32, v: f32) -> f32 {
    red[lid] = v;
    workgroupBarrier();
    for (var s = DWG / 2u; s > 0u; s = s >> 1u) {
        if (lid < s) {
            red[lid] = red[lid] + red[lid + s];
        }
        workgroupBarrier();
    }
    let r = red[0];
    workgroupBarrier();
    return r;
}

fn wg_max(lid: u32, v: f32) -> f32 {
    red[lid] = v;
    workgroupBarrier();
    for (var s = DWG / 2u; s > 0u; s = s >> 1u) {
        if (lid < s) {
            red[lid] = max(red[lid], red[lid + s]);
        }
        workgroupBarrier();
    }
    let r = red[0];
    workgroupBarrier();
    return r;
}

fn round_f16(x: f32) -> f32 {
    return bitcast<f32>(sf_from_f16(sf_to_f16(bitcast<u32>(x))));
}

// Value i of the vector vec_quant produces from the row at `row`.
fn vec_value(row: u32, i: u32, scale: f32) -> f32 {
    switch (dp.mode) {
        case 1u: {
            return (vin[row + i] * scale) * nw[i];
        }
        case 2u: {
            let g = vin[row + i];
            return g / (1.0 + exp(-g)) * vin[row + dp.n + i];
        }
        case 3u: {
            let x = vin[row + i];
            // tanh saturates long before |t| = 10; clamping keeps drivers
            // that compute it through exp() away from inf/inf.
            let t = clamp(0.7978846 * (x + 0.044715 * x * x * x), -10.0, 10.0);
            return 0.5 * x * (1.0 + tanh(t)) * vin[row + dp.n + i];
        }
        default: {
            return vin[row + i];
        }
    }
}

// Words per token of an encoding of dp.n values (rows padded to words).
fn act_words(kind: u32) -> u32 {
    switch (kind) {
        case 0u: {
            return (dp.n / 32u * 34u + 3u) / 4u;
        }
        case 1u: {
            return dp.n / 32u * 9u;
        }
        default: {
            return dp.n / 256u * 73u;
        }
    }
}

// Q8_0 (kind 0) or Q8_1 (kind 1) blocks of the 256 values of tile t of
// the row starting at word `base`, one value per invocation (0 past the
// end). A tile is 8 blocks, 68 (Q8_0) or 72 (Q8_1) whole words.
fn quant_tile_q8(base: u32, t: u32, lid: u32, v: f32, kind: u32) {
    // Magnitudes compared as integers: no float unit flushes a subnormal.
    redi[lid] = bitcast<u32>(v) & 0x7fffffffu;
    workgroupBarrier();
    for (var s = 16u; s > 0u; s = s >> 1u) {
        if ((lid & 31u) < s) {
            redi[lid] = max(redi[lid], redi[lid + s]);
        }
        workgroupBarrier();
    }
    let amax = redi[lid & ~31u];
    let d = sf_div_fast(amax, F32_127);
    var id = 0u;
    if ((amax & 0x7fffffffu) != 0u) {
        id = sf_div_fast(F32_127, amax);
    }
    // cvtps2dq: nearest even, i32::MIN out of range (tiny blocks whose
    // 127/amax overflows), then saturated to i8 below.
    let q = sf_cvtt(sf_rint(sf_mul_fast(bitcast<u32>(v), id)));
    tq[lid] = q;
    workgroupBarrier();
    if ((lid & 31u) == 0u) {
        var h = sf_to_f16(d);
        if (kind == 1u) {
            var sum = 0;
            for (var j = 0u; j < 32u; j = j + 1u) {
                sum = sum + tq[lid + j];
            }
            h = h | (sf_to_f16(sf_mul_fast(d, sf_from_i32(sum))) << 16u);
        }
        thdr[lid / 32u] = h;
    }
    workgroupBarrier();
    let bsz = select(34u, 36u, kind == 1u);
    let hsz = select(2u, 4u, kind == 1u);
    let first = t * 8u;
    let nb = min(8u, dp.n / 32u - first);
    let words = (nb * bsz + 3u) / 4u;
    if (lid < words) {
        var w = 0u;
        for (var k = 0u; k < 4u; k = k + 1u) {
            let byte = lid * 4u + k;
            let blk = byte / bsz;
            let off = byte % bsz;
            var bv = 0u;
            if (blk < nb) {
                if (off < hsz) {
                    bv = (thdr[blk] >> (8u * off)) & 0xffu;
                } else {
                    bv = u32(clamp(tq[blk * 32u + off - hsz], -128, 127)) & 0xffu;
                }
            }
            w = w | (bv << (8u * k));
        }
        let at = base + first * bsz / 4u + lid;
        if (kind == 0u) {
            act_q8_0[at] = w;
        } else {
            act_q8_1[at] = w;
        }
    }
    workgroupBarrier();
}

// The Q8_K block (256 values, 73 words) of tile t of the row at `base`.
fn quant_tile_q8k(base: u32, t: u32, lid: u32, v: f32) {
    // The value of largest magnitude, the first one on ties, compared as
    // integers.
    redi[lid] = bitcast<u32>(v);
    rix[lid] = lid;
    workgroupBarrier();
    for (var s = DWG / 2u; s > 0u; s = s >> 1u) {
        if (lid < s) {
            let a = redi[lid] & 0x7fffffffu;
            let b = redi[lid + s] & 0x7fffffffu;
            if (b > a || (b == a && rix[lid + s] < rix[lid])) {
                redi[lid] = redi[lid + s];
                rix[lid] = rix[lid + s];
            }
        }
        workgroupBarrier();
    }
    let mx = redi[0];
    workgroupBarrier();
    let zero = (mx & 0x7fffffffu) == 0u;
    let iscale = sf_div_fast(F32_M127, mx);
    var q = 0;
    var dbits = 0u;
    if (!zero) {
        q = min(sf_nearest_int(sf_mul_fast(bitcast<u32>(v), iscale)), 127);
        dbits = sf_div_fast(F32_ONE, iscale);
    }
    tq[lid] = q;
    workgroupBarrier();
    if (lid < 16u) {
        var sum = 0;
        for (var j = 0u; j < 16u; j = j + 1u) {
            sum = sum + tq[16u * lid + j];
        }
        tbs[lid] = sum;
    }
    workgroupBarrier();
    if (lid < 73u) {
        var w = 0u;
        for (var k = 0u; k < 4u; k = k + 1u) {
            let byte = lid * 4u + k;
            var bv = 0u;
            if (byte < 4u) {
                bv = (dbits >> (8u * byte)) & 0xffu;
            } else if (byte < 260u) {
                bv = u32(tq[byte - 4u]) & 0xffu;
            } else {
                let j = (byte - 260u) / 2u;
                bv = (u32(tbs[j]) >> (8u * ((byte - 260u) % 2u))) & 0xffu;
            }
            w = w | (bv << (8u * k));
        }
        act_q8_k[base + t * 73u + lid] = w;
    }
    workgroupBarrier();
}

// One workgroup per token: vout = norm / activation / copy of vin, then
// the activation encodings act_mask asks for.
@compute @workgroup_size(256)
fn vec_quant(
    @builtin(workgroup_id) wid: vec3<u32>,
    @builtin(local_invocation_index) lid: u32,
) {
    let n = dp.n;
    let tok = wid.y;
    let row = tok * dp.in_stride;
    var scale = 1.0;
    if (dp.mode == 1u) {
        var ss = 0.0;
        for (var i = lid; i < n; i = i + DWG) {
            let v = vin[row + i];
            ss = ss + v * v;
        }
        let total = wg_sum(lid, ss);
        scale = 1.0 / sqrt(total / f32(n) + dp.eps);
    }
    let tiles = (n + DWG - 1u) / DWG;
    for (var t = 0u; t < tiles; t = t + 1u) {
        let i = t * DWG + lid;
        var v = 0.0;
        if (i < n) {
            v = vec_value(row, i, scale);
            vout[tok * dp.out_stride + i] = v;
        }
        if ((dp.act_mask & 1u) != 0u) {
            quant_tile_q8(tok * act_words(0u), t, lid, v, 0u);
        }
        if ((dp.act_mask & 2u) != 0u) {
            quant_tile_q8(tok * act_words(1u), t, lid, v, 1u);
        }
        if ((dp.act_mask & 4u) != 0u) {
            quant_tile_q8k(tok * act_words(2u), t, lid, v);
        }
    }
}

// One invocation per pair of values of q, k and v of a token (vin holds a
// row of q|k|v per token): bias, rope on the first n_rot dimensions of
// each q and k head, f16 rounding, then q back in place and k, v into the
// cache at the token's position.
@compute @workgroup_size(64)
fn rope_store(
    @builtin(workgroup_id) wid: vec3<u32>,
    @builtin(local_invocation_index) lid: u32,
) {
    let slot0 = wid.x * 64u + lid;
    let half_hd = dp.head_dim / 2u;
    let nq = dp.n_head * half_hd;
    let nk = dp.n_head_kv * half_hd;
    if (slot0 >= nq + 2u * nk) {
        return;
    }
    let tok = wid.y;
    let pos = state[0] + tok;
    let qkv_row = tok * (dp.q_dim + 2u * dp.kv_dim);
    var s = slot0;
    var part = 0u;
    var base = 0u;
    if (s >= nq) {
        s = s - nq;
        part = 1u;
        base = dp.q_dim;
        if (s >= nk) {
            s = s - nk;
            part = 2u;
            base = dp.q_dim + dp.kv_dim;
        }
    }
    let head = s / half_hd;
    let i = s % half_hd;
    let half_rot = dp.n_rot / 2u;
    var a = 2u * i;
    if (dp.neox == 1u) {
        if (i < half_rot) {
            a = i;
        } else {
            a = dp.n_rot + 2u * (i - half_rot);
        }
    }
    var b = a + 1u;
    if (dp.neox == 1u && i < half_rot) {
        b = i + half_rot;
    }
    let ia = head * dp.head_dim + a;
    let ib = head * dp.head_dim + b;
    var x0 = vin[qkv_row + base + ia];
    var x1 = vin[qkv_row + base + ib];
    if (dp.bias == 1u) {
        x0 = x0 + nw[base + ia];
        x1 = x1 + nw[base + ib];
    }
    if (part < 2u && i < half_rot) {
        let r = dp.rope_off + (pos * half_rot + i) * 2u;
        let c = rope[r];
        let sn = rope[r + 1u];
        let y0 = x0 * c - x1 * sn;
        let y1 = x0 * sn + x1 * c;
        x0 = y0;
        x1 = y1;
    }
    if (dp.kv_f16 == 1u) {
        x0 = round_f16(x0);
        x1 = round_f16(x1);
    }
    if (part == 0u) {
        vin[qkv_row + ia] = x0;
        vin[qkv_row + ib] = x1;
    } else if (part == 1u) {
        kcache[pos * dp.kv_dim + ia] = x0;
        kcache[pos * dp.kv_dim + ib] = x1;
    } else {
        vcache[pos * dp.kv_dim + ia] = x0;
        vcache[pos * dp.kv_dim + ib] = x1;
    }
}

// One workgroup per (query head, token): scores over the cached keys up
// to the token's position, softmax, and the weighted sum of the cached
// values into the token's row of vout. vin holds the q|k|v rows.
@compute @workgroup_size(256)
fn attention(
    @builtin(workgroup_id) wid: vec3<u32>,
    @builtin(local_invocation_index) lid: u32,
) {
    let h = wid.x;
    let tok = wid.y;
    let hd = dp.head_dim;
    let kvh = h / (dp.n_head / dp.n_head_kv);
    let pos = state[0] + tok;
    var first = 0u;
    if (dp.window > 0u && pos + 1u > dp.window) {
        first = pos + 1u - dp.window;
    }
    let qo = tok * (dp.q_dim + 2u * dp.kv_dim) + h * hd;
    let ko = kvh * hd;
    let so = (tok * dp.n_head + h) * dp.cap;
    var mx = -3.0e38;
    for (var j = first + lid; j <= pos; j = j + DWG) {
        var s = 0.0;
        let kb = j * dp.kv_dim + ko;
        for (var d = 0u; d < hd; d = d + 1u) {
            s = s + vin[qo + d] * kcache[kb + d];
        }
        s = s * dp.attn_scale;
        if (dp.softcap > 0.0) {
            s = dp.softcap * tanh(clamp(s / dp.softcap, -10.0, 10.0));
        }
        scores[so + j] = s;
        mx = max(mx, s);
    }
    let m = wg_max(lid, mx);
    var sum = 0.0;
    for (var j = first + lid; j <= pos; j = j + DWG) {
        let e = exp(scores[so + j] - m);
        scores[so + j] = e;
        sum = sum + e;
    }
    let inv = 1.0 / wg_sum(lid, sum);
    for (var j = first + lid; j <= pos; j = j + DWG) {
        var p = scores[so + j] * inv;
        if (dp.kv_f16 == 1u) {
            p = round_f16(p);
        }
        scores[so + j] = p;
    }
    storageBarrier();
    workgroupBarrier();
    let parts = DWG / hd;
    let d = lid % hd;
    let part = lid / hd;
    var acc = 0.0;
    if (part < parts) {
        for (var j = first + part; j <= pos; j = j + parts) {
            acc = acc + scores[so + j] * vcache[j * dp.kv_dim + ko + d];
        }
    }
    red[lid] = acc;
    workgroupBarrier();
    if (lid < hd) {
        var o = 0.0;
        for (var p = 0u; p < parts; p = p + 1u) {
            o = o + red[p * hd + lid];
        }
        vout[tok * dp.q_dim + h * hd + lid] = o;
    }
}
