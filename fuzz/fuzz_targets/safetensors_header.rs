//! The safetensors header parser on arbitrary bytes, checked against the
//! reference implementation (the `safetensors` crate): whatever qforge
//! accepts, the reference accepts with the same tensors, dtypes, shapes and
//! data (qforge may refuse more: a rank cap, a metadata cap).
#![no_main]

use libfuzzer_sys::fuzz_target;
use qforge::formats::safetensors::StHeader;
use safetensors::SafeTensors;

fuzz_target!(|data: &[u8]| {
    let Ok(header) = StHeader::parse(data) else {
        return;
    };
    let reference = SafeTensors::deserialize(data)
        .unwrap_or_else(|e| panic!("qforge accepts a header the reference refuses: {e}"));
    assert_eq!(reference.len(), header.tensors.len());
    for t in &header.tensors {
        let r = reference.tensor(&t.name).expect("the reference has the tensor");
        assert_eq!(r.dtype(), t.dtype, "{}", t.name);
        let shape: Vec<u64> = r.shape().iter().map(|&d| d as u64).collect();
        assert_eq!(shape, t.shape, "{}", t.name);
        let start = (header.data_offset + t.begin) as usize;
        assert_eq!(r.data(), &data[start..start + t.size() as usize], "{}", t.name);
    }
});
