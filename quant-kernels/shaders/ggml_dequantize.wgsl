// GGML dequantizers: each invocation writes 4 consecutive f32 outputs
// (`params.n_units` groups of 4), reading the block bytes by offset.
//
// These use the GPU's float multiply and add, and are still bit-identical
// to ggml's `to_float` (src/ggml/reference): f16 scales are decoded with
// integer code, and every product below is exact in f32 (an f16 scale has
// 11 significant bits, a 6-bit sub-scale 6, a level 4 to 8), so the result
// is one correctly rounded operation whether or not the compiler fuses or
// reorders it, and it is never subnormal (the smallest nonzero f16 is
// 2^-24). Only Q6_K's `d*sc*q` (up to 25 bits) rounds, once, in a plain
// multiply. NaN results (from NaN or infinite stored scales) stay NaN, with
// an unspecified payload.

fn f16_at(byte: u32) -> f32 {
    return bitcast<f32>(sf_from_f16(src_u16(byte)));
}

fn put4(unit: u32, v: vec4<f32>) {
    let o = unit * 4u;
    dst[o] = bitcast<u32>(v.x);
    dst[o + 1u] = bitcast<u32>(v.y);
    dst[o + 2u] = bitcast<u32>(v.z);
    dst[o + 3u] = bitcast<u32>(v.w);
}

fn i8_of(b: u32) -> f32 {
    return f32((i32(b) << 24u) >> 24u);
}

@compute @workgroup_size(64)
fn dequantize_q8_0(
    @builtin(workgroup_id) wid: vec3<u32>,
    @builtin(num_workgroups) nwg: vec3<u32>,
    @builtin(local_invocation_index) lid: u32,
) {
    let u = invocation_index(wid, nwg, lid);
    if (u >= params.n_units) {
        return;
    }
    let e = u * 4u;
    let blk = e / 32u;
    let j = e % 32u;
    let d = f16_at(blk * 34u);
    let q = src_u32(blk * 34u + 2u + j);
    put4(u, vec4<f32>(
        i8_of(q & 0xffu) * d,
        i8_of((q >> 8u) & 0xffu) * d,
        i8_of((q >> 16u) & 0xffu) * d,
        i8_of(q >> 24u) * d,
    ));
}

@compute @workgroup_size(64)
fn dequantize_q4_0(
    @builtin(workgroup_id) wid: vec3<u32>,
    @builtin(num_workgroups) nwg: vec3<u32>,
    @builtin(local_invocation_index) lid: u32,
) {
    let u = invocation_index(wid, nwg, lid);
    if (u >= params.n_units) {
        return;
    }
    let e = u * 4u;
    let blk = e / 32u;
    let j = e % 32u;
    let d = f16_at(blk * 18u);
    var q = src_u32(blk * 18u + 2u + (j % 16u));
    if (j >= 16u) {
        q = q >> 4u;
    }
    put4(u, vec4<f32>(
        f32(i32(q & 0xfu) - 8) * d,
        f32(i32((q >> 8u) & 0xfu) - 8) * d,
        f32(i32((q >> 16u) & 0xfu) - 8) * d,
        f32(i32((q >> 24u) & 0xfu) - 8) * d,
    ));
}

@compute @workgroup_size(64)
fn dequantize_q4_1(
    @builtin(workgroup_id) wid: vec3<u32>,
    @builtin(num_workgroups) nwg: vec3<u32>,
    @builtin(local_invocation_index) lid: u32,
) {
    let u = invocation_index(wid, nwg, lid);
    if (u >= params.n_units) {
        return;
    }
    let e = u * 4u;
    let blk = e / 32u;
    let j = e % 32u;
    let d = f16_at(blk * 20u);
    let m = f16_at(blk * 20u + 2u);
    var q = src[blk * 5u + 1u + (j % 16u) / 4u];
    if (j >= 16u) {
        q = q >> 4u;
    }
    put4(u, vec4<f32>(
        f32(q & 0xfu) * d + m,
        f32((q >> 8u) & 0xfu) * d + m,
        f32((q >> 16u) & 0xfu) * d + m,
        f32((q >> 24u) & 0xfu) * d + m,
    ));
}

@compute @workgroup_size(64)
fn dequantize_q4_k(
    @builtin(workgroup_id) wid: vec3<u32>,
    @builtin(num_workgroups) nwg: vec3<u32>,
    @builtin(local_invocation_index) lid: u32,
) {
    let u = invocation_index(wid, nwg, lid);
    if (u >= params.n_units) {
        return;
    }
    let e = u * 4u;
    let blk = e / 256u;
    let r = e % 256u;
    let c = r / 64u;
    let sub = 2u * c + (r % 64u) / 32u;
    let k = r % 32u;
    let w0 = blk * 36u;
    let d = f16_at(blk * 144u);
    let dmin = f16_at(blk * 144u + 2u);
    // get_scale_min_k4 over the 12 bytes at byte 4.
    let sc = blk * 144u + 4u;
    var s: u32;
    var m: u32;
    if (sub < 4u) {
        s = src_byte(sc + sub) & 63u;
        m = src_byte(sc + sub + 4u) & 63u;
    } else {
        s = (src_byte(sc + sub + 4u) & 0xfu) | ((src_byte(sc + sub - 4u) >> 6u) << 4u);
        m = (src_byte(sc + sub + 4u) >> 4u) | ((src_byte(sc + sub) >> 6u) << 4u);
    }
    let d1 = d * f32(s);
    let m1 = dmin * f32(m);
    var q = src[w0 + 4u + 8u * c + k / 4u];
    if (((r % 64u) / 32u) == 1u) {
        q = q >> 4u;
    }
    put4(u, vec4<f32>(
        d1 * f32(q & 0xfu) - m1,
        d1 * f32((q >> 8u) & 0xfu) - m1,
        d1 * f32((q >> 16u) & 0xfu) - m1,
        d1 * f32((q >> 24u) & 0xfu) - m1,
    ));
}

@compute @workgroup_size(64)
fn dequantize_q6_k(
    @builtin(workgroup_id) wid: vec3<u32>,
    @builtin(num_workgroups) nwg: vec3<u32>,
    @builtin(local_invocation_index) lid: u32,
) {
    let u = invocation_index(wid, nwg, lid);
    if (u >= params.n_units) {
        return;
    }
    let e = u * 4u;
    let blk = e / 256u;
    let r = e % 256u;
    let half = r / 128u;
    let quarter = (r % 128u) / 32u;
    let l = r % 32u;
    let b0 = blk * 210u;
    let d = f16_at(b0 + 208u);
    let sc = i8_of(src_byte(b0 + 192u + 8u * half + l / 16u + 2u * quarter));
    var ql = src_u32(b0 + 64u * half + l + 32u * (quarter % 2u));
    if (quarter >= 2u) {
        ql = ql >> 4u;
    }
    let qh = src_u32(b0 + 128u + 32u * half + l) >> (2u * quarter);
    let ds = d * sc;
    var out: vec4<f32>;
    for (var i = 0u; i < 4u; i = i + 1u) {
        let q = i32(((ql >> (8u * i)) & 0xfu) | (((qh >> (8u * i)) & 3u) << 4u)) - 32;
        out[i] = ds * f32(q);
    }
    put4(u, out);
}
