//! Tokenizer conversions on small hand-made vocabularies: HF folder -> GGUF
//! keys (values, types, order), GGUF keys -> tokenizer.json -> runtime
//! tokenizer. No Python; the interop suite compares against the references.

use std::fs;
use std::path::Path;

use qforge::formats::gguf::{Array, Metadata, Value};
use qforge::tokenizer::{gguf_to_hf, hf_to_gguf_keys, keys, HfToGgufOptions, Tokenizer};
use serde_json::json;

fn varint(mut v: u64, out: &mut Vec<u8>) {
    loop {
        let b = (v & 0x7f) as u8;
        v >>= 7;
        if v == 0 {
            out.push(b);
            return;
        }
        out.push(b | 0x80);
    }
}

fn field_bytes(field: u64, data: &[u8], out: &mut Vec<u8>) {
    varint(field << 3 | 2, out);
    varint(data.len() as u64, out);
    out.extend_from_slice(data);
}

/// A serialized SentencePiece ModelProto with these (piece, score, type).
fn spm_model(pieces: &[(&str, f32, u64)]) -> Vec<u8> {
    let mut m = Vec::new();
    for (text, score, kind) in pieces {
        let mut p = Vec::new();
        field_bytes(1, text.as_bytes(), &mut p);
        varint(2 << 3 | 5, &mut p);
        p.extend_from_slice(&score.to_le_bytes());
        varint(3 << 3, &mut p);
        varint(*kind, &mut p);
        field_bytes(1, &p, &mut m);
    }
    let mut trainer = Vec::new();
    varint(3 << 3, &mut trainer);
    varint(2, &mut trainer); // BPE
    varint(35 << 3, &mut trainer);
    varint(1, &mut trainer); // byte_fallback
    field_bytes(2, &trainer, &mut m);
    m
}

fn byte_pieces() -> Vec<(String, f32, u64)> {
    (0..=255u8)
        .map(|b| (format!("<0x{b:02X}>"), 0.0, 6))
        .collect()
}

/// A llama-2 style vocabulary: unk, bos, eos, 256 bytes, then pieces.
fn llama2_pieces() -> Vec<(String, f32, u64)> {
    let mut p: Vec<(String, f32, u64)> = vec![
        ("<unk>".into(), 0.0, 2),
        ("<s>".into(), 0.0, 3),
        ("</s>".into(), 0.0, 3),
    ];
    p.extend(byte_pieces());
    for (i, t) in ["▁t", "he", "▁the", "▁a", "▁", "t", "h", "e", "a", "<tool>"]
        .iter()
        .enumerate()
    {
        let kind = if *t == "<tool>" { 4 } else { 1 };
        p.push((t.to_string(), -(i as f32), kind));
    }
    p
}

fn write_json(dir: &Path, name: &str, v: serde_json::Value) {
    fs::write(dir.join(name), serde_json::to_string_pretty(&v).unwrap()).unwrap();
}

fn spm_folder(dir: &Path) {
    let pieces = llama2_pieces();
    let refs: Vec<(&str, f32, u64)> = pieces
        .iter()
        .map(|(t, s, k)| (t.as_str(), *s, *k))
        .collect();
    fs::write(dir.join("tokenizer.model"), spm_model(&refs)).unwrap();
    write_json(
        dir,
        "config.json",
        json!({"architectures": ["MistralForCausalLM"], "vocab_size": 272, "bos_token_id": 1, "eos_token_id": 2}),
    );
    write_json(
        dir,
        "tokenizer_config.json",
        json!({
            "add_bos_token": true, "add_eos_token": false, "add_prefix_space": true,
            "bos_token": "<s>", "eos_token": "</s>", "unk_token": "<unk>",
            "added_tokens_decoder": {
                "269": {"content": "<|im_end|>", "special": false},
                "270": {"content": "▁user▁", "special": false}
            }
        }),
    );
    fs::write(
        dir.join("chat_template.jinja"),
        "{{ bos_token }}{{ messages }}",
    )
    .unwrap();
}

fn key_order(md: &Metadata) -> Vec<&str> {
    md.iter().map(|(k, _)| k).collect()
}

#[test]
fn sentencepiece_folder_gives_the_scripts_keys() {
    let dir = tempfile::tempdir().unwrap();
    spm_folder(dir.path());
    let md = hf_to_gguf_keys(dir.path(), &HfToGgufOptions::default()).unwrap();
    assert_eq!(
        key_order(&md),
        [
            keys::ADD_PREFIX, // LlamaModel writes add_prefix_space first
            keys::MODEL,
            keys::PRE,
            keys::TOKENS,
            keys::SCORES,
            keys::TOKEN_TYPE,
            keys::BOS_ID,
            keys::EOS_ID,
            keys::ADD_BOS,
            keys::ADD_EOS,
            keys::CHAT_TEMPLATE,
        ]
    );
    assert_eq!(md.get_str(keys::MODEL), Some("llama"));
    assert_eq!(md.get_str(keys::PRE), Some("default"));
    let Some(Array::String(tokens)) = md.get_array(keys::TOKENS) else {
        panic!()
    };
    let Some(Array::I32(types)) = md.get_array(keys::TOKEN_TYPE) else {
        panic!()
    };
    let Some(Array::F32(scores)) = md.get_array(keys::SCORES) else {
        panic!()
    };
    assert_eq!(tokens.len(), 272);
    assert_eq!((tokens[0].as_str(), types[0]), ("<unk>", 2));
    assert_eq!((tokens[1].as_str(), types[1]), ("<s>", 3));
    assert_eq!((tokens[3].as_str(), types[3]), ("<0x00>", 6));
    assert_eq!(
        (tokens[261].as_str(), types[261], scores[261]),
        ("▁the", 1, -2.0)
    );
    // A SentencePiece user-defined piece is NORMAL to the script.
    assert_eq!((tokens[268].as_str(), types[268]), ("<tool>", 1));
    // Looks special ("<|...|>"), so control despite special=false.
    assert_eq!(
        (tokens[269].as_str(), types[269], scores[269]),
        ("<|im_end|>", 3, -1000.0)
    );
    // User-defined: "▁" pre-normalized to spaces.
    assert_eq!((tokens[270].as_str(), types[270]), (" user ", 4));
    assert_eq!(
        (tokens[271].as_str(), types[271], scores[271]),
        ("[PAD271]", 5, -10000.0)
    );
    assert_eq!(md.get(keys::BOS_ID), Some(&Value::U32(1)));
    assert_eq!(md.get(keys::ADD_BOS), Some(&Value::Bool(true)));
    assert_eq!(md.get(keys::ADD_PREFIX), Some(&Value::Bool(true)));
    assert_eq!(
        md.get_str(keys::CHAT_TEMPLATE),
        Some("{{ bos_token }}{{ messages }}")
    );
}

#[test]
fn chat_template_jinja_is_read_without_tokenizer_config() {
    let dir = tempfile::tempdir().unwrap();
    spm_folder(dir.path());
    fs::remove_file(dir.path().join("tokenizer_config.json")).unwrap();
    let md = hf_to_gguf_keys(dir.path(), &HfToGgufOptions::default()).unwrap();
    // The script drops the template here; we keep it.
    assert_eq!(
        md.get_str(keys::CHAT_TEMPLATE),
        Some("{{ bos_token }}{{ messages }}")
    );
    // Ids come from config.json.
    assert_eq!(md.get(keys::EOS_ID), Some(&Value::U32(2)));
}

/// A byte-level BPE tokenizer.json (llama-3 layout) over a tiny vocabulary.
fn bpe_folder(dir: &Path, pre_tokenizer: serde_json::Value) {
    let mut vocab = serde_json::Map::new();
    let alphabet: Vec<char> = (b'!'..=b'~').map(char::from).chain(['Ġ', 'Ċ']).collect();
    for c in &alphabet {
        vocab.insert(c.to_string(), json!(vocab.len()));
    }
    for t in ["Ġt", "he", "Ġthe", "Ġa"] {
        vocab.insert(t.into(), json!(vocab.len()));
    }
    let n = vocab.len();
    let tj = json!({
        "version": "1.0", "truncation": null, "padding": null,
        "added_tokens": [
            {"id": n, "content": "<|begin_of_text|>", "single_word": false, "lstrip": false, "rstrip": false, "normalized": false, "special": true},
            {"id": n + 1, "content": "<|eot_id|>", "single_word": false, "lstrip": false, "rstrip": false, "normalized": false, "special": true},
            {"id": n + 2, "content": "<think>", "single_word": false, "lstrip": false, "rstrip": false, "normalized": false, "special": false}
        ],
        "normalizer": null,
        "pre_tokenizer": pre_tokenizer,
        "post_processor": {"type": "TemplateProcessing",
            "single": [{"SpecialToken": {"id": "<|begin_of_text|>", "type_id": 0}}, {"Sequence": {"id": "A", "type_id": 0}}],
            "pair": [{"SpecialToken": {"id": "<|begin_of_text|>", "type_id": 0}}, {"Sequence": {"id": "A", "type_id": 0}},
                     {"SpecialToken": {"id": "<|begin_of_text|>", "type_id": 1}}, {"Sequence": {"id": "B", "type_id": 1}}],
            "special_tokens": {"<|begin_of_text|>": {"id": "<|begin_of_text|>", "ids": [n], "tokens": ["<|begin_of_text|>"]}}},
        "decoder": {"type": "ByteLevel", "add_prefix_space": true, "trim_offsets": true, "use_regex": true},
        "model": {"type": "BPE", "dropout": null, "unk_token": null, "continuing_subword_prefix": null,
                  "end_of_word_suffix": null, "fuse_unk": false, "byte_fallback": false, "ignore_merges": true,
                  "vocab": vocab, "merges": [["Ġ", "t"], ["h", "e"], ["Ġt", "he"], ["Ġ", "a"]]}
    });
    write_json(dir, "tokenizer.json", tj);
    write_json(
        dir,
        "config.json",
        json!({"architectures": ["LlamaForCausalLM"], "vocab_size": n + 4}),
    );
    write_json(
        dir,
        "tokenizer_config.json",
        json!({"bos_token": "<|begin_of_text|>", "eos_token": "<|eot_id|>", "clean_up_tokenization_spaces": false}),
    );
}

fn llama3_pre() -> serde_json::Value {
    json!({"type": "Sequence", "pretokenizers": [
        {"type": "Split", "pattern": {"Regex": "(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\\r\\n\\p{L}\\p{N}]?\\p{L}+|\\p{N}{1,3}| ?[^\\s\\p{L}\\p{N}]+[\\r\\n]*|\\s*[\\r\\n]+|\\s+(?!\\S)|\\s+"},
         "behavior": "Isolated", "invert": false},
        {"type": "ByteLevel", "add_prefix_space": false, "trim_offsets": true, "use_regex": false}]})
}

#[test]
fn byte_level_folder_gives_the_scripts_keys_and_round_trips() {
    let dir = tempfile::tempdir().unwrap();
    bpe_folder(dir.path(), llama3_pre());
    let md = hf_to_gguf_keys(dir.path(), &HfToGgufOptions::default()).unwrap();
    assert_eq!(
        key_order(&md),
        [
            keys::MODEL,
            keys::PRE,
            keys::TOKENS,
            keys::TOKEN_TYPE,
            keys::MERGES,
            keys::BOS_ID,
            keys::EOS_ID,
            keys::ADD_BOS,
            keys::ADD_SEP,
        ]
    );
    // An unknown hash, recognized by structure.
    assert_eq!(md.get_str(keys::PRE), Some("llama-bpe"));
    let Some(Array::String(tokens)) = md.get_array(keys::TOKENS) else {
        panic!()
    };
    let Some(Array::I32(types)) = md.get_array(keys::TOKEN_TYPE) else {
        panic!()
    };
    let n = tokens.len();
    assert_eq!(
        &tokens[n - 4..],
        ["<|begin_of_text|>", "<|eot_id|>", "<think>", "[PAD103]"]
    );
    assert_eq!(&types[n - 4..], [3, 3, 4, 5]);
    let Some(Array::String(merges)) = md.get_array(keys::MERGES) else {
        panic!()
    };
    assert_eq!(merges, &["Ġ t", "h e", "Ġt he", "Ġ a"]);
    assert_eq!(md.get(keys::ADD_BOS), Some(&Value::Bool(true)));

    // Back to tokenizer.json, and the runtime tokenizer on it.
    let original = Tokenizer::from_hf_dir(dir.path()).unwrap();
    let rebuilt = Tokenizer::from_gguf(&md).unwrap();
    for text in ["the a the", " the<|eot_id|> the", "<think>the", ""] {
        assert_eq!(
            rebuilt.encode(text, true).unwrap(),
            original.encode(text, true).unwrap(),
            "{text:?}"
        );
    }
    let ids = rebuilt.encode(" the<|eot_id|>", true).unwrap();
    assert_eq!(ids, [100, 98, 101]);
    assert_eq!(rebuilt.decode(&ids, true).unwrap(), " the");
    // parse_special off: the control token is text, the user-defined one still whole.
    let literal = rebuilt
        .encode_with("<|eot_id|><think>", false, false)
        .unwrap();
    assert!(
        literal.len() > 2 && literal.last() == Some(&102),
        "{literal:?}"
    );
    assert_eq!(
        (rebuilt.bos_id(), rebuilt.eos_id(), rebuilt.add_bos()),
        (Some(100), Some(101), true)
    );
}

#[test]
fn unknown_structure_asks_for_the_override() {
    let dir = tempfile::tempdir().unwrap();
    bpe_folder(dir.path(), json!({"type": "Whitespace"}));
    let err = hf_to_gguf_keys(dir.path(), &HfToGgufOptions::default())
        .unwrap_err()
        .to_string();
    assert!(err.contains("--tokenizer-pre NAME"), "{err}");
    assert!(err.contains("tokenizer.json"), "{err}");
    let options = HfToGgufOptions {
        tokenizer_pre: Some("gpt-2".into()),
        ..Default::default()
    };
    let md = hf_to_gguf_keys(dir.path(), &options).unwrap();
    assert_eq!(md.get_str(keys::PRE), Some("gpt-2"));
}

#[test]
fn sentencepiece_keys_to_runtime_tokenizer() {
    let dir = tempfile::tempdir().unwrap();
    spm_folder(dir.path());
    let md = hf_to_gguf_keys(dir.path(), &HfToGgufOptions::default()).unwrap();
    let hf = gguf_to_hf(&md).unwrap();
    assert_eq!(hf.tokenizer_config["add_bos_token"], json!(true));
    assert_eq!(
        hf.chat_template.as_deref(),
        Some("{{ bos_token }}{{ messages }}")
    );
    let t = Tokenizer::from_gguf(&md).unwrap();
    // "the": prefix space, then merges by score: "▁t" + "he" -> "▁the".
    assert_eq!(t.encode("the", true).unwrap(), [1, 261]);
    // A leading space doubles the prefix, as llama.cpp's SPM path does.
    assert_eq!(t.encode(" the", false).unwrap(), [263, 261]);
    // Unknown characters fall back to bytes: "é" is C3 A9.
    assert_eq!(t.encode("é", false).unwrap(), [263, 3 + 0xC3, 3 + 0xA9]);
    // After a control token the prefix space comes back.
    assert_eq!(t.encode("</s>the", false).unwrap(), [2, 261]);
    assert_eq!(t.decode(&[1, 261, 262], true).unwrap(), "the a");
    let out = tempfile::tempdir().unwrap();
    hf.write_to_dir(out.path()).unwrap();
    for f in [
        "tokenizer.json",
        "tokenizer_config.json",
        "special_tokens_map.json",
        "chat_template.jinja",
    ] {
        assert!(out.path().join(f).is_file(), "{f}");
    }
    let reloaded = Tokenizer::from_hf_dir(out.path()).unwrap();
    assert_eq!(
        reloaded.encode("the a", true).unwrap(),
        t.encode("the a", true).unwrap()
    );
}

#[test]
fn gguf_without_a_tokenizer_is_a_clear_error() {
    let err = gguf_to_hf(&Metadata::new()).unwrap_err().to_string();
    assert!(err.contains("tokenizer.ggml.model is missing"), "{err}");
    let mut md = Metadata::new();
    md.set(keys::MODEL, Value::String("rwkv".into()));
    md.set(keys::TOKENS, Value::Array(Array::String(vec!["a".into()])));
    let err = gguf_to_hf(&md).unwrap_err().to_string();
    assert!(err.contains("'rwkv' is not supported"), "{err}");
    md.set(keys::MODEL, Value::String("gpt2".into()));
    md.set(keys::PRE, Value::String("made-up".into()));
    let err = gguf_to_hf(&md).unwrap_err().to_string();
    assert!(
        err.contains("'made-up'") && err.contains("llama-bpe"),
        "{err}"
    );
}

#[test]
fn huge_vocab_size_is_refused_before_allocating() {
    let dir = tempfile::tempdir().unwrap();
    spm_folder(dir.path());
    write_json(
        dir.path(),
        "config.json",
        json!({"architectures": ["MistralForCausalLM"], "vocab_size": 1u64 << 40}),
    );
    let err = hf_to_gguf_keys(dir.path(), &HfToGgufOptions::default())
        .unwrap_err()
        .to_string();
    assert!(err.contains("above the limit"), "{err}");
    assert!(err.contains("config.json"), "{err}");
}
