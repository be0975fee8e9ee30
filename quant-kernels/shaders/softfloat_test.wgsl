// Test entry point: applies the soft-float operation `params.a` to pairs
// of f32 bit patterns (a, b) from `src`, one result word per pair.

@compute @workgroup_size(64)
fn softfloat_test(
    @builtin(workgroup_id) wid: vec3<u32>,
    @builtin(num_workgroups) nwg: vec3<u32>,
    @builtin(local_invocation_index) lid: u32,
) {
    let i = invocation_index(wid, nwg, lid);
    if (i >= params.n_units) {
        return;
    }
    let a = src[2u * i];
    let b = src[2u * i + 1u];
    var r = 0u;
    switch (params.a) {
        case 0u: { r = sf_add(a, b); }
        case 1u: { r = sf_sub(a, b); }
        case 2u: { r = sf_mul(a, b); }
        case 3u: { r = sf_div(a, b); }
        case 4u: { r = sf_sqrt(a); }
        case 5u: { r = sf_to_f16(a); }
        case 6u: { r = sf_from_f16(a & 0xffffu); }
        case 7u: { r = u32(sf_nearest_int(a)); }
        case 8u: { r = u32(sf_cvtt(a)); }
        case 9u: { r = sf_round_away(a); }
        case 10u: { r = sf_rint(a); }
        case 11u: { r = select(0u, 1u, sf_lt(a, b)); }
        case 12u: { r = sf_from_i32(bitcast<i32>(a)); }
        case 13u: { r = sf_to_bf16(a); }
        case 14u: { r = sf_mul_fast(a, b); }
        case 15u: { r = sf_div_fast(a, b); }
        default: { r = 0u; }
    }
    dst[i] = r;
}
