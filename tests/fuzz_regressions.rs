//! Inputs the fuzz campaigns (fuzz/RUNS.md) found, kept so the bugs they
//! showed stay fixed. Each is replayed through the code its target drives.

use std::path::PathBuf;

use qforge::formats::gguf::GgufHeader;
use qforge::tokenizer::gguf_to_hf;

fn input(name: &str) -> Vec<u8> {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fuzz-regressions")
        .join(name);
    std::fs::read(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// `general.alignment` = 2^29 parsed, and a rewrite padded the data section
/// to 512 MiB (1.5 GB resident for a 238-byte file). The reader now refuses
/// alignments above 64 KiB.
#[test]
fn a_huge_alignment_is_refused_before_anything_is_padded() {
    let err = GgufHeader::parse(&input("gguf_header-alignment-2pow29.gguf"))
        .expect_err("alignment 2^29 accepted");
    let msg = err.to_string();
    assert!(
        msg.contains("general.alignment") && msg.contains("536870912") && msg.contains("65536"),
        "{msg}"
    );
}

/// SentencePiece scores with NaN made the merge sort's comparison
/// inconsistent, and the standard sort panics on that. Now NaN sorts last.
#[test]
fn nan_scores_do_not_break_the_merge_order() {
    let header = GgufHeader::parse(&input("tokenizer_gguf-nan-scores.gguf")).unwrap();
    if let Ok(out) = gguf_to_hf(&header.metadata) {
        let _ = out.build();
    }
}
