// Bindings and helpers shared by the quantize and dequantize modules.
//
// Every module built on this file sees the same four bindings: the input
// as raw words (f32 bit patterns or block bytes), the output words, the
// dispatch parameters and a status word. Inputs are read as u32, never as
// f32, so no GPU canonicalizes or flushes a value on load.

struct Params {
    // Units (blocks, groups or words) in this chunk.
    n_units: u32,
    // Kernel-specific settings (MLX: bits, group size, dtypes).
    a: u32,
    b: u32,
    c: u32,
    // Always 0, set by the host; the shader compiler cannot know that (see
    // `fenced`).
    zero: u32,
    pad0: u32,
    pad1: u32,
    pad2: u32,
}

@group(0) @binding(0) var<storage, read> src: array<u32>;
@group(0) @binding(1) var<storage, read_write> dst: array<u32>;
@group(0) @binding(2) var<uniform> params: Params;
// status[0]: index of the first NaN or infinity in the chunk (or ~0u).
@group(0) @binding(3) var<storage, read_write> status: array<atomic<u32>>;

const WG: u32 = 64u;

// Dispatches are two-dimensional (at most 65535 workgroups per dimension).
fn invocation_index(wid: vec3<u32>, nwg: vec3<u32>, lid: u32) -> u32 {
    return (wid.x + wid.y * nwg.x) * WG + lid;
}

fn note_if_not_finite(index: u32, bits: u32) {
    if ((bits & 0x7f800000u) == 0x7f800000u) {
        atomicMin(&status[0], index);
    }
}

// The bits of a float result, XORed with `params.zero`. A float operation
// that reads them back (`bitcast<f32>`) cannot be fused with the one that
// produced them (no FMA contraction, no reassociation under fast-math),
// because the compiler cannot prove the XOR changes nothing: each operation
// rounds on its own, as IEEE and the CPU reference say.
fn fenced(x: f32) -> u32 {
    return bitcast<u32>(x) ^ params.zero;
}

// Order-preserving integer key of a finite float's bits, with -0 and +0
// equal (as float comparisons have them).
fn order_key(v: u32) -> i32 {
    let mag = i32(v & 0x7fffffffu);
    return select(mag, -mag, (v >> 31u) != 0u);
}

// The float bits of an order key (+0 for zero).
fn key_bits(k: i32) -> u32 {
    return select(u32(k), u32(-k) | SF_SIGN, k < 0);
}

// For loops that load many values: `bad`, lowered to `index` when `bits`
// is a NaN or an infinity. Start from ~0u and pass the result to
// note_first_non_finite after the loop: an atomic inside the loop would
// keep its loads from overlapping.
fn first_non_finite(bad: u32, index: u32, bits: u32) -> u32 {
    return select(bad, min(bad, index), (bits & 0x7f800000u) == 0x7f800000u);
}

fn note_first_non_finite(bad: u32) {
    if (bad != 0xffffffffu) {
        atomicMin(&status[0], bad);
    }
}

// Byte `i` of the input.
fn src_byte(i: u32) -> u32 {
    return (src[i >> 2u] >> ((i & 3u) * 8u)) & 0xffu;
}

// Little-endian u16 at byte `i` of the input (any alignment).
fn src_u16(i: u32) -> u32 {
    return src_byte(i) | (src_byte(i + 1u) << 8u);
}

// Little-endian u32 at byte `i` of the input (any alignment).
fn src_u32(i: u32) -> u32 {
    let s = (i & 3u) * 8u;
    let w = i >> 2u;
    if (s == 0u) {
        return src[w];
    }
    return (src[w] >> s) | (src[w + 1u] << (32u - s));
}

// Writes bytes in order into whole output words, so that no two
// invocations ever share a word: each invocation owns a word-aligned run.
struct ByteWriter {
    word: u32,
    acc: u32,
    n: u32,
}

fn bw_push(w: ptr<function, ByteWriter>, b: u32) {
    (*w).acc = (*w).acc | ((b & 0xffu) << (8u * (*w).n));
    (*w).n = (*w).n + 1u;
    if ((*w).n == 4u) {
        dst[(*w).word] = (*w).acc;
        (*w).word = (*w).word + 1u;
        (*w).acc = 0u;
        (*w).n = 0u;
    }
}

fn bw_push_u16(w: ptr<function, ByteWriter>, v: u32) {
    bw_push(w, v & 0xffu);
    bw_push(w, v >> 8u);
}

// Writes the last partial word (its missing bytes are zero).
fn bw_flush(w: ptr<function, ByteWriter>) {
    if ((*w).n != 0u) {
        dst[(*w).word] = (*w).acc;
        (*w).word = (*w).word + 1u;
        (*w).acc = 0u;
        (*w).n = 0u;
    }
}
