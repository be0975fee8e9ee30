//! Property tests: whatever our writers write, our readers (and, for
//! safetensors, the `safetensors` crate) read back unchanged.

use std::borrow::Cow;
use std::collections::BTreeMap;

use proptest::prelude::*;
use qforge::formats::gguf::{Array, GgufHeader, GgufWriter, Metadata, TensorSpec, Value};
use qforge::formats::safetensors::{write_file, Dtype, SafetensorsFile, StTensorSpec};
use quant_kernels::GgmlType;

fn scalar() -> impl Strategy<Value = Value> {
    prop_oneof![
        any::<u8>().prop_map(Value::U8),
        any::<i8>().prop_map(Value::I8),
        any::<u16>().prop_map(Value::U16),
        any::<i16>().prop_map(Value::I16),
        any::<u32>().prop_map(Value::U32),
        any::<i32>().prop_map(Value::I32),
        any::<u64>().prop_map(Value::U64),
        any::<i64>().prop_map(Value::I64),
        // Compared by value below, so keep NaN out (bytes round trip anyway).
        (-1e30f32..1e30).prop_map(Value::F32),
        (-1e300f64..1e300).prop_map(Value::F64),
        any::<bool>().prop_map(Value::Bool),
        ".{0,40}".prop_map(Value::String),
    ]
}

fn array(depth: u32) -> BoxedStrategy<Array> {
    let flat = prop_oneof![
        prop::collection::vec(any::<u8>(), 0..20).prop_map(Array::U8),
        prop::collection::vec(any::<i16>(), 0..20).prop_map(Array::I16),
        prop::collection::vec(any::<u32>(), 0..20).prop_map(Array::U32),
        prop::collection::vec(any::<i64>(), 0..20).prop_map(Array::I64),
        prop::collection::vec(-1e6f32..1e6, 0..20).prop_map(Array::F32),
        prop::collection::vec(any::<bool>(), 0..20).prop_map(Array::Bool),
        prop::collection::vec(".{0,12}", 0..20).prop_map(Array::String),
    ];
    if depth == 0 {
        flat.boxed()
    } else {
        prop_oneof![
            3 => flat,
            1 => prop::collection::vec(array(depth - 1), 0..4).prop_map(Array::Array),
        ]
        .boxed()
    }
}

fn metadata() -> impl Strategy<Value = Metadata> {
    prop::collection::btree_map(
        "[a-z]{1,8}(\\.[a-z_]{1,8}){0,2}",
        prop_oneof![3 => scalar(), 1 => array(2).prop_map(Value::Array)],
        0..12,
    )
    .prop_map(|m| {
        let mut meta = Metadata::new();
        for (k, v) in m {
            meta.set(k, v);
        }
        meta
    })
}

fn tensors() -> impl Strategy<Value = Vec<(TensorSpec, Vec<u8>)>> {
    let types = prop::sample::select(vec![
        GgmlType::F32,
        GgmlType::F16,
        GgmlType::BF16,
        GgmlType::Q4_0,
        GgmlType::Q8_0,
        GgmlType::Q4K,
        GgmlType::I32,
    ]);
    prop::collection::vec((types, 1u64..4, 1u64..3), 0..6).prop_flat_map(|shapes| {
        let specs: Vec<TensorSpec> = shapes
            .iter()
            .enumerate()
            .map(|(i, &(t, blocks, rows))| TensorSpec {
                name: format!("blk.{i}.weight"),
                dims: vec![blocks * t.block_size(), rows],
                ggml_type: t,
            })
            .collect();
        let datas: Vec<_> = specs
            .iter()
            .map(|s| {
                let n = qforge::formats::gguf::tensor_size(&s.dims, s.ggml_type).unwrap() as usize;
                prop::collection::vec(any::<u8>(), n..=n)
            })
            .collect();
        (Just(specs), datas).prop_map(|(specs, datas)| specs.into_iter().zip(datas).collect())
    })
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(64))]

    #[test]
    fn gguf_write_then_read(meta in metadata(), tensors in tensors(), align_pow in 3u32..8) {
        let mut meta = meta;
        meta.set("general.alignment", Value::U32(1 << align_pow));
        let specs: Vec<TensorSpec> = tensors.iter().map(|(s, _)| s.clone()).collect();
        let mut bytes = Vec::new();
        let mut w = GgufWriter::new(&mut bytes, 3, &meta, &specs).unwrap();
        for (s, data) in &tensors {
            w.write_tensor(&s.name, data).unwrap();
        }
        w.finish().unwrap();

        let header = GgufHeader::parse(&bytes).unwrap();
        prop_assert_eq!(&header.metadata, &meta);
        prop_assert_eq!(header.alignment, 1u64 << align_pow);
        if !tensors.is_empty() {
            prop_assert_eq!(header.data_offset % header.alignment, 0);
        }
        prop_assert_eq!(header.tensors.len(), tensors.len());
        for (info, (spec, data)) in header.tensors.iter().zip(&tensors) {
            prop_assert_eq!(&info.name, &spec.name);
            prop_assert_eq!(&info.dims, &spec.dims);
            prop_assert_eq!(info.ggml_type, spec.ggml_type);
            let start = (header.data_offset + info.offset) as usize;
            prop_assert_eq!(&bytes[start..start + info.size as usize], &data[..]);
        }
        prop_assert_eq!(bytes.len() as u64 % header.alignment, 0);
    }

    #[test]
    fn gguf_truncation_anywhere_is_an_error_not_a_panic(meta in metadata(), tensors in tensors(), cut in any::<prop::sample::Index>()) {
        let specs: Vec<TensorSpec> = tensors.iter().map(|(s, _)| s.clone()).collect();
        let mut bytes = Vec::new();
        let mut w = GgufWriter::new(&mut bytes, 3, &meta, &specs).unwrap();
        for (s, data) in &tensors {
            w.write_tensor(&s.name, data).unwrap();
        }
        w.finish().unwrap();
        let last_data_end = GgufHeader::parse(&bytes)
            .unwrap()
            .tensors
            .iter()
            .map(|t| t.offset + t.size)
            .max();
        let at = cut.index(bytes.len());
        let result = GgufHeader::parse(&bytes[..at]);
        // Only the trailing padding after the last tensor may go.
        let header_len = GgufHeader::parse(&bytes).unwrap().data_offset;
        let needed = header_len + last_data_end.unwrap_or(0);
        if (at as u64) < needed && !(tensors.is_empty() && at as u64 >= header_len) {
            prop_assert!(result.is_err(), "cut at {} of {} parsed", at, bytes.len());
        }
    }

    #[test]
    fn safetensors_write_then_read(
        shapes in prop::collection::btree_map(
            "[a-z]{1,6}(\\.[a-z0-9]{1,4}){0,3}",
            (prop::sample::select(vec![Dtype::F32, Dtype::F16, Dtype::BF16, Dtype::I64, Dtype::U8, Dtype::U32]),
             prop::collection::vec(0u64..5, 0..3)),
            0..8,
        ),
        meta in prop::option::of(prop::collection::btree_map("[a-z]{1,5}", ".{0,10}", 0..4)),
        seed in any::<u8>(),
    ) {
        let specs: Vec<StTensorSpec> = shapes
            .into_iter()
            .map(|(name, (dtype, shape))| StTensorSpec { name, dtype, shape })
            .collect();
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("m.safetensors");
        let data_of = |s: &StTensorSpec| -> Vec<u8> {
            (0..s.size().unwrap()).map(|i| (i as u8).wrapping_mul(31).wrapping_add(seed)).collect()
        };
        write_file(&path, &specs, meta.as_ref(), |s| Ok(Cow::Owned(data_of(s)))).unwrap();

        let ours = SafetensorsFile::open(&path).unwrap();
        prop_assert_eq!(ours.header().tensors.len(), specs.len());
        prop_assert_eq!(ours.header().metadata.as_ref(), meta.as_ref());
        let bytes = std::fs::read(&path).unwrap();
        let theirs = safetensors::SafeTensors::deserialize(&bytes).unwrap();
        for s in &specs {
            let t = ours.header().tensors.iter().find(|t| t.name == s.name).unwrap();
            prop_assert_eq!(t.dtype, s.dtype);
            prop_assert_eq!(&t.shape, &s.shape);
            prop_assert_eq!(ours.tensor_data(t), &data_of(s)[..]);
            let view = theirs.tensor(&s.name).unwrap();
            prop_assert_eq!(view.dtype(), s.dtype);
            prop_assert_eq!(view.shape().iter().map(|&d| d as u64).collect::<Vec<_>>(), s.shape.clone());
            prop_assert_eq!(view.data(), &data_of(s)[..]);
        }
        let (_, their_meta) = safetensors::SafeTensors::read_metadata(&bytes).unwrap();
        let their_meta: Option<BTreeMap<String, String>> =
            their_meta.metadata().as_ref().map(|m| m.clone().into_iter().collect());
        prop_assert_eq!(their_meta, meta);
    }
}
