// GGML quantizers, byte for byte the scalar references in
// src/ggml/reference (ggml's `quantize_row_*_ref`): every float operation
// goes through softfloat.wgsl in the order the C code evaluates it, or
// through the float unit where that provably gives the same bits (the
// legacy types' per-value arithmetic, the K-quant searches in their stated
// ranges, below).
//
// Input: f32 bit patterns, `params.n_units` blocks. Output: the blocks'
// bytes. Q8_0, Q4_0 and Q4_1 work in tiles of 64 blocks per workgroup,
// Q6_K in tiles of 4 blocks (840 bytes: whole words) with one invocation
// per 16-value sub-block, Q4_K in tiles of 8 blocks with one invocation
// per 32-value sub-block.

const F_ONE: u32 = 0x3f800000u;
const F_HALF: u32 = 0x3f000000u;
const F_127: u32 = 0x42fe0000u;
const F_NEG_8: u32 = 0xc1000000u;
const F_8_5: u32 = 0x41080000u;
const F_15: u32 = 0x41700000u;
const F_32: u32 = 0x42000000u;
const F_63: u32 = 0x427c0000u;
const F_NEG_128: u32 = 0xc3000000u;
const F_MAX: u32 = 0x7f7fffffu;
const F_0_1: u32 = 0x3dcccccdu;
const GROUP_MAX_EPS: u32 = 0x26901d7du;

// `(cvtt(v) as i8).min(15) as u8`, as the legacy quantizers store a nibble.
fn nibble_from(v: u32) -> u32 {
    let i = (sf_cvtt(v) << 24u) >> 24u;
    return u32(min(i, 15)) & 0xffu;
}

// The legacy quantizers' fast case. Their references compute one scale per
// block, then per value a product (and for the nibble types a sum) that is
// rounded or truncated to a small integer. When the block's magnitude is
// at least 2^-100 (and finite), the inverse scale is below 2^108, so a
// subnormal value (which a GPU may flush to zero) or a product that would
// round to a subnormal gives the same integer as zero does; every other
// operation has normal operands and a normal result, where WGSL, Vulkan,
// Metal and D3D require the float unit to round correctly, and `fenced`
// keeps each operation from being fused with the next. So such blocks run
// on the float unit and the others through softfloat.wgsl, with the same
// bytes either way (the host rejects non-finite input, so no NaN reaches a
// kept result).
const FAST_MIN: u32 = 0x0d800000u; // 2^-100

fn fast_magnitude(m: u32) -> bool {
    return m >= FAST_MIN && m < SF_INF;
}

// roundf(p) as an integer, for the bits of a finite |p| < 2^23.
fn round_away_small(p: u32) -> i32 {
    let e = (p >> 23u) & 0xffu;
    let s = 150u - clamp(e, 126u, 150u);
    let m = (p & 0x7fffffu) | 0x00800000u;
    let r = select((m + ((1u << s) >> 1u)) >> s, 0u, e < 126u);
    return select(i32(r), -i32(r), (p >> 31u) != 0u);
}

// A nibble `min(15, (int8)(p + add))` for p a fast block's product.
fn nibble_fast(p: u32, add: f32) -> u32 {
    return min(u32(i32(bitcast<f32>(p) + add)), 15u);
}

// ------------------------------------------------- tiles of 32-value blocks
//
// The legacy kernels work in tiles of 64 blocks, one workgroup each: the
// workgroup loads the tile's 2048 values with coalesced reads (invocation
// i reads words i, i+64, ...) into workgroup memory, each invocation then
// quantizes one block from there (rows of 33 words, so that the 64 rows
// fall in different banks), stages the block's bytes as words, and the
// workgroup writes the tile's output with coalesced stores. Reading 32
// consecutive words per invocation straight from the buffer instead
// touches 32 cache lines per warp-wide load: an H100 then tops out near
// 470 GB/s for the reads alone, against ~1.6 TB/s coalesced
// (BENCH-gpu.md).

const TILE: u32 = 64u;
const ROW: u32 = 33u;
// Staged output words per block (the largest block, Q8_0's 34 bytes).
const OUT_ROW: u32 = 9u;

var<workgroup> tile_in: array<u32, 2112>;
var<workgroup> tile_out: array<u32, 576>;

struct Tile {
    // Index of the tile's first block in the chunk.
    first: u32,
    // Blocks present (TILE except in the last tile).
    blocks: u32,
}

fn tile_of(wid: vec3<u32>, nwg: vec3<u32>) -> Tile {
    let first = (wid.x + wid.y * nwg.x) * TILE;
    return Tile(first, min(TILE, params.n_units - min(first, params.n_units)));
}

fn tile_load(t: Tile, lid: u32) {
    let words = t.blocks * 32u;
    let base = t.first * 32u;
    // Eight loads issued before their values are stored, so that they are
    // in flight together (a plain loop: Q8_0 703, Q4_1 618 GB/s on the H100
    // against 1019 and 804 with this).
    var bad = 0xffffffffu;
    for (var i0 = 0u; i0 < 32u; i0 = i0 + 8u) {
        var v: array<u32, 8>;
        for (var i = 0u; i < 8u; i = i + 1u) {
            let w = lid + (i0 + i) * TILE;
            v[i] = select(0u, src[min(base + w, arrayLength(&src) - 1u)], w < words);
        }
        for (var i = 0u; i < 8u; i = i + 1u) {
            let w = lid + (i0 + i) * TILE;
            if (w < words) {
                bad = first_non_finite(bad, base + w, v[i]);
            }
            tile_in[w + w / 32u] = v[i];
        }
    }
    note_first_non_finite(bad);
}

// Value j of the tile's block b.
fn tv(b: u32, j: u32) -> u32 {
    return tile_in[b * ROW + j];
}

// Bytes y, y+1 (y even) of the tile's output: block y / ts, staged in
// OUT_ROW words per block.
fn tile_half(y: u32, ts: u32) -> u32 {
    let b = y / ts;
    let r = y - b * ts;
    return (tile_out[b * OUT_ROW + r / 4u] >> ((r & 2u) * 8u)) & 0xffffu;
}

// Writes the tile's output: `ts` bytes per block (an even number), the
// staged words of absent blocks being zero.
fn tile_store(t: Tile, lid: u32, ts: u32) {
    let words = (t.blocks * ts + 3u) / 4u;
    let base = t.first * ts / 4u;
    for (var i = 0u; i * TILE < TILE * ts / 4u; i = i + 1u) {
        let w = lid + i * TILE;
        if (w < words) {
            dst[base + w] = tile_half(4u * w, ts) | (tile_half(4u * w + 2u, ts) << 16u);
        }
    }
}

// Stages a block whose bytes are a 2-byte scale then `n` packed code words
// (Q8_0: 8, Q4_0: 4): the codes straddle words, shifted by the scale.
fn stage_after_half(b: u32, d16: u32, codes: ptr<function, array<u32, 8>>, n: u32) {
    var carry = d16;
    for (var k = 0u; k < n; k = k + 1u) {
        let p = (*codes)[k];
        tile_out[b * OUT_ROW + k] = carry | (p << 16u);
        carry = p >> 16u;
    }
    tile_out[b * OUT_ROW + n] = carry;
}

fn stage_zero(b: u32) {
    for (var k = 0u; k < OUT_ROW; k = k + 1u) {
        tile_out[b * OUT_ROW + k] = 0u;
    }
}

// The legacy kernels' common body: load the tile, quantize one block per
// invocation (`kind` is a constant at each entry point, so the driver
// keeps only that type's path), store the tile.
const LEGACY_Q8_0: u32 = 0u;
const LEGACY_Q4_0: u32 = 1u;
const LEGACY_Q4_1: u32 = 2u;

fn legacy_tile(t: Tile, lid: u32, kind: u32) {
    if (t.blocks == 0u) {
        return;
    }
    tile_load(t, lid);
    workgroupBarrier();
    if (lid >= t.blocks) {
        stage_zero(lid);
    } else if (kind == LEGACY_Q8_0) {
        q8_0_stage(lid);
    } else if (kind == LEGACY_Q4_0) {
        q4_0_stage(lid);
    } else {
        q4_1_stage(lid);
    }
    workgroupBarrier();
    // Bytes per block: 34, 18, 20.
    tile_store(t, lid, select(select(20u, 18u, kind == LEGACY_Q4_0), 34u, kind == LEGACY_Q8_0));
}

// ------------------------------------------------------------------ Q8_0

// amax = MAX(amax, fabsf(x)) over the block (an integer maximum of the
// magnitudes' bits, for finite values), d = amax/127, id = 1/d or 0, then
// each code `(int8)roundf(x*id)`.
fn q8_0_stage(b: u32) {
    var amax = 0u;
    for (var j = 0u; j < 32u; j = j + 1u) {
        amax = max(amax, tv(b, j) & 0x7fffffffu);
    }
    let d = sf_div_fast(amax, F_127);
    var id = 0u;
    if (d != 0u) {
        id = sf_div_fast(F_ONE, d);
    }
    // The two cases in separate loops, so that the soft one is not
    // inlined into every value of the fast one.
    var codes: array<u32, 8>;
    if (fast_magnitude(amax)) {
        let fid = bitcast<f32>(id);
        for (var k = 0u; k < 8u; k = k + 1u) {
            var w = 0u;
            for (var i = 0u; i < 4u; i = i + 1u) {
                let q = round_away_small(fenced(bitcast<f32>(tv(b, 4u * k + i)) * fid));
                w = w | ((u32(q) & 0xffu) << (8u * i));
            }
            codes[k] = w;
        }
    } else {
        for (var k = 0u; k < 8u; k = k + 1u) {
            var w = 0u;
            for (var i = 0u; i < 4u; i = i + 1u) {
                let q = sf_cvtt(sf_round_away(sf_mul_fast(tv(b, 4u * k + i), id)));
                w = w | ((u32(q) & 0xffu) << (8u * i));
            }
            codes[k] = w;
        }
    }
    stage_after_half(b, sf_to_f16(d), &codes, 8u);
}

@compute @workgroup_size(64)
fn quantize_q8_0(
    @builtin(workgroup_id) wid: vec3<u32>,
    @builtin(num_workgroups) nwg: vec3<u32>,
    @builtin(local_invocation_index) lid: u32,
) {
    legacy_tile(tile_of(wid, nwg), lid, LEGACY_Q8_0);
}

// ------------------------------------------------------------------ Q4_0

// Code byte j (values j and j+16) of a Q4_0 block: `MIN(15, (int8)(x*id
// + 8.5f))` per nibble, on the float unit or through softfloat.
fn q4_0_byte_fast(b: u32, j: u32, id: f32) -> u32 {
    let lo = nibble_fast(fenced(bitcast<f32>(tv(b, j)) * id), 8.5);
    let hi = nibble_fast(fenced(bitcast<f32>(tv(b, j + 16u)) * id), 8.5);
    return lo | (hi << 4u);
}

fn q4_0_byte_soft(b: u32, j: u32, id: u32) -> u32 {
    let lo = nibble_from(sf_add(sf_mul_fast(tv(b, j), id), F_8_5));
    let hi = nibble_from(sf_add(sf_mul_fast(tv(b, j + 16u), id), F_8_5));
    return lo | (hi << 4u);
}

// The first largest-magnitude value (the running maximum starts at 0), d =
// max/-8, id = 1/d or 0; byte j of the codes holds value j in its low
// nibble and value j+16 in its high one.
fn q4_0_stage(b: u32) {
    var amax = 0u;
    var vmax = 0u;
    for (var j = 0u; j < 32u; j = j + 1u) {
        let v = tv(b, j);
        if ((v & 0x7fffffffu) > amax) {
            amax = v & 0x7fffffffu;
            vmax = v;
        }
    }
    let d = sf_div_fast(vmax, F_NEG_8);
    var id = 0u;
    if ((d & 0x7fffffffu) != 0u) {
        id = sf_div_fast(F_ONE, d);
    }
    var codes: array<u32, 8>;
    if (fast_magnitude(amax)) {
        for (var k = 0u; k < 4u; k = k + 1u) {
            var w = 0u;
            for (var i = 0u; i < 4u; i = i + 1u) {
                w = w | (q4_0_byte_fast(b, 4u * k + i, bitcast<f32>(id)) << (8u * i));
            }
            codes[k] = w;
        }
    } else {
        for (var k = 0u; k < 4u; k = k + 1u) {
            var w = 0u;
            for (var i = 0u; i < 4u; i = i + 1u) {
                w = w | (q4_0_byte_soft(b, 4u * k + i, id) << (8u * i));
            }
            codes[k] = w;
        }
    }
    stage_after_half(b, sf_to_f16(d), &codes, 4u);
}

@compute @workgroup_size(64)
fn quantize_q4_0(
    @builtin(workgroup_id) wid: vec3<u32>,
    @builtin(num_workgroups) nwg: vec3<u32>,
    @builtin(local_invocation_index) lid: u32,
) {
    legacy_tile(tile_of(wid, nwg), lid, LEGACY_Q4_0);
}

// ------------------------------------------------------------------ Q4_1

// Code byte j (values j and j+16) of a Q4_1 block: `MIN(15, (int8)((x -
// min)*id + 0.5f))` per nibble, on the float unit or through softfloat.
fn q4_1_nibble_fast(v: u32, vmin: f32, id: f32) -> u32 {
    let diff = fenced(bitcast<f32>(v) - vmin);
    return nibble_fast(fenced(bitcast<f32>(diff) * id), 0.5);
}

fn q4_1_byte_fast(b: u32, j: u32, vmin: f32, id: f32) -> u32 {
    let lo = q4_1_nibble_fast(tv(b, j), vmin, id);
    let hi = q4_1_nibble_fast(tv(b, j + 16u), vmin, id);
    return lo | (hi << 4u);
}

fn q4_1_byte_soft(b: u32, j: u32, vmin: u32, id: u32) -> u32 {
    let lo = nibble_from(sf_add(sf_mul_fast(sf_sub(tv(b, j), vmin), id), F_HALF));
    let hi = nibble_from(sf_add(sf_mul_fast(sf_sub(tv(b, j + 16u), vmin), id), F_HALF));
    return lo | (hi << 4u);
}

// `if (v < min) min = v; if (v > max) max = v;` from FLT_MAX and -FLT_MAX
// (compared through order_key), d = (max - min)/15, id = 1/d or 0. A
// subnormal value sends the block to the soft path (x - min could round
// differently on a GPU that flushes it).
fn q4_1_stage(b: u32) {
    var vmin = F_MAX;
    var vmax = F_MAX | 0x80000000u;
    var kmin = order_key(vmin);
    var kmax = order_key(vmax);
    var subnormal = false;
    for (var j = 0u; j < 32u; j = j + 1u) {
        let v = tv(b, j);
        let k = order_key(v);
        if (k < kmin) {
            kmin = k;
            vmin = v;
        }
        if (k > kmax) {
            kmax = k;
            vmax = v;
        }
        subnormal = subnormal || ((v & 0x7f800000u) == 0u && (v & 0x7fffffu) != 0u);
    }
    let range = sf_sub(vmax, vmin);
    let d = sf_div_fast(range, F_15);
    var id = 0u;
    if ((d & 0x7fffffffu) != 0u) {
        id = sf_div_fast(F_ONE, d);
    }
    tile_out[b * OUT_ROW] = sf_to_f16(d) | (sf_to_f16(vmin) << 16u);
    if (!subnormal && fast_magnitude(range)) {
        for (var k = 0u; k < 4u; k = k + 1u) {
            var w = 0u;
            for (var i = 0u; i < 4u; i = i + 1u) {
                let byte = q4_1_byte_fast(b, 4u * k + i, bitcast<f32>(vmin), bitcast<f32>(id));
                w = w | (byte << (8u * i));
            }
            tile_out[b * OUT_ROW + 1u + k] = w;
        }
    } else {
        for (var k = 0u; k < 4u; k = k + 1u) {
            var w = 0u;
            for (var i = 0u; i < 4u; i = i + 1u) {
                w = w | (q4_1_byte_soft(b, 4u * k + i, vmin, id) << (8u * i));
            }
            tile_out[b * OUT_ROW + 1u + k] = w;
        }
    }
}

@compute @workgroup_size(64)
fn quantize_q4_1(
    @builtin(workgroup_id) wid: vec3<u32>,
    @builtin(num_workgroups) nwg: vec3<u32>,
    @builtin(local_invocation_index) lid: u32,
) {
    legacy_tile(tile_of(wid, nwg), lid, LEGACY_Q4_1);
}

// ------------------------------------------------------------------ Q4_K

// One sub-block of 32 values and its search weights.
var<private> kx: array<u32, 32>;
var<private> kw: array<u32, 32>;

// What make_qkx2_quants leaves behind: the scale, the negated min, and how
// its levels were computed (`clamp(nearest_int(iscale * (x - lmin)), 0,
// 15)`, or all zero), so that they can be recomputed instead of stored.
struct Qkx2 {
    scale: u32,
    neg_min: u32,
    l_iscale: u32,
    l_min: u32,
    zero: bool,
}

fn qkx2_level(iscale: u32, lmin: u32, x: u32) -> i32 {
    return clamp(sf_nearest_int(sf_mul_fast(iscale, sf_sub(x, lmin))), 0, 15);
}

// make_qkx2_quants(15, x, weights, L, Laux, rmin=-1, rdelta=0.1, nstep=20,
// use_mad=false) over `kx`, `kw`.
fn make_qkx2_q4k() -> Qkx2 {
    var vmin = kx[0];
    var vmax = kx[0];
    var sum_w = kw[0];
    var sum_x = sf_mul_fast(sum_w, kx[0]);
    for (var i = 1u; i < 32u; i = i + 1u) {
        if (sf_lt(kx[i], vmin)) {
            vmin = kx[i];
        }
        if (sf_gt(kx[i], vmax)) {
            vmax = kx[i];
        }
        let w = kw[i];
        sum_w = sf_add(sum_w, w);
        sum_x = sf_add(sum_x, sf_mul_fast(w, kx[i]));
    }
    if (sf_gt(vmin, 0u)) {
        vmin = 0u;
    }
    if (sf_eq(vmax, vmin)) {
        return Qkx2(0u, sf_neg(vmin), 0u, 0u, true);
    }
    var iscale = sf_div_fast(F_15, sf_sub(vmax, vmin));
    var scale = sf_div_fast(F_ONE, iscale);
    var best_error = 0u;
    for (var i = params.zero; i < 32u; i = i + 1u) {
        let l = qkx2_level(iscale, vmin, kx[i]);
        var diff = sf_sub(sf_add(sf_mul_fast(scale, sf_from_i32(l)), vmin), kx[i]);
        diff = sf_mul_fast(diff, diff);
        best_error = sf_add(best_error, sf_mul_fast(kw[i], diff));
    }
    var l_iscale = iscale;
    var l_min = vmin;
    for (var istep = i32(params.zero); istep <= 20; istep = istep + 1) {
        iscale = sf_div_fast(
            sf_add(sf_add(0xbf800000u, sf_mul_fast(F_0_1, sf_from_i32(istep))), F_15),
            sf_sub(vmax, vmin),
        );
        var sum_l = 0u;
        var sum_l2 = 0u;
        var sum_xl = 0u;
        for (var i = params.zero; i < 32u; i = i + 1u) {
            let lf = sf_from_i32(qkx2_level(iscale, vmin, kx[i]));
            let wl = sf_mul_fast(kw[i], lf);
            sum_l = sf_add(sum_l, wl);
            sum_l2 = sf_add(sum_l2, sf_mul_fast(wl, lf));
            sum_xl = sf_add(sum_xl, sf_mul_fast(wl, kx[i]));
        }
        let d = sf_sub(sf_mul_fast(sum_w, sum_l2), sf_mul_fast(sum_l, sum_l));
        if (sf_gt(d, 0u)) {
            var this_scale = sf_div_fast(sf_sub(sf_mul_fast(sum_w, sum_xl), sf_mul_fast(sum_x, sum_l)), d);
            var this_min = sf_div_fast(sf_sub(sf_mul_fast(sum_l2, sum_x), sf_mul_fast(sum_l, sum_xl)), d);
            if (sf_gt(this_min, 0u)) {
                this_min = 0u;
                this_scale = sf_div_fast(sum_xl, sum_l2);
            }
            var cur_error = 0u;
            for (var i = params.zero; i < 32u; i = i + 1u) {
                let lf = sf_from_i32(qkx2_level(iscale, vmin, kx[i]));
                var diff = sf_sub(sf_add(sf_mul_fast(this_scale, lf), this_min), kx[i]);
                diff = sf_mul_fast(diff, diff);
                cur_error = sf_add(cur_error, sf_mul_fast(kw[i], diff));
            }
            if (sf_lt(cur_error, best_error)) {
                l_iscale = iscale;
                l_min = vmin;
                best_error = cur_error;
                scale = this_scale;
                vmin = this_min;
            }
        }
    }
    return Qkx2(scale, sf_neg(vmin), l_iscale, l_min, false);
}

// The Q4_K search's fast case: make_qkx2_quants(15, ..., rmin=-1,
// rdelta=0.1, nstep=20) on the float unit, for a sub-block whose values
// are all zero, or whose largest magnitude A is in [2^-16, 2^16] and whose
// nonzero values all have |x| >= 2^-30 (the tile goes to
// quantize_q4_k_soft otherwise). "Safe" below means zero or a magnitude in
// [2^-30, 2^20]: such a float is a multiple of 2^-53. Then:
// - the weights w = av_x + |x| lie in [A/6, 2A(1 + 2^-23)], within
//   [2^-19, 2^18] (x*x is normal or zero, sum_x2 >= A^2 >= 2^-32, and
//   sum_x2/32 is the exact product by 2^-5; the square root goes through
//   sf_sqrt);
// - min (zero or a value) and max are safe, so max - min, x - min are
//   multiples of 2^-53: zero or normal; every iscale (a numerator in [14,
//   16] over max - min >= 2^-53, through sf_div_fast) is at most 2^58, so
//   iscale*(x - min) is zero, normal (>= 2^-74) or at most 2^80, and
//   nearest_int's addition of 1.5*2^23 is correctly rounded as in the
//   reference; 0.1*is, -1 + 0.1*is (+-0 only for is = 10, exactly) and
//   + 15 are normal;
// - each w*l (l in 0..15) is zero or in [2^-19, 2^22], (w*l)*l below 2^26,
//   (w*l)*x zero or in [2^-49, 2^38]; so sum_l, sum_l2 (terms of one sign)
//   are normal and sum_x, sum_xl (their terms multiples of 2^-72) zero or
//   at least 2^-72; the products in d and in the two numerators are zero or
//   in [2^-91, 2^70] and their differences multiples of 2^-114: normal;
//   the divisions go through sf_div_fast;
// - with this_scale and this_min safe (checked at run time, with max -
//   this_min > 0 for a winner), scale*l + min and its difference with x are
//   multiples of 2^-53 below 2^26: diff*diff is zero or in [2^-106, 2^52],
//   w*diff^2 zero or in [2^-125, 2^71], and the error sums (terms >= 0)
//   normal; the initial scale = 1/iscale is checked the same way.
// Every + - * then has normal (or zero) operands and a normal or zero
// result, which the float unit rounds correctly; `ff` keeps them from
// being contracted. When a run-time check fails (a degenerate fit, values
// nearly equal), `q4_ok` is false and the sub-block runs
// make_qkx2_q4k instead.
const Q4K_FAST_MIN: u32 = 0x37800000u; // 2^-16
const Q4K_FAST_MAX: u32 = 0x47800000u; // 2^16
const Q4K_SAFE_MIN: u32 = 0x30800000u; // 2^-30
const Q4K_SAFE_MAX: u32 = 0x49800000u; // 2^20

var<private> q4_fx: array<f32, 32>;
var<private> q4_fw: array<f32, 32>;
var<private> q4_fl: array<f32, 32>;
var<private> q4_ok: bool;

fn q4k_safe(v: f32) -> bool {
    let m = bitcast<u32>(v) & 0x7fffffffu;
    return m == 0u || (m >= Q4K_SAFE_MIN && m <= Q4K_SAFE_MAX);
}

// clamp(nearest_int(p), 0, 15) for a fenced p (see q6_nearest_fast).
fn q4_nearest_fast(p: f32) -> f32 {
    let v = bitcast<u32>(p + 12582912.0);
    return f32(clamp(i32(v & 0x007fffffu) - 0x00400000, 0, 15));
}

// The weighted squared error of the levels in q4_fl for (scale, min).
fn q4_error_fast(scale: f32, vmin: f32) -> f32 {
    var e = 0.0;
    for (var i = 0u; i < 32u; i = i + 1u) {
        var diff = ff(ff(ff(scale * q4_fl[i]) + vmin) - q4_fx[i]);
        diff = ff(diff * diff);
        e = ff(e + ff(q4_fw[i] * diff));
    }
    return e;
}

fn make_qkx2_q4k_fast() -> Qkx2 {
    q4_ok = true;
    var vmin = q4_fx[0];
    var vmax = q4_fx[0];
    var sum_w = q4_fw[0];
    var sum_x = ff(sum_w * q4_fx[0]);
    for (var i = 1u; i < 32u; i = i + 1u) {
        let x = q4_fx[i];
        if (x < vmin) {
            vmin = x;
        }
        if (x > vmax) {
            vmax = x;
        }
        let w = q4_fw[i];
        sum_w = ff(sum_w + w);
        sum_x = ff(sum_x + ff(w * x));
    }
    if (vmin > 0.0) {
        vmin = 0.0;
    }
    if (vmax == vmin) {
        return Qkx2(0u, sf_neg(bitcast<u32>(vmin)), 0u, 0u, true);
    }
    var range = ff(vmax - vmin);
    var iscale = sf_div_fast(F_15, bitcast<u32>(range));
    var scale = bitcast<f32>(sf_div_fast(F_ONE, iscale));
    if (!q4k_safe(scale)) {
        q4_ok = false;
        return Qkx2(0u, 0u, 0u, 0u, true);
    }
    for (var i = 0u; i < 32u; i = i + 1u) {
        q4_fl[i] = q4_nearest_fast(ff(bitcast<f32>(iscale) * ff(q4_fx[i] - vmin)));
    }
    var best_error = q4_error_fast(scale, vmin);
    var l_iscale = iscale;
    var l_min = vmin;
    for (var istep = params.zero; istep <= 20u; istep = istep + 1u) {
        let num = ff(ff(-1.0 + ff(0.1 * f32(istep))) + 15.0);
        iscale = sf_div_fast(bitcast<u32>(num), bitcast<u32>(range));
        let fi = bitcast<f32>(iscale);
        var sum_l = 0.0;
        var sum_l2 = 0.0;
        var sum_xl = 0.0;
        for (var i = 0u; i < 32u; i = i + 1u) {
            let x = q4_fx[i];
            let lf = q4_nearest_fast(ff(fi * ff(x - vmin)));
            q4_fl[i] = lf;
            let wl = ff(q4_fw[i] * lf);
            sum_l = ff(sum_l + wl);
            sum_l2 = ff(sum_l2 + ff(wl * lf));
            sum_xl = ff(sum_xl + ff(wl * x));
        }
        let d = ff(ff(sum_w * sum_l2) - ff(sum_l * sum_l));
        if (d > 0.0) {
            let db = bitcast<u32>(d);
            var this_scale = bitcast<f32>(sf_div_fast(fenced(ff(sum_w * sum_xl) - ff(sum_x * sum_l)), db));
            var this_min = bitcast<f32>(sf_div_fast(fenced(ff(sum_l2 * sum_x) - ff(sum_l * sum_xl)), db));
            if (this_min > 0.0) {
                this_min = 0.0;
                this_scale = bitcast<f32>(sf_div_fast(bitcast<u32>(sum_xl), bitcast<u32>(sum_l2)));
            }
            if (!q4k_safe(this_scale) || !q4k_safe(this_min)) {
                q4_ok = false;
                return Qkx2(0u, 0u, 0u, 0u, true);
            }
            let cur_error = q4_error_fast(this_scale, this_min);
            if (cur_error < best_error) {
                l_iscale = iscale;
                l_min = vmin;
                best_error = cur_error;
                scale = this_scale;
                vmin = this_min;
                range = ff(vmax - vmin);
                if (!(range > 0.0)) {
                    q4_ok = false;
                    return Qkx2(0u, 0u, 0u, 0u, true);
                }
            }
        }
    }
    return Qkx2(bitcast<u32>(scale), sf_neg(bitcast<u32>(vmin)), l_iscale, bitcast<u32>(l_min), false);
}

// A workgroup quantizes a tile of 8 blocks (1152 bytes: whole words), one
// invocation per 32-value sub-block: the tile's 64 sub-blocks load as the
// legacy tiles' 64 blocks do (tile_load), each invocation runs its
// sub-block's make_qkx2_quants (make_qkx2_q4k_fast, or make_qkx2_q4k in
// quantize_q4_k_soft's tiles and after a failed run-time check),
// then (after a barrier) its block's scale step and its 32 levels (in
// place of its values), and the workgroup stores the staged bytes.
const Q4K_TILE: u32 = 8u;

var<workgroup> k4_scale: array<u32, 64>;
var<workgroup> k4_min: array<u32, 64>;
// The 6-bit scale and min of each sub-block; per block, d | dmin << 16.
var<workgroup> k4_ls: array<u32, 64>;
var<workgroup> k4_lm: array<u32, 64>;
var<workgroup> k4_dh: array<u32, 8>;

// Byte t of the tile's staged output (block t / 144; absent blocks read
// as zero).
fn q4k_byte(t: u32, blocks: u32) -> u32 {
    let b = t / 144u;
    let r = t - b * 144u;
    if (b >= blocks) {
        return 0u;
    }
    let j = b * 8u;
    if (r < 4u) {
        return (k4_dh[b] >> (r * 8u)) & 0xffu;
    }
    if (r < 16u) {
        // put_scale_min_k4's 12 bytes.
        let i = r - 4u;
        if (i < 4u) {
            return k4_ls[j + i] | ((k4_ls[j + i + 4u] >> 4u) << 6u);
        }
        if (i < 8u) {
            return k4_lm[j + i - 4u] | ((k4_lm[j + i] >> 4u) << 6u);
        }
        return (k4_ls[j + i - 4u] & 0xfu) | ((k4_lm[j + i - 4u] & 0xfu) << 4u);
    }
    // Bytes [32c, 32c+32) of the codes: sub-block 2c in the low nibbles,
    // 2c+1 in the high ones (levels staged in tile_in in place of values).
    let q = r - 16u;
    let c = q / 32u;
    let k = q & 31u;
    return tv(j + 2u * c, k) | (tv(j + 2u * c + 1u, k) << 4u);
}

// The final levels clamp(nearest_int((x + dm) / d), 0, 15) of sub-block s,
// in place of its values, for d != 0 (as q6_final_levels): x + dm through
// softfloat.wgsl, the quotient estimated as (x + dm) * (1/d) with the
// reciprocal correctly rounded (d = d_all * ls with d_all a nonzero f16
// and ls in 1..63, so |d| is in [2^-24, 2^22] and 1/d is normal); below
// 512 the estimate is within 2^-13 of the quotient, so it decides the
// rounding when more than 2^-10 from a half-integer (a subnormal x + dm,
// flushed or not, or an underflowing product give an estimate near 0, and
// there the quotient's magnitude is below 2^-100: level 0 either way; an
// overflowing one fails the test). The others take the exact division.
fn q4k_final_levels(s: u32, d: u32, dm: u32) {
    let r = bitcast<f32>(sf_div_fast(F_ONE, d));
    var exact = 0u;
    for (var k = 0u; k < 32u; k = k + 1u) {
        let y = ff(bitcast<f32>(sf_add(tv(s, k), dm)) * r);
        let t = floor(y + 0.5);
        if (abs(y - t) < 0.4990234375 && abs(y) < 512.0) {
            tile_in[s * ROW + k] = u32(i32(clamp(t, 0.0, 15.0)));
        } else {
            exact = exact | (1u << k);
        }
    }
    while (exact != 0u) {
        let k = firstTrailingBit(exact);
        exact = exact & (exact - 1u);
        let q = sf_div_fast(sf_add(tv(s, k), dm), d);
        tile_in[s * ROW + k] = u32(clamp(sf_nearest_int(q), 0, 15));
    }
}

// Whether some sub-block of the tile is outside the fast case.
var<workgroup> q4_any_soft: u32;

// Two entry points share the tile body, as Q6_K's do: quantize_q4_k takes
// the tiles whose sub-blocks are all in make_qkx2_q4k_fast's range,
// quantize_q4_k_soft (dispatched after it in the same pass) the others.
fn q4k_tile(wid: vec3<u32>, nwg: vec3<u32>, lid: u32, soft_tiles: bool) {
    let first = (wid.x + wid.y * nwg.x) * Q4K_TILE;
    if (first >= params.n_units) {
        return;
    }
    let blocks = min(Q4K_TILE, params.n_units - first);
    if (lid == 0u) {
        q4_any_soft = 0u;
    }
    // (tile_load notes non-finite values; the soft tiles' pass repeats
    // that harmlessly: atomicMin of the same index.)
    tile_load(Tile(first * 8u, blocks * 8u), lid);
    workgroupBarrier();

    // The sub-block's range test (integer comparisons of magnitudes).
    let s = lid;
    let live = s < blocks * 8u;
    var amax = 0u;
    var nz_min = 0xffffffffu;
    for (var k = 0u; k < 32u; k = k + 1u) {
        let m = tv(s, k) & 0x7fffffffu;
        amax = max(amax, m);
        nz_min = min(nz_min, select(m, 0xffffffffu, m == 0u));
    }
    let fast = amax == 0u || (amax >= Q4K_FAST_MIN && amax <= Q4K_FAST_MAX && nz_min >= Q4K_SAFE_MIN);
    if (live && !fast) {
        // The same value from every writer.
        q4_any_soft = 1u;
    }
    if ((workgroupUniformLoad(&q4_any_soft) != 0u) != soft_tiles) {
        return;
    }

    // The sub-block's search (weights av_x + |x|, av_x = sqrt(sum x^2 / 32)).
    var r = Qkx2(0u, 0u, 0u, 0u, true);
    if (live) {
        var soft = soft_tiles;
        if (!soft) {
            var sum_x2 = 0.0;
            for (var k = 0u; k < 32u; k = k + 1u) {
                let x = bitcast<f32>(tv(s, k));
                q4_fx[k] = x;
                sum_x2 = ff(sum_x2 + ff(x * x));
            }
            let av_x = bitcast<f32>(sf_sqrt(fenced(sum_x2 * 0.03125)));
            for (var k = 0u; k < 32u; k = k + 1u) {
                q4_fw[k] = ff(av_x + abs(q4_fx[k]));
            }
            r = make_qkx2_q4k_fast();
            soft = !q4_ok;
            if (soft) {
                // The same weights, bit for bit, for the soft search.
                for (var k = params.zero; k < 32u; k = k + 1u) {
                    kx[k] = bitcast<u32>(q4_fx[k]);
                    kw[k] = bitcast<u32>(q4_fw[k]);
                }
            }
        } else {
            var sum_x2 = 0u;
            for (var k = params.zero; k < 32u; k = k + 1u) {
                let v = tv(s, k);
                kx[k] = v;
                sum_x2 = sf_add(sum_x2, sf_mul_fast(v, v));
            }
            let av_x = sf_sqrt(sf_div_fast(sum_x2, F_32));
            for (var k = params.zero; k < 32u; k = k + 1u) {
                kw[k] = sf_add(av_x, sf_abs(kx[k]));
            }
        }
        if (soft) {
            r = make_qkx2_q4k();
        }
    }
    k4_scale[s] = r.scale;
    k4_min[s] = r.neg_min;
    workgroupBarrier();

    // The block's scale step (every invocation of the block computes it),
    // then qk_requantize of the sub-block against the stored values.
    let b = s / 8u;
    var max_scale = 0u;
    var max_min = 0u;
    for (var j = 0u; j < 8u; j = j + 1u) {
        if (sf_gt(k4_scale[b * 8u + j], max_scale)) {
            max_scale = k4_scale[b * 8u + j];
        }
        if (sf_gt(k4_min[b * 8u + j], max_min)) {
            max_min = k4_min[b * 8u + j];
        }
    }
    var inv_scale = 0u;
    if (sf_gt(max_scale, 0u)) {
        inv_scale = sf_div_fast(F_63, max_scale);
    }
    var inv_min = 0u;
    if (sf_gt(max_min, 0u)) {
        inv_min = sf_div_fast(F_63, max_min);
    }
    let ls = min(u32(sf_nearest_int(sf_mul_fast(inv_scale, r.scale))) & 0xffu, 63u);
    let lm = min(u32(sf_nearest_int(sf_mul_fast(inv_min, r.neg_min))) & 0xffu, 63u);
    k4_ls[s] = ls;
    k4_lm[s] = lm;
    let dh = sf_to_f16(sf_div_fast(max_scale, F_63));
    let mh = sf_to_f16(sf_div_fast(max_min, F_63));
    if ((s & 7u) == 0u) {
        k4_dh[b] = dh | (mh << 16u);
    }
    let d = sf_mul_fast(sf_from_f16(dh), sf_from_i32(i32(ls)));
    let dm = sf_mul_fast(sf_from_f16(mh), sf_from_i32(i32(lm)));
    if (s < blocks * 8u) {
        if (!sf_eq(d, 0u)) {
            q4k_final_levels(s, d, dm);
        } else {
            for (var k = 0u; k < 32u; k = k + 1u) {
                var l = 0u;
                if (!r.zero) {
                    l = u32(qkx2_level(r.l_iscale, r.l_min, tv(s, k)));
                }
                tile_in[s * ROW + k] = l;
            }
        }
    }
    workgroupBarrier();

    // 144 bytes per block: 8 blocks are 288 whole words.
    let out_words = (blocks * 144u + 3u) / 4u;
    let out_base = first / Q4K_TILE * 288u;
    for (var i = 0u; i < 5u; i = i + 1u) {
        let w = lid + i * 64u;
        if (w < out_words) {
            let t = 4u * w;
            dst[out_base + w] = q4k_byte(t, blocks) | (q4k_byte(t + 1u, blocks) << 8u)
                | (q4k_byte(t + 2u, blocks) << 16u) | (q4k_byte(t + 3u, blocks) << 24u);
        }
    }
}

@compute @workgroup_size(64)
fn quantize_q4_k(
    @builtin(workgroup_id) wid: vec3<u32>,
    @builtin(num_workgroups) nwg: vec3<u32>,
    @builtin(local_invocation_index) lid: u32,
) {
    q4k_tile(wid, nwg, lid, false);
}

@compute @workgroup_size(64)
fn quantize_q4_k_soft(
    @builtin(workgroup_id) wid: vec3<u32>,
    @builtin(num_workgroups) nwg: vec3<u32>,
    @builtin(local_invocation_index) lid: u32,
) {
    q4k_tile(wid, nwg, lid, true);
}

// ------------------------------------------------------------------ Q6_K


// A workgroup quantizes a tile of Q6K_TILE blocks (840 bytes of output:
// whole words), one invocation per 16-value sub-block: coalesced loads
// into workgroup memory, each invocation's make_qx_quants search, then
// (after a barrier) the block's scale step and the invocation's 16 final
// levels, and coalesced stores of the staged bytes.
const Q6K_TILE: u32 = 4u;
// Words per staged sub-block (17: the 64 invocations' rows fall in
// different banks).
const Q6K_ROW: u32 = 17u;

var<workgroup> q6_in: array<u32, 1088>;
// Levels 0..63 of value e of the tile's block b at b * 256 + e.
var<workgroup> q6_lv: array<u32, 1024>;
// make_qx_quants' scale per sub-block, then the stored 8-bit scale.
var<workgroup> q6_sc: array<u32, 64>;
var<workgroup> q6_scb: array<u32, 64>;
var<workgroup> q6_dh: array<u32, 4>;

// Value i of the tile's sub-block s.
fn q6x(s: u32, i: u32) -> u32 {
    return q6_in[s * Q6K_ROW + i];
}

// A product or sum on the float unit, fenced (see `fenced`).
fn ff(x: f32) -> f32 {
    return bitcast<f32>(fenced(x));
}

fn qx_level(iscale: u32, x: u32) -> i32 {
    return clamp(sf_nearest_int(sf_mul_fast(iscale, x)), -32, 31);
}

// make_qx_quants(32, x, L, rmse_type=1, qw=NULL) over sub-block s,
// through softfloat.wgsl: (scale, the iscale its levels came from); the
// levels are all zero (stored 0, not 32) when amax < GROUP_MAX_EPS.
// Loops that start at `params.zero` have a trip count the compiler cannot
// know, so it does not unroll them, which keeps the soft code (and the
// fast search's candidate loop) to one copy. That alone did not change
// the rate on the H100 (30 -> 31 GB/s with the soft search still in the
// fast kernel); moving the soft search to its own entry point did (below).
fn q6_search_soft(s: u32, vmax: u32) -> vec2<u32> {
    var iscale = sf_div_fast(0xc2000000u, vmax);
    var sumlx = 0u;
    var suml2 = 0u;
    for (var i = params.zero; i < 16u; i = i + 1u) {
        let x = q6x(s, i);
        let lf = sf_from_i32(qx_level(iscale, x));
        let w = sf_mul_fast(x, x);
        sumlx = sf_add(sumlx, sf_mul_fast(sf_mul_fast(w, x), lf));
        suml2 = sf_add(suml2, sf_mul_fast(sf_mul_fast(w, lf), lf));
    }
    var scale = 0u;
    if (!sf_eq(suml2, 0u)) {
        scale = sf_div_fast(sumlx, suml2);
    }
    var best = sf_mul_fast(scale, sumlx);
    var l_iscale = iscale;
    for (var istep = -9 + i32(params.zero); istep <= 9; istep = istep + 1) {
        if (istep == 0) {
            continue;
        }
        iscale = sf_div_fast(sf_neg(sf_add(F_32, sf_mul_fast(F_0_1, sf_from_i32(istep)))), vmax);
        sumlx = 0u;
        suml2 = 0u;
        for (var i = params.zero; i < 16u; i = i + 1u) {
            let x = q6x(s, i);
            let lf = sf_from_i32(qx_level(iscale, x));
            let w = sf_mul_fast(x, x);
            sumlx = sf_add(sumlx, sf_mul_fast(sf_mul_fast(w, x), lf));
            suml2 = sf_add(suml2, sf_mul_fast(sf_mul_fast(w, lf), lf));
        }
        if (sf_gt(suml2, 0u) && sf_gt(sf_mul_fast(sumlx, sumlx), sf_mul_fast(best, suml2))) {
            l_iscale = iscale;
            scale = sf_div_fast(sumlx, suml2);
            best = sf_mul_fast(scale, sumlx);
        }
    }
    return vec2<u32>(scale, l_iscale);
}

// The Q6_K search's fast case. In make_qx_quants(nmax=32, rmse_type=1)
// every candidate iscale is -(32 + 0.1*is)/max with |.| in [31.1, 32.9]
// over M = |max| = amax, so each p = iscale*x has |p| <= 32.9 (1 + 2^-22),
// and l = nearest_int(p) (p + 1.5*2^23 on the float unit, as the
// reference computes it: round half to even there; a subnormal or flushed
// p gives 0 either way) is nonzero only where |x| >= M/66, with the sign
// of -max: the
// terms w*x*l of sumlx all have one sign, the max value's term (|l| >= 31)
// is in it, and suml2 >= 961 M^2 > 0. When M is in [2^-20, 2^16]:
// - every x with l != 0 has |x| >= 2^-27, so x*x, (x*x)*x, those times l,
//   (w*l)*l, the sums (same-sign terms), sumlx*sumlx (<= 2^114),
//   scale = sumlx/suml2 (>= 2^-9 M), best = scale*sumlx and best*suml2
//   (between 2^-115 and 2^118) are normal: the float unit rounds each
//   correctly (WGSL, Vulkan, Metal, D3D), and `ff` keeps products from
//   being contracted into the sums;
// - an x with l = 0 (a subnormal one, which a GPU may flush, included)
//   has |p| < 0.5 or p = +-0.5 exactly: if p is normal it is correctly
//   rounded, if p is subnormal or flushed the level is 0 either way; its
//   terms (w*x)*0 and (w*0)*0 are zeros whether w is flushed or not, and
//   adding a zero leaves a sum as it is (no sum is subnormal: its terms
//   are multiples of 2^-113 at least);
// - the candidates' 0.1*is and 32 + 0.1*is are normal, and their
//   divisions by max, and sumlx/suml2, go through sf_div_fast (exact).
// So such sub-blocks get the reference's bits from the float unit; the
// others (tiny, huge or non-finite amax) take q6_search_soft.
const Q6K_FAST_MIN: u32 = 0x35800000u; // 2^-20
const Q6K_FAST_MAX: u32 = 0x47800000u; // 2^16

var<private> q6_fx: array<f32, 16>;
var<private> q6_fw: array<f32, 16>;
var<private> q6_fwx: array<f32, 16>;

// nearest_int(p) clamped to [-32, 31], for |p| < 2^22: ggml's
// p + 1.5*2^23 on the float unit (p comes fenced, so the addition is not
// fused with the product before it).
fn q6_nearest_fast(p: f32) -> i32 {
    let v = bitcast<u32>(p + 12582912.0);
    return clamp(i32(v & 0x007fffffu) - 0x00400000, -32, 31);
}

// (sumlx, suml2) of one candidate on the float unit.
fn q6_sums_fast(iscale: f32) -> vec2<f32> {
    var sumlx = 0.0;
    var suml2 = 0.0;
    for (var i = 0u; i < 16u; i = i + 1u) {
        let lf = f32(q6_nearest_fast(ff(iscale * q6_fx[i])));
        sumlx = ff(sumlx + ff(q6_fwx[i] * lf));
        suml2 = ff(suml2 + ff(ff(q6_fw[i] * lf) * lf));
    }
    return vec2<f32>(sumlx, suml2);
}

fn q6_search_fast(s: u32, vmax: u32) -> vec2<u32> {
    for (var i = 0u; i < 16u; i = i + 1u) {
        let x = bitcast<f32>(q6x(s, i));
        q6_fx[i] = x;
        let w = ff(x * x);
        q6_fw[i] = w;
        q6_fwx[i] = ff(w * x);
    }
    var l_iscale = sf_div_fast(0xc2000000u, vmax);
    var sums = q6_sums_fast(bitcast<f32>(l_iscale));
    var scale = sf_div_fast(bitcast<u32>(sums.x), bitcast<u32>(sums.y));
    var best = ff(bitcast<f32>(scale) * sums.x);
    for (var k = params.zero; k < 18u; k = k + 1u) {
        // is = -9..-1, 1..9
        let istep = i32(k) - select(8, 9, k < 9u);
        let num = -ff(32.0 + ff(0.1 * f32(istep)));
        let iscale = sf_div_fast(bitcast<u32>(num), vmax);
        sums = q6_sums_fast(bitcast<f32>(iscale));
        if (ff(sums.x * sums.x) > ff(best * sums.y)) {
            l_iscale = iscale;
            scale = sf_div_fast(bitcast<u32>(sums.x), bitcast<u32>(sums.y));
            best = ff(bitcast<f32>(scale) * sums.x);
        }
    }
    return vec2<u32>(scale, l_iscale);
}

// The final levels nearest_int(x / d) clamped to [-32, 31] of sub-block
// s into q6_lv[lv..lv+16], for d != 0 (finite x: the host refuses the
// others, and any bytes do then). The quotient is estimated as x * (1/d)
// with the reciprocal correctly rounded (sf_div_fast): d = d_all * s with
// d_all a nonzero f16 and 1 <= |s| <= 128, so |d| is in [2^-24, 2^24] and
// 1/d is normal; below 512 the estimate y is within 2^-13 of the exact
// quotient (two roundings of 2^-24 relative each), so it decides the
// rounding when it lies more than 2^-10 from a half-integer (a subnormal
// x, flushed or not, gives an estimate near 0, far from one). floor(y +
// 0.5) is y's nearest integer unless y lies within 2^-14 of a
// half-integer (the addition's rounding), and those fail the test. The
// others take the exact division, one per pass of a loop the compiler
// does not unroll.
fn q6_final_levels(s: u32, lv: u32, d: u32) {
    let r = bitcast<f32>(sf_div_fast(F_ONE, d));
    var exact = 0u;
    for (var i = 0u; i < 16u; i = i + 1u) {
        let y = ff(bitcast<f32>(q6x(s, i)) * r);
        let t = floor(y + 0.5);
        if (abs(y - t) < 0.4990234375 && abs(y) < 512.0) {
            q6_lv[lv + i] = u32(i32(clamp(t, -32.0, 31.0)) + 32);
        } else {
            exact = exact | (1u << i);
        }
    }
    while (exact != 0u) {
        let i = firstTrailingBit(exact);
        exact = exact & (exact - 1u);
        q6_lv[lv + i] = u32(clamp(sf_nearest_int(sf_div_fast(q6x(s, i), d)), -32, 31) + 32);
    }
}

// Byte t of the tile's staged output (block t / 210; absent blocks read
// as zero).
fn q6_byte(t: u32, blocks: u32) -> u32 {
    let b = t / 210u;
    let r = t - b * 210u;
    if (b >= blocks) {
        return 0u;
    }
    let lv = b * 256u;
    if (r < 128u) {
        // ql: per half of the block, the low nibbles of l1/l3 then l2/l4.
        let j = lv + (r / 64u) * 128u + (r & 63u);
        return (q6_lv[j] & 0xfu) | ((q6_lv[j + 64u] & 0xfu) << 4u);
    }
    if (r < 192u) {
        // qh: the high two bits of the four.
        let k = r - 128u;
        let j = lv + (k / 32u) * 128u + (k & 31u);
        return (q6_lv[j] >> 4u) | ((q6_lv[j + 32u] >> 4u) << 2u)
            | ((q6_lv[j + 64u] >> 4u) << 4u) | ((q6_lv[j + 96u] >> 4u) << 6u);
    }
    if (r < 208u) {
        return q6_scb[b * 16u + r - 192u];
    }
    return (q6_dh[b] >> ((r - 208u) * 8u)) & 0xffu;
}

// Whether some sub-block of the tile needs q6_search_soft.
var<workgroup> q6_any_soft: u32;

// Two entry points share the tile body, each taking the tiles the other
// leaves: quantize_q6_k those whose sub-blocks all run on the float unit
// (or are all-zero), quantize_q6_k_soft those with a sub-block outside the
// fast range, dispatched after it in the same pass. The soft search in
// the same kernel as the fast one cost the fast tiles two thirds of their
// speed on the H100 (30 against 90 GB/s: the soft code's registers and
// size), though no fast tile ever ran it.
fn q6k_tile(wid: vec3<u32>, nwg: vec3<u32>, lid: u32, soft_tiles: bool) {
    let first = (wid.x + wid.y * nwg.x) * Q6K_TILE;
    if (first >= params.n_units) {
        return;
    }
    let blocks = min(Q6K_TILE, params.n_units - first);
    if (lid == 0u) {
        q6_any_soft = 0u;
    }
    // Coalesced loads, eight in flight at a time (as tile_load).
    let words = blocks * 256u;
    let base = first * 256u;
    var bad = 0xffffffffu;
    for (var i0 = 0u; i0 < 16u; i0 = i0 + 8u) {
        var v: array<u32, 8>;
        for (var i = 0u; i < 8u; i = i + 1u) {
            let w = lid + (i0 + i) * 64u;
            v[i] = select(0u, src[min(base + w, arrayLength(&src) - 1u)], w < words);
        }
        for (var i = 0u; i < 8u; i = i + 1u) {
            let w = lid + (i0 + i) * 64u;
            if (w < words) {
                bad = first_non_finite(bad, base + w, v[i]);
            }
            q6_in[w + w / 16u] = v[i];
        }
    }
    if (!soft_tiles) {
        note_first_non_finite(bad);
    }
    workgroupBarrier();

    // The sub-block's search: amax (the first largest magnitude; an
    // integer maximum of finite magnitudes' bits) and its signed value.
    let s = lid;
    var vmax = 0u;
    var amax = 0u;
    for (var i = 0u; i < 16u; i = i + 1u) {
        let v = q6x(s, i);
        if ((v & 0x7fffffffu) > amax) {
            amax = v & 0x7fffffffu;
            vmax = v;
        }
    }
    let zero = sf_lt(amax, GROUP_MAX_EPS) || s >= blocks * 16u;
    let fast = amax >= Q6K_FAST_MIN && amax <= Q6K_FAST_MAX;
    if (!zero && !fast) {
        // The same value from every writer.
        q6_any_soft = 1u;
    }
    if ((workgroupUniformLoad(&q6_any_soft) != 0u) != soft_tiles) {
        return;
    }
    var r = vec2<u32>(0u, 0u);
    if (!zero) {
        if (fast) {
            r = q6_search_fast(s, vmax);
        } else if (soft_tiles) {
            r = q6_search_soft(s, vmax);
        }
    }
    q6_sc[s] = r.x;
    workgroupBarrier();

    // The block's scale step (every invocation of the block computes it).
    let b = s / 16u;
    var max_scale = 0u;
    var max_abs_scale = 0u;
    for (var ib = 0u; ib < 16u; ib = ib + 1u) {
        // A float comparison: a scale can be NaN (x*x overflowing in a
        // soft sub-block), and then it is never the maximum.
        let sc = q6_sc[b * 16u + ib];
        if (sf_gt(sf_abs(sc), max_abs_scale)) {
            max_abs_scale = sf_abs(sc);
            max_scale = sc;
        }
    }
    let lv = b * 256u + (s & 15u) * 16u;
    if (sf_lt(max_abs_scale, GROUP_MAX_EPS)) {
        // The whole block is zero bytes.
        for (var i = 0u; i < 16u; i = i + 1u) {
            q6_lv[lv + i] = 0u;
        }
        q6_scb[s] = 0u;
        if ((s & 15u) == 0u) {
            q6_dh[b] = 0u;
        }
    } else {
        let iscale = sf_div_fast(F_NEG_128, max_scale);
        let dh = sf_to_f16(sf_div_fast(F_ONE, iscale));
        let scb = u32(min(sf_nearest_int(sf_mul_fast(iscale, r.x)), 127)) & 0xffu;
        q6_scb[s] = scb;
        if ((s & 15u) == 0u) {
            q6_dh[b] = dh;
        }
        let d = sf_mul_fast(sf_from_f16(dh), sf_from_i32((i32(scb) << 24u) >> 24u));
        if ((d & 0x7fffffffu) != 0u) {
            q6_final_levels(s, lv, d);
        } else if (zero) {
            for (var i = 0u; i < 16u; i = i + 1u) {
                q6_lv[lv + i] = 0u;
            }
        } else if (fast) {
            // make_qx_quants' own levels, as its search computed them.
            let li = bitcast<f32>(r.y);
            for (var i = 0u; i < 16u; i = i + 1u) {
                let l = q6_nearest_fast(ff(li * bitcast<f32>(q6x(s, i))));
                q6_lv[lv + i] = u32(l + 32);
            }
        } else {
            for (var i = params.zero; i < 16u; i = i + 1u) {
                q6_lv[lv + i] = u32(qx_level(r.y, q6x(s, i)) + 32);
            }
        }
    }
    workgroupBarrier();

    // 210 bytes per block: Q6K_TILE blocks are 210 whole words. (Q4_K's
    // tile ends with the same loop: one function for both measured slower
    // on the H100, BENCH-gpu.md.)
    let out_words = (blocks * 210u + 3u) / 4u;
    let out_base = first / Q6K_TILE * 210u;
    for (var i = 0u; i < 4u; i = i + 1u) {
        let w = lid + i * 64u;
        if (w < out_words) {
            let t = 4u * w;
            dst[out_base + w] = q6_byte(t, blocks) | (q6_byte(t + 1u, blocks) << 8u)
                | (q6_byte(t + 2u, blocks) << 16u) | (q6_byte(t + 3u, blocks) << 24u);
        }
    }
}

@compute @workgroup_size(64)
fn quantize_q6_k(
    @builtin(workgroup_id) wid: vec3<u32>,
    @builtin(num_workgroups) nwg: vec3<u32>,
    @builtin(local_invocation_index) lid: u32,
) {
    q6k_tile(wid, nwg, lid, false);
}

@compute @workgroup_size(64)
fn quantize_q6_k_soft(
    @builtin(workgroup_id) wid: vec3<u32>,
    @builtin(num_workgroups) nwg: vec3<u32>,
    @builtin(local_invocation_index) lid: u32,
) {
    q6k_tile(wid, nwg, lid, true);
}
