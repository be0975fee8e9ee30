//! The real SmolLM2-135M-Instruct vocabulary (byte-level BPE, pre "smollm")
//! through qforge's tokenizer: GGUF -> tokenizer.json -> GGUF keys, and the
//! runtime tokenizer on the GPL-3 text. Needs the oracle setup, so only with
//! `--features interop`; the comparison with llama.cpp's own ids is in
//! tests/interop/test_tokenizer.py.
#![cfg(feature = "interop")]

use std::path::PathBuf;

use qforge::formats::gguf::{GgufFile, Value};
use qforge::tokenizer::{
    check_text_hash, gguf_to_hf, hf_to_gguf_keys, keys, HfToGgufOptions, Tokenizer,
};

fn smollm2() -> PathBuf {
    let path = std::env::var_os("QFORGE_SMOLLM2_GGUF").map(PathBuf::from).expect(
        "QFORGE_SMOLLM2_GGUF is not set: run tests/interop/setup.sh and source tests/interop/oracles.env",
    );
    assert!(
        path.is_file(),
        "{} is missing: rerun tests/interop/setup.sh",
        path.display()
    );
    path
}

#[test]
fn gguf_to_hf_to_gguf_keeps_the_vocabulary() {
    let file = GgufFile::open(smollm2()).unwrap();
    let original = file.metadata();
    let hf = gguf_to_hf(original).unwrap();
    // The rebuilt tokenizer.json tokenizes the script's check text as the
    // original SmolLM tokenizer did: its hash is the table's "smollm" entry.
    assert_eq!(
        check_text_hash(&hf.build().unwrap()).unwrap(),
        "855059429035d75a914d1eda9f10a876752e281a054a7a3d421ef0533e5b6249"
    );
    let dir = tempfile::tempdir().unwrap();
    hf.write_to_dir(dir.path()).unwrap();
    std::fs::write(
        dir.path().join("config.json"),
        r#"{"architectures": ["LlamaForCausalLM"], "vocab_size": 49152}"#,
    )
    .unwrap();
    let back = hf_to_gguf_keys(dir.path(), &HfToGgufOptions::default()).unwrap();
    for key in [
        keys::MODEL,
        keys::PRE,
        keys::TOKENS,
        keys::TOKEN_TYPE,
        keys::MERGES,
        keys::BOS_ID,
        keys::EOS_ID,
        keys::UNK_ID,
        keys::PAD_ID,
        keys::ADD_BOS,
        keys::CHAT_TEMPLATE,
    ] {
        assert_eq!(back.get(key), original.get(key), "{key}");
    }
    assert_eq!(back.get_str(keys::PRE), Some("smollm"));
}

#[test]
fn runtime_tokenizer_on_gpl3() {
    let t = Tokenizer::from_gguf_file(smollm2()).unwrap();
    assert_eq!(
        (t.add_bos(), t.bos_id(), t.eos_id()),
        (false, Some(1), Some(2))
    );
    let text = std::fs::read_to_string("/usr/share/common-licenses/GPL-3").unwrap();
    let ids = t.encode(&text, true).unwrap();
    // llama.cpp's count for the same file (tests/interop/test_tokenizer.py
    // compares every id).
    assert_eq!(ids.len(), 7639);
    assert_eq!(t.decode(&ids, false).unwrap(), text);
    // Digits are split one by one, as llama.cpp's "smollm" pre-tokenizer does.
    let ids = t.encode("2007", false).unwrap();
    assert_eq!(ids.len(), 4);
    let chat = t.encode("<|im_start|>user\nhi<|im_end|>", true).unwrap();
    assert_eq!(chat.first(), Some(&1));
    assert_eq!(chat.last(), Some(&2));
    assert!(matches!(
        GgufFile::open(smollm2())
            .unwrap()
            .metadata()
            .get(keys::ADD_BOS),
        Some(Value::Bool(false))
    ));
}
