//! Every WGSL module translates, with the naga that wgpu uses, to Metal
//! Shading Language, SPIR-V and HLSL, after naga's validation: the macOS
//! (Metal) and Windows (DX12) paths cannot break unnoticed on a Linux CI
//! machine. Needs no GPU.

#![cfg(feature = "gpu")]

use naga::back::{hlsl, msl, spv};
use naga::valid::{Capabilities, ValidationFlags, Validator};

fn parse(name: &str, source: &str) -> (naga::Module, naga::valid::ModuleInfo) {
    let module = naga::front::wgsl::parse_str(source)
        .unwrap_or_else(|e| panic!("{name}.wgsl does not parse:\n{}", e.emit_to_string(source)));
    // The capabilities of a plain WebGPU device: no optional features.
    let info = Validator::new(ValidationFlags::all(), Capabilities::empty())
        .validate(&module)
        .unwrap_or_else(|e| {
            panic!(
                "{name}.wgsl does not validate:\n{}",
                e.emit_to_string(source)
            )
        });
    (module, info)
}

#[test]
fn shaders_translate_to_msl_spirv_and_hlsl() {
    let sources = quant_kernels::gpu::shader_sources();
    assert!(sources.len() >= 4);
    for (name, source) in &sources {
        let (module, info) = parse(name, source);
        assert!(!module.entry_points.is_empty(), "{name} has no entry point");
        let msl_options = msl::Options {
            // wgpu's minimum on Apple GPUs is MSL 2.x; 2.1 is the oldest
            // macOS it supports.
            lang_version: (2, 1),
            ..msl::Options::default()
        };
        let (metal, _) = msl::write_string(
            &module,
            &info,
            &msl_options,
            &msl::PipelineOptions::default(),
        )
        .unwrap_or_else(|e| panic!("{name}: MSL translation failed: {e}"));
        assert!(metal.contains("kernel void"), "{name}: no MSL kernel");
        let words = spv::write_vec(&module, &info, &spv::Options::default(), None)
            .unwrap_or_else(|e| panic!("{name}: SPIR-V translation failed: {e}"));
        assert_eq!(words[0], 0x0723_0203, "{name}: not SPIR-V");
        let mut hlsl_src = String::new();
        let hlsl_options = hlsl::Options::default();
        let pipeline = hlsl::PipelineOptions::default();
        hlsl::Writer::new(&mut hlsl_src, &hlsl_options, &pipeline)
            .write(&module, &info, None)
            .unwrap_or_else(|e| panic!("{name}: HLSL translation failed: {e}"));
        assert!(hlsl_src.contains("[numthreads("), "{name}: no HLSL kernel");
    }
}

#[test]
fn quantizers_use_no_float_division_rounding_or_packing() {
    // The bit-exact kernels must not depend on operations whose rounding
    // WGSL leaves open (see softfloat.wgsl).
    for (name, source) in quant_kernels::gpu::shader_sources() {
        // The mat-vec and the decoder compute in ordinary float arithmetic,
        // within a stated tolerance; the decoder's one bit-exact part, its
        // activation encodings, is held to the CPU's bytes by tests/gpu.rs.
        if name == "matvec" || name == "decoder" {
            continue;
        }
        for banned in [
            "round(",
            "pack2x16float",
            "unpack2x16float",
            "sqrt(",
            "inverseSqrt",
            "fma(",
        ] {
            for line in source.lines() {
                let code = line.split("//").next().unwrap_or("");
                assert!(
                    !code.contains(banned) || code.contains("sf_round") || code.contains("sf_sqrt"),
                    "{name}: `{banned}` in `{line}`"
                );
            }
        }
        // Float division: `/` between f32 operands. The modules keep f32
        // values as u32 bit patterns, so the only f32 expressions are the
        // dequantizers' products; flag any `/` on a line that mentions f32.
        for line in source.lines() {
            let code = line.split("//").next().unwrap_or("");
            assert!(
                !(code.contains("f32") && code.contains(" / ")),
                "{name}: division next to f32 in `{line}`"
            );
        }
    }
}
