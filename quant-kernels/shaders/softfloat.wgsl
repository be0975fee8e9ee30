// Integer-exact IEEE-754 binary32 arithmetic on bit patterns (u32).
//
// Why: the quantizers must give the CPU reference's bytes on every GPU.
// WGSL leaves the rounding of `/`, `sqrt`, `round()` and pack2x16float
// open, GPUs flush subnormals, Vulkan drivers contract `a*b + c` into one
// fused operation and Metal compiles with fast-math (reassociation,
// reciprocal division). None of that can reach integer code, so every
// float operation a quantizer performs goes through these functions, which
// round to nearest even with subnormals, infinities and NaN as IEEE
// specifies (a port of Berkeley SoftFloat 3's f32 routines, round-near-even
// only). Values are passed as their bit patterns. NaN results follow x86
// SSE, where the references run: an invalid operation gives the default
// NaN 0xffc00000, a NaN operand comes back quieted (the first one if both
// are NaN), so that even NaN bits agree with the CPU.

const SF_SIGN: u32 = 0x80000000u;
const SF_INF: u32 = 0x7f800000u;
const SF_QNAN: u32 = 0xffc00000u;

fn sf_is_nan(a: u32) -> bool {
    return (a & 0x7fffffffu) > SF_INF;
}

// softfloat_propagateNaNF32UI, 8086-SSE flavour.
fn sf_propagate_nan(a: u32, b: u32) -> u32 {
    if (sf_is_nan(a)) {
        return a | 0x00400000u;
    }
    return b | 0x00400000u;
}

fn sf_abs(a: u32) -> u32 {
    return a & 0x7fffffffu;
}

fn sf_neg(a: u32) -> u32 {
    return a ^ SF_SIGN;
}

// Shifts right, ORing every bit shifted out into bit 0 (softfloat's
// shiftRightJam32; WGSL shifts take their amount modulo 32, so large
// distances are handled apart).
fn sf_shr_jam(a: u32, dist: u32) -> u32 {
    if (dist == 0u) {
        return a;
    }
    if (dist < 32u) {
        return (a >> dist) | select(0u, 1u, (a << (32u - dist)) != 0u);
    }
    return select(0u, 1u, a != 0u);
}

// softfloat_roundPackToF32: `sig` holds the significand with its leading
// bit at bit 30 (or below, for results that end subnormal) and 7 rounding
// bits; the value is sig * 2^(exp - 156).
fn sf_round_pack(sign: u32, exp_in: i32, sig_in: u32) -> u32 {
    var exp = exp_in;
    var sig = sig_in;
    var round_bits = sig & 0x7fu;
    if (exp < 0 || exp >= 0xfd) {
        if (exp < 0) {
            sig = sf_shr_jam(sig, u32(-exp));
            exp = 0;
            round_bits = sig & 0x7fu;
        } else if (exp > 0xfd || sig + 0x40u >= 0x80000000u) {
            return sign | SF_INF;
        }
    }
    sig = (sig + 0x40u) >> 7u;
    if (round_bits == 0x40u) {
        sig = sig & ~1u;
    }
    if (sig == 0u) {
        exp = 0;
    }
    return sign + (u32(exp) << 23u) + sig;
}

// softfloat_normRoundPackToF32.
fn sf_norm_round_pack(sign: u32, exp: i32, sig: u32) -> u32 {
    let shift = i32(countLeadingZeros(sig)) - 1;
    let e = exp - shift;
    if (shift >= 7 && e >= 0 && e < 0xfd) {
        let packed_exp = select(0, e, sig != 0u);
        return sign + (u32(packed_exp) << 23u) + (sig << u32(shift - 7));
    }
    return sf_round_pack(sign, e, sig << u32(shift));
}

fn sf_add_mags(a: u32, b: u32) -> u32 {
    let exp_a = i32((a >> 23u) & 0xffu);
    var sig_a = a & 0x7fffffu;
    let exp_b = i32((b >> 23u) & 0xffu);
    var sig_b = b & 0x7fffffu;
    let exp_diff = exp_a - exp_b;
    let sign = a & SF_SIGN;
    var exp_z: i32;
    var sig_z: u32;
    if (exp_diff == 0) {
        if (exp_a == 0) {
            return a + sig_b;
        }
        if (exp_a == 0xff) {
            if ((sig_a | sig_b) != 0u) {
                return sf_propagate_nan(a, b);
            }
            return a;
        }
        exp_z = exp_a;
        sig_z = 0x01000000u + sig_a + sig_b;
        if ((sig_z & 1u) == 0u && exp_z < 0xfe) {
            return sign + (u32(exp_z) << 23u) + (sig_z >> 1u);
        }
        sig_z = sig_z << 6u;
    } else {
        sig_a = sig_a << 6u;
        sig_b = sig_b << 6u;
        if (exp_diff < 0) {
            if (exp_b == 0xff) {
                if (sig_b != 0u) {
                    return sf_propagate_nan(a, b);
                }
                return sign | SF_INF;
            }
            exp_z = exp_b;
            sig_a = sig_a + select(sig_a, 0x20000000u, exp_a != 0);
            sig_a = sf_shr_jam(sig_a, u32(-exp_diff));
        } else {
            if (exp_a == 0xff) {
                if (sig_a != 0u) {
                    return sf_propagate_nan(a, b);
                }
                return a;
            }
            exp_z = exp_a;
            sig_b = sig_b + select(sig_b, 0x20000000u, exp_b != 0);
            sig_b = sf_shr_jam(sig_b, u32(exp_diff));
        }
        sig_z = 0x20000000u + sig_a + sig_b;
        if (sig_z < 0x40000000u) {
            exp_z = exp_z - 1;
            sig_z = sig_z << 1u;
        }
    }
    return sf_round_pack(sign, exp_z, sig_z);
}

fn sf_sub_mags(a: u32, b: u32) -> u32 {
    var exp_a = i32((a >> 23u) & 0xffu);
    var sig_a = a & 0x7fffffu;
    let exp_b = i32((b >> 23u) & 0xffu);
    var sig_b = b & 0x7fffffu;
    var exp_diff = exp_a - exp_b;
    var sign = a & SF_SIGN;
    if (exp_diff == 0) {
        if (exp_a == 0xff) {
            if ((sig_a | sig_b) != 0u) {
                return sf_propagate_nan(a, b);
            }
            return SF_QNAN;
        }
        var sig_diff = i32(sig_a) - i32(sig_b);
        if (sig_diff == 0) {
            return 0u;
        }
        if (exp_a != 0) {
            exp_a = exp_a - 1;
        }
        if (sig_diff < 0) {
            sign = sign ^ SF_SIGN;
            sig_diff = -sig_diff;
        }
        var shift = i32(countLeadingZeros(u32(sig_diff))) - 8;
        var exp_z = exp_a - shift;
        if (exp_z < 0) {
            shift = exp_a;
            exp_z = 0;
        }
        return sign + (u32(exp_z) << 23u) + (u32(sig_diff) << u32(shift));
    }
    sig_a = sig_a << 7u;
    sig_b = sig_b << 7u;
    var exp_z: i32;
    var sig_x: u32;
    var sig_y: u32;
    if (exp_diff < 0) {
        sign = sign ^ SF_SIGN;
        if (exp_b == 0xff) {
            if (sig_b != 0u) {
                return sf_propagate_nan(a, b);
            }
            return sign | SF_INF;
        }
        exp_z = exp_b - 1;
        sig_x = sig_b | 0x40000000u;
        sig_y = sig_a + select(sig_a, 0x40000000u, exp_a != 0);
        exp_diff = -exp_diff;
    } else {
        if (exp_a == 0xff) {
            if (sig_a != 0u) {
                return sf_propagate_nan(a, b);
            }
            return a;
        }
        exp_z = exp_a - 1;
        sig_x = sig_a | 0x40000000u;
        sig_y = sig_b + select(sig_b, 0x40000000u, exp_b != 0);
    }
    return sf_norm_round_pack(sign, exp_z, sig_x - sf_shr_jam(sig_y, u32(exp_diff)));
}

// a + b.
fn sf_add(a: u32, b: u32) -> u32 {
    if (((a ^ b) & SF_SIGN) == 0u) {
        return sf_add_mags(a, b);
    }
    return sf_sub_mags(a, b);
}

// a - b.
fn sf_sub(a: u32, b: u32) -> u32 {
    if (sf_is_nan(a) || sf_is_nan(b)) {
        return sf_propagate_nan(a, b);
    }
    return sf_add(a, b ^ SF_SIGN);
}

// (exponent, significand) of a nonzero subnormal's fraction bits, scaled
// so that the significand's leading bit is bit 23.
fn sf_norm_subnormal(sig: u32) -> vec2<u32> {
    let shift = countLeadingZeros(sig) - 8u;
    return vec2<u32>(bitcast<u32>(1 - i32(shift)), sig << shift);
}

// a * b.
fn sf_mul(a: u32, b: u32) -> u32 {
    var exp_a = i32((a >> 23u) & 0xffu);
    var sig_a = a & 0x7fffffu;
    var exp_b = i32((b >> 23u) & 0xffu);
    var sig_b = b & 0x7fffffu;
    let sign = (a ^ b) & SF_SIGN;
    if (exp_a == 0xff) {
        if (sig_a != 0u || (exp_b == 0xff && sig_b != 0u)) {
            return sf_propagate_nan(a, b);
        }
        if ((u32(exp_b) | sig_b) == 0u) {
            return SF_QNAN;
        }
        return sign | SF_INF;
    }
    if (exp_b == 0xff) {
        if (sig_b != 0u) {
            return sf_propagate_nan(a, b);
        }
        if ((u32(exp_a) | sig_a) == 0u) {
            return SF_QNAN;
        }
        return sign | SF_INF;
    }
    if (exp_a == 0) {
        if (sig_a == 0u) {
            return sign;
        }
        let n = sf_norm_subnormal(sig_a);
        exp_a = bitcast<i32>(n.x);
        sig_a = n.y;
    }
    if (exp_b == 0) {
        if (sig_b == 0u) {
            return sign;
        }
        let n = sf_norm_subnormal(sig_b);
        exp_b = bitcast<i32>(n.x);
        sig_b = n.y;
    }
    var exp_z = exp_a + exp_b - 0x7f;
    // The 48-bit product of the two 24-bit significands from 12-bit halves.
    let ma = sig_a | 0x00800000u;
    let mb = sig_b | 0x00800000u;
    let ah = ma >> 12u;
    let al = ma & 0xfffu;
    let bh = mb >> 12u;
    let bl = mb & 0xfffu;
    let mid = ah * bl + al * bh;
    let low = al * bl + ((mid & 0xfffu) << 12u);
    let hi = ah * bh + (mid >> 12u) + (low >> 24u);
    let lo24 = low & 0xffffffu;
    // softfloat: (ma << 7) * (mb << 8) >> 32, jammed = the product >> 17.
    var sig_z = (hi << 7u) | (lo24 >> 17u) | select(0u, 1u, (lo24 & 0x1ffffu) != 0u);
    if (sig_z < 0x40000000u) {
        exp_z = exp_z - 1;
        sig_z = sig_z << 1u;
    }
    return sf_round_pack(sign, exp_z, sig_z);
}

// a * b through the float unit where that is provably the same: both
// operands normal and the product neither subnormal nor overflowing.
// WGSL, Vulkan, Metal and D3D all require a correctly rounded f32
// multiply (they may flush subnormals, which this range excludes), and
// the product is only ever read back as bits, so no compiler can fuse it
// into a later addition. Everything else goes through sf_mul.
fn sf_mul_fast(a: u32, b: u32) -> u32 {
    let ea = (a >> 23u) & 0xffu;
    let eb = (b >> 23u) & 0xffu;
    let e = ea + eb;
    if (ea != 0u && eb != 0u && ea != 0xffu && eb != 0xffu && e >= 129u && e <= 379u) {
        return bitcast<u32>(bitcast<f32>(a) * bitcast<f32>(b));
    }
    return sf_mul(a, b);
}

// a / b. The 31-bit quotient of the significands comes from exact integer
// long division, eight bits at a time (remainders stay below 2^24, so each
// step fits a u32).
fn sf_div(a: u32, b: u32) -> u32 {
    var exp_a = i32((a >> 23u) & 0xffu);
    var sig_a = a & 0x7fffffu;
    var exp_b = i32((b >> 23u) & 0xffu);
    var sig_b = b & 0x7fffffu;
    let sign = (a ^ b) & SF_SIGN;
    if (exp_a == 0xff) {
        if (sig_a != 0u) {
            return sf_propagate_nan(a, b);
        }
        if (exp_b == 0xff) {
            if (sig_b != 0u) {
                return sf_propagate_nan(a, b);
            }
            return SF_QNAN;
        }
        return sign | SF_INF;
    }
    if (exp_b == 0xff) {
        if (sig_b != 0u) {
            return sf_propagate_nan(a, b);
        }
        return sign;
    }
    if (exp_b == 0) {
        if (sig_b == 0u) {
            if ((u32(exp_a) | sig_a) == 0u) {
                return SF_QNAN;
            }
            return sign | SF_INF;
        }
        let n = sf_norm_subnormal(sig_b);
        exp_b = bitcast<i32>(n.x);
        sig_b = n.y;
    }
    if (exp_a == 0) {
        if (sig_a == 0u) {
            return sign;
        }
        let n = sf_norm_subnormal(sig_a);
        exp_a = bitcast<i32>(n.x);
        sig_a = n.y;
    }
    var exp_z = exp_a - exp_b + 0x7e;
    sig_a = sig_a | 0x00800000u;
    sig_b = sig_b | 0x00800000u;
    // Quotient bits of (sig_a << shift) / sig_b, shift 30 or 31.
    var bits: u32 = 30u;
    if (sig_a < sig_b) {
        exp_z = exp_z - 1;
        bits = 31u;
    }
    var q: u32 = sig_a / sig_b;
    var r: u32 = sig_a - q * sig_b;
    loop {
        if (bits == 0u) {
            break;
        }
        let step = min(bits, 8u);
        r = r << step;
        let d = r / sig_b;
        r = r - d * sig_b;
        q = (q << step) | d;
        bits = bits - step;
    }
    return sf_round_pack(sign, exp_z, q | select(0u, 1u, r != 0u));
}

// a / b: a quotient estimated with float multiplies and adds (a
// Newton-Raphson reciprocal of the significands, which lie in [1, 2), so
// no subnormal or special value can reach the float unit), then proven
// correctly rounded, or corrected, with exact integer arithmetic: for the
// candidate significand q of the quotient of significands A/B scaled by
// 2^k, D = 2*A*2^k - 2*q*B is computed modulo 2^32 (exact, since the
// estimate is within a few ulps and so |D| < 2^31), and q is right when
// |D| < B, or |D| == B with q even (ties to even). The float unit's
// accuracy only decides how fast this converges, never the result.
// Operands or results near the subnormal or overflow range, and any
// estimate that does not converge in four steps, give SF_DIV_MISS (a NaN
// no correctly rounded quotient of these operands can be): sf_div_fast
// sends them to sf_div; a caller with a slower path of its own can take
// that instead, and keep the long division out of its loop.
const SF_DIV_MISS: u32 = 0xffffffffu;

fn sf_div_est(a: u32, b: u32) -> u32 {
    let ea = i32((a >> 23u) & 0xffu);
    let eb = i32((b >> 23u) & 0xffu);
    let de = ea - eb;
    if (ea == 0 || eb == 0 || ea == 0xff || eb == 0xff || de < -120 || de > 120) {
        return SF_DIV_MISS;
    }
    let sig_a = (a & 0x7fffffu) | 0x00800000u;
    let sig_b = (b & 0x7fffffu) | 0x00800000u;
    // Estimate A'/B' with A', B' in [1, 2).
    let fa = bitcast<f32>((a & 0x7fffffu) | 0x3f800000u);
    let fb = bitcast<f32>((b & 0x7fffffu) | 0x3f800000u);
    var r = bitcast<f32>(0x7ef311c3u - bitcast<u32>(fb));
    r = r * (2.0 - fb * r);
    r = r * (2.0 - fb * r);
    r = r * (2.0 - fb * r);
    let qf = bitcast<u32>(fa * r);
    let f = i32((qf >> 23u) & 0xffu);
    if (f != 126 && f != 127) {
        return SF_DIV_MISS;
    }
    var sig_q = (qf & 0x7fffffu) | 0x00800000u;
    let k = 150 - f;
    var d = bitcast<i32>((sig_a << u32(k + 1)) - 2u * sig_q * sig_b);
    let bi = i32(sig_b);
    for (var it = 0; it < 4; it = it + 1) {
        let odd = (sig_q & 1u) == 1u;
        if (d > bi || (d == bi && odd)) {
            sig_q = sig_q + 1u;
            d = d - 2 * bi;
        } else if (d < -bi || (d == -bi && odd)) {
            sig_q = sig_q - 1u;
            d = d + 2 * bi;
        } else {
            if (sig_q < 0x00800000u || sig_q >= 0x01000000u) {
                return SF_DIV_MISS;
            }
            let e = de + f;
            return ((a ^ b) & SF_SIGN) | (u32(e) << 23u) | (sig_q & 0x7fffffu);
        }
    }
    return SF_DIV_MISS;
}

fn sf_div_fast(a: u32, b: u32) -> u32 {
    let q = sf_div_est(a, b);
    if (q == SF_DIV_MISS) {
        return sf_div(a, b);
    }
    return q;
}

// sqrt(a), digit by digit on the integer significand (two radicand bits
// per step; remainders stay below 2^29).
fn sf_sqrt(a: u32) -> u32 {
    var exp_a = i32((a >> 23u) & 0xffu);
    var sig_a = a & 0x7fffffu;
    if (exp_a == 0xff) {
        if (sig_a != 0u) {
            return a | 0x00400000u;
        }
        if ((a & SF_SIGN) == 0u) {
            return a;
        }
        return SF_QNAN;
    }
    if ((a & SF_SIGN) != 0u) {
        if ((u32(exp_a) | sig_a) == 0u) {
            return a;
        }
        return SF_QNAN;
    }
    if (exp_a == 0) {
        if (sig_a == 0u) {
            return a;
        }
        let n = sf_norm_subnormal(sig_a);
        exp_a = bitcast<i32>(n.x);
        sig_a = n.y;
    }
    // a = m * 2^e with m the 24-bit integer significand; make e even.
    var m = sig_a | 0x00800000u;
    var e = exp_a - 150;
    if ((e & 1) != 0) {
        m = m << 1u;
        e = e - 1;
    }
    // q = floor(sqrt(m * 2^26)): 13 bit pairs of m (as a 26-bit number),
    // then 13 zero pairs.
    var q: u32 = 0u;
    var r: u32 = 0u;
    for (var i: i32 = 12; i >= -13; i = i - 1) {
        var pair: u32 = 0u;
        if (i >= 0) {
            pair = (m >> u32(2 * i)) & 3u;
        }
        r = (r << 2u) | pair;
        let t = (q << 2u) | 1u;
        if (r >= t) {
            r = r - t;
            q = (q << 1u) | 1u;
        } else {
            q = q << 1u;
        }
    }
    // sqrt(a) = q * 2^((e - 26) / 2), q in [2^24, 2^26).
    let half = (e - 26) / 2;
    var sig: u32;
    var scale: i32;
    if (q < 0x02000000u) {
        sig = q << 6u;
        scale = half - 6;
    } else {
        sig = q << 5u;
        scale = half - 5;
    }
    return sf_round_pack(0u, scale + 156, sig | select(0u, 1u, r != 0u));
}

// a < b as IEEE compares (false with NaN; -0 == +0).
fn sf_lt(a: u32, b: u32) -> bool {
    if (sf_is_nan(a) || sf_is_nan(b)) {
        return false;
    }
    if (((a | b) & 0x7fffffffu) == 0u) {
        return false;
    }
    let neg_a = (a & SF_SIGN) != 0u;
    let neg_b = (b & SF_SIGN) != 0u;
    if (neg_a != neg_b) {
        return neg_a;
    }
    if (neg_a) {
        return a > b;
    }
    return a < b;
}

fn sf_gt(a: u32, b: u32) -> bool {
    return sf_lt(b, a);
}

fn sf_eq(a: u32, b: u32) -> bool {
    if (sf_is_nan(a) || sf_is_nan(b)) {
        return false;
    }
    return a == b || ((a | b) & 0x7fffffffu) == 0u;
}

// An integer (|v| < 2^24 for exactness) as f32 bits.
fn sf_from_i32(v: i32) -> u32 {
    if (v == 0) {
        return 0u;
    }
    let sign = select(0u, SF_SIGN, v < 0);
    let mag = u32(abs(v));
    return sf_norm_round_pack(sign, 0x9c, mag);
}

// C's (int) cast as x86-64 executes it (cvttss2si): truncation, and
// i32::MIN for NaN and values outside the i32 range.
fn sf_cvtt(a: u32) -> i32 {
    let exp = i32((a >> 23u) & 0xffu);
    if (exp >= 158) {
        return i32(-2147483647 - 1);
    }
    if (exp < 127) {
        return 0;
    }
    let m = (a & 0x7fffffu) | 0x00800000u;
    let shift = exp - 150;
    var v: u32;
    if (shift >= 0) {
        v = m << u32(shift);
    } else {
        v = m >> u32(-shift);
    }
    if ((a & SF_SIGN) != 0u) {
        return -i32(v);
    }
    return i32(v);
}

// ggml's nearest_int: fval + 1.5*2^23, low mantissa bits (round half to
// even for |fval| < 2^22; the same garbage as C outside).
fn sf_nearest_int(a: u32) -> i32 {
    let v = sf_add(a, 0x4b400000u);
    return i32(v & 0x007fffffu) - 0x00400000;
}

// roundf (half away from zero), as f32 bits.
fn sf_round_away(a: u32) -> u32 {
    let exp = i32((a >> 23u) & 0xffu);
    if (exp >= 150) {
        return a;
    }
    if (exp < 126) {
        return a & SF_SIGN;
    }
    // 0.5 <= |a| < 2^23: add half an integer unit, then cut the fraction.
    let frac_bits = u32(150 - exp);
    let half_unit = 1u << (frac_bits - 1u);
    let mask = (1u << frac_bits) - 1u;
    let m = (a & 0x7fffffu) | 0x00800000u;
    let r = (m + half_unit) & ~mask;
    // r may carry into bit 24: renormalize through the packer.
    let sign = a & SF_SIGN;
    if (r >= 0x01000000u) {
        return sign + (u32(exp + 1) << 23u) + ((r >> 1u) & 0x7fffffu);
    }
    return sign + (u32(exp) << 23u) + (r & 0x7fffffu);
}

// rint (round half to even), as f32 bits.
fn sf_rint(a: u32) -> u32 {
    let exp = i32((a >> 23u) & 0xffu);
    if (exp >= 150) {
        return a;
    }
    let sign = a & SF_SIGN;
    if (exp < 126) {
        return sign;
    }
    let frac_bits = u32(150 - exp);
    let m = (a & 0x7fffffu) | 0x00800000u;
    let mask = (1u << frac_bits) - 1u;
    let half_unit = 1u << (frac_bits - 1u);
    let frac = m & mask;
    var r = m & ~mask;
    let unit = 1u << frac_bits;
    if (frac > half_unit || (frac == half_unit && (r & unit) != 0u)) {
        r = r + unit;
    }
    if (r == 0u) {
        return sign;
    }
    if (r >= 0x01000000u) {
        return sign + (u32(exp + 1) << 23u) + ((r >> 1u) & 0x7fffffu);
    }
    return sign + (u32(exp) << 23u) + (r & 0x7fffffu);
}

// f32 -> f16 bits, round to nearest even, overflow to infinity, NaN quiet
// (F16C's vcvtps2ph and `half::f16::from_f32`).
fn sf_to_f16(a: u32) -> u32 {
    let sign = (a >> 16u) & 0x8000u;
    let exp = i32((a >> 23u) & 0xffu);
    let man = a & 0x7fffffu;
    if (exp == 0xff) {
        if (man != 0u) {
            return sign | 0x7e00u | (man >> 13u);
        }
        return sign | 0x7c00u;
    }
    let e = exp - 127 + 15;
    if (e >= 0x1f) {
        return sign | 0x7c00u;
    }
    if (e <= 0) {
        // Subnormal f16 (or zero): shift the full significand right.
        if (e < -10) {
            return sign;
        }
        let m = man | 0x00800000u;
        let shift = u32(14 - e);
        let half_unit = 1u << (shift - 1u);
        let q = m >> shift;
        let rem = m & ((1u << shift) - 1u);
        var r = q;
        if (rem > half_unit || (rem == half_unit && (q & 1u) != 0u)) {
            r = r + 1u;
        }
        return sign | r;
    }
    let q = man >> 13u;
    let rem = man & 0x1fffu;
    var h = (u32(e) << 10u) | q;
    if (rem > 0x1000u || (rem == 0x1000u && (q & 1u) != 0u)) {
        h = h + 1u;
    }
    return sign | h;
}

// f16 bits -> f32 bits (exact).
fn sf_from_f16(h: u32) -> u32 {
    let sign = (h & 0x8000u) << 16u;
    let exp = (h >> 10u) & 0x1fu;
    let man = h & 0x3ffu;
    if (exp == 0x1fu) {
        return sign | SF_INF | (man << 13u);
    }
    if (exp == 0u) {
        if (man == 0u) {
            return sign;
        }
        // Subnormal f16: normalize.
        let shift = countLeadingZeros(man) - 21u;
        let m = (man << shift) & 0x3ffu;
        return sign | ((113u - shift) << 23u) | (m << 13u);
    }
    return sign | ((exp + 112u) << 23u) | (man << 13u);
}

// f32 -> bf16 bits as ggml rounds (nearest even on the bits, NaN made
// quiet by setting bit 6).
fn sf_to_bf16(a: u32) -> u32 {
    if ((a & 0x7fffffffu) > SF_INF) {
        return ((a >> 16u) | 64u) & 0xffffu;
    }
    return ((a + 0x7fffu + ((a >> 16u) & 1u)) >> 16u) & 0xffffu;
}

// f32 -> bf16 -> f32 as mlx rounds (NaN kept as is).
fn sf_round_bf16(a: u32) -> u32 {
    if (sf_is_nan(a)) {
        return a;
    }
    return (a + 0x7fffu + ((a >> 16u) & 1u)) & 0xffff0000u;
}
