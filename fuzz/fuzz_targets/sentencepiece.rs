//! The SentencePiece `tokenizer.model` parser (protobuf wire format, read
//! without a protobuf library) on arbitrary bytes.
#![no_main]

use libfuzzer_sys::fuzz_target;
use qforge::tokenizer::SentencePieceModel;

fuzz_target!(|data: &[u8]| {
    let Ok(model) = SentencePieceModel::parse(data) else {
        return;
    };
    assert!(!model.pieces.is_empty());
    if let Some(first) = model.pieces.first() {
        assert!(model.piece_id(&first.piece).is_some());
    }
});
