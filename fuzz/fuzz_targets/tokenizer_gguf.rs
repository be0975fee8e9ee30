//! Tokenizer conversion from GGUF metadata: the input is parsed as a GGUF
//! header, its `tokenizer.*` keys are turned into Hugging Face tokenizer
//! files (`gguf_to_hf`), the tokenizer.json is loaded by the `tokenizers`
//! crate and encodes and decodes a short text, and the files are written
//! into a folder, which nothing may leave (named chat templates become
//! file names).
#![no_main]

use libfuzzer_sys::fuzz_target;
use qforge::formats::gguf::GgufHeader;
use qforge::tokenizer::gguf_to_hf;
use qforge_fuzz::{assert_inside, scratch};

fuzz_target!(|data: &[u8]| {
    let Ok(header) = GgufHeader::parse(data) else {
        return;
    };
    let Ok(out) = gguf_to_hf(&header.metadata) else {
        return;
    };
    if let Ok(tok) = out.build() {
        if let Ok(enc) = tok.encode("Hello world, <s> 12 ▁x", false) {
            let _ = tok.decode(enc.get_ids(), false);
        }
    }
    let dir = scratch().join("tokenizer");
    let _ = std::fs::remove_dir_all(&dir);
    out.write_to_dir(&dir).expect("a converted tokenizer writes");
    for entry in walk(&dir) {
        assert_inside(&entry, &dir);
    }
});

fn walk(dir: &std::path::Path) -> Vec<std::path::PathBuf> {
    let mut out = Vec::new();
    for e in std::fs::read_dir(dir).unwrap().flatten() {
        let p = e.path();
        if p.is_dir() {
            out.extend(walk(&p));
        }
        out.push(p);
    }
    out
}
