//! The GGUF header parser on arbitrary bytes, then what the rest of qforge
//! does with a parsed header: tensor views (the same slicing as
//! `GgufFile::tensor_data`) and a rewrite through the streaming writer,
//! which must give a file that parses to the same header and data, and
//! that rewrites to itself byte for byte.
#![no_main]

use libfuzzer_sys::fuzz_target;
use qforge::formats::gguf::{GgufHeader, GgufWriter, TensorSpec};

fn tensor_view<'a>(bytes: &'a [u8], h: &GgufHeader, i: usize) -> &'a [u8] {
    let t = &h.tensors[i];
    let start = (h.data_offset + t.offset) as usize;
    &bytes[start..start + t.size as usize]
}

fn rewrite(bytes: &[u8], h: &GgufHeader) -> Vec<u8> {
    let specs: Vec<TensorSpec> = h.tensors.iter().map(TensorSpec::from).collect();
    let mut out = Vec::new();
    let mut w = GgufWriter::new(&mut out, h.version, &h.metadata, &specs)
        .expect("the writer writes every header the reader accepts");
    for (i, t) in h.tensors.iter().enumerate() {
        w.write_tensor(&t.name, tensor_view(bytes, h, i))
            .expect("tensor data of the declared size");
    }
    w.finish().expect("every tensor written");
    out
}

fuzz_target!(|data: &[u8]| {
    let Ok(header) = GgufHeader::parse(data) else {
        return;
    };
    let mut total = 0u64;
    for i in 0..header.tensors.len() {
        total += tensor_view(data, &header, i).len() as u64;
    }
    assert_eq!(total, header.tensor_bytes());

    let once = rewrite(data, &header);
    let again = GgufHeader::parse(&once).expect("a rewritten header parses");
    assert_eq!(again.version, header.version);
    assert_eq!(again.metadata.len(), header.metadata.len());
    assert_eq!(again.tensors.len(), header.tensors.len());
    for (i, (a, b)) in header.tensors.iter().zip(&again.tensors).enumerate() {
        assert_eq!((&a.name, &a.dims, a.ggml_type, a.size), (&b.name, &b.dims, b.ggml_type, b.size));
        assert_eq!(tensor_view(data, &header, i), tensor_view(&once, &again, i));
    }
    assert_eq!(rewrite(&once, &again), once, "a rewrite of a rewrite changes bytes");
});
