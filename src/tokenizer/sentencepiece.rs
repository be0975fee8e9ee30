//! SentencePiece's `tokenizer.model`: a protobuf `ModelProto`, read from its
//! wire format without a protobuf library.
//!
//! Only what the GGUF and tokenizer.json conversions use is kept: the pieces
//! (text, score, type), a few trainer settings (model type, byte fallback,
//! special ids) and the normalizer flags. Field numbers are those of
//! sentencepiece's `sentencepiece_model.proto`; unknown fields are skipped,
//! as protobuf readers do. The input is treated as hostile: every length is
//! checked against the bytes left, varints are at most ten bytes, and groups
//! (a wire type protobuf 3 dropped) are refused.

use std::path::Path;

use super::error::{Result, TokenizerError, TokenizerErrorKind};
use crate::formats::paths::{read_capped, MAX_TOKENIZER_FILE};

/// The type of a piece (`SentencePiece.Type` in the proto).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum PieceType {
    /// An ordinary piece (1).
    Normal,
    /// The unknown piece (2).
    Unknown,
    /// A control symbol such as `<s>` (3).
    Control,
    /// A user-defined symbol, always matched whole (4).
    UserDefined,
    /// A piece the trainer reserved but never emits (5).
    Unused,
    /// A byte-fallback piece `<0xXX>` (6).
    Byte,
}

impl PieceType {
    /// The type with this proto enum value.
    pub fn from_id(id: u64) -> Option<PieceType> {
        Some(match id {
            1 => PieceType::Normal,
            2 => PieceType::Unknown,
            3 => PieceType::Control,
            4 => PieceType::UserDefined,
            5 => PieceType::Unused,
            6 => PieceType::Byte,
            _ => return None,
        })
    }
}

/// One vocabulary entry.
#[derive(Debug, Clone, PartialEq)]
pub struct Piece {
    /// The piece's text, with `▁` (U+2581) for spaces.
    pub piece: String,
    /// Its score (log probability for unigram models, minus the merge rank
    /// for BPE models).
    pub score: f32,
    /// Its type.
    pub kind: PieceType,
}

/// The model type of the trainer (`TrainerSpec.ModelType`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ModelType {
    /// Unigram language model (1, the proto's default).
    Unigram,
    /// Byte-pair encoding (2).
    Bpe,
    /// Whitespace-delimited words (3).
    Word,
    /// Characters (4).
    Char,
}

/// A parsed `tokenizer.model`.
#[derive(Debug, Clone, PartialEq)]
pub struct SentencePieceModel {
    /// The vocabulary, in id order.
    pub pieces: Vec<Piece>,
    /// How the model was trained.
    pub model_type: ModelType,
    /// Whether unknown characters fall back to byte pieces.
    pub byte_fallback: bool,
    /// Id of the unknown piece (default 0).
    pub unk_id: i32,
    /// Id of the BOS piece (default 1; -1 when absent).
    pub bos_id: i32,
    /// Id of the EOS piece (default 2; -1 when absent).
    pub eos_id: i32,
    /// Id of the padding piece (default -1: none).
    pub pad_id: i32,
    /// Whether a space is prepended to the input (default true).
    pub add_dummy_prefix: bool,
    /// Whether runs of whitespace are collapsed (default true).
    pub remove_extra_whitespaces: bool,
    /// Whether spaces become `▁` (default true).
    pub escape_whitespaces: bool,
    /// The normalization rule name (`nmt_nfkc`, `identity`...).
    pub normalizer_name: String,
    /// The compiled normalization table (empty for `identity`).
    pub precompiled_charsmap: Vec<u8>,
}

impl Default for SentencePieceModel {
    fn default() -> Self {
        SentencePieceModel {
            pieces: Vec::new(),
            model_type: ModelType::Unigram,
            byte_fallback: false,
            unk_id: 0,
            bos_id: 1,
            eos_id: 2,
            pad_id: -1,
            add_dummy_prefix: true,
            remove_extra_whitespaces: true,
            escape_whitespaces: true,
            normalizer_name: String::new(),
            precompiled_charsmap: Vec::new(),
        }
    }
}

impl SentencePieceModel {
    /// Reads and parses a `tokenizer.model` file.
    pub fn open(path: impl AsRef<Path>) -> Result<SentencePieceModel> {
        let path = path.as_ref();
        let file = std::fs::File::open(path).map_err(|e| TokenizerError::io(path, e))?;
        let bytes = read_capped(file, path, MAX_TOKENIZER_FILE)?;
        Self::parse(&bytes).map_err(|e| e.in_file(path))
    }

    /// Parses the bytes of a serialized `ModelProto`.
    pub fn parse(bytes: &[u8]) -> Result<SentencePieceModel> {
        let mut model = SentencePieceModel::default();
        let mut wire = Wire::new(bytes);
        while let Some((field, value)) = wire.next_field()? {
            match (field, value) {
                (1, Field::Bytes(b)) => model.pieces.push(parse_piece(b, model.pieces.len())?),
                (2, Field::Bytes(b)) => parse_trainer_spec(b, &mut model)?,
                (3, Field::Bytes(b)) => parse_normalizer_spec(b, &mut model)?,
                (1..=3, other) => return Err(wrong_type("ModelProto", field, &other)),
                _ => {}
            }
        }
        if model.pieces.is_empty() {
            return Err(spm_error("the model has no pieces".into()));
        }
        Ok(model)
    }

    /// The id of a piece by its text (the first one, as SentencePiece does).
    pub fn piece_id(&self, piece: &str) -> Option<usize> {
        self.pieces.iter().position(|p| p.piece == piece)
    }
}

fn parse_piece(bytes: &[u8], index: usize) -> Result<Piece> {
    let mut piece = Piece {
        piece: String::new(),
        score: 0.0,
        kind: PieceType::Normal,
    };
    let mut wire = Wire::new(bytes);
    while let Some((field, value)) = wire.next_field()? {
        match (field, value) {
            (1, Field::Bytes(b)) => {
                piece.piece = String::from_utf8(b.to_vec()).map_err(|_| {
                    spm_error(format!("piece {index} is not valid UTF-8: {b:02x?}"))
                })?;
            }
            (2, Field::Fixed32(bits)) => piece.score = f32::from_bits(bits),
            (3, Field::Varint(v)) => {
                piece.kind = PieceType::from_id(v).ok_or_else(|| {
                    spm_error(format!(
                        "piece {index} ({:?}) has type {v}, which SentencePiece does not define (1..=6)",
                        piece.piece
                    ))
                })?;
            }
            (1..=3, other) => return Err(wrong_type("SentencePiece", field, &other)),
            _ => {}
        }
    }
    Ok(piece)
}

fn parse_trainer_spec(bytes: &[u8], model: &mut SentencePieceModel) -> Result<()> {
    let mut wire = Wire::new(bytes);
    while let Some((field, value)) = wire.next_field()? {
        match (field, value) {
            (3, Field::Varint(v)) => {
                model.model_type = match v {
                    1 => ModelType::Unigram,
                    2 => ModelType::Bpe,
                    3 => ModelType::Word,
                    4 => ModelType::Char,
                    _ => return Err(spm_error(format!("unknown trainer model_type {v}"))),
                }
            }
            (35, Field::Varint(v)) => model.byte_fallback = v != 0,
            (40, Field::Varint(v)) => model.unk_id = v as i64 as i32,
            (41, Field::Varint(v)) => model.bos_id = v as i64 as i32,
            (42, Field::Varint(v)) => model.eos_id = v as i64 as i32,
            (43, Field::Varint(v)) => model.pad_id = v as i64 as i32,
            (3 | 35 | 40..=43, other) => return Err(wrong_type("TrainerSpec", field, &other)),
            _ => {}
        }
    }
    Ok(())
}

fn parse_normalizer_spec(bytes: &[u8], model: &mut SentencePieceModel) -> Result<()> {
    let mut wire = Wire::new(bytes);
    while let Some((field, value)) = wire.next_field()? {
        match (field, value) {
            (1, Field::Bytes(b)) => {
                model.normalizer_name = String::from_utf8(b.to_vec())
                    .map_err(|_| spm_error("normalizer name is not valid UTF-8".into()))?;
            }
            (2, Field::Bytes(b)) => model.precompiled_charsmap = b.to_vec(),
            (3, Field::Varint(v)) => model.add_dummy_prefix = v != 0,
            (4, Field::Varint(v)) => model.remove_extra_whitespaces = v != 0,
            (5, Field::Varint(v)) => model.escape_whitespaces = v != 0,
            (1..=5, other) => return Err(wrong_type("NormalizerSpec", field, &other)),
            _ => {}
        }
    }
    Ok(())
}

fn spm_error(msg: String) -> TokenizerError {
    TokenizerError::new(TokenizerErrorKind::SentencePiece(format!(
        "invalid SentencePiece model: {msg}"
    )))
}

fn wrong_type(message: &str, field: u32, found: &Field<'_>) -> TokenizerError {
    spm_error(format!(
        "{message} field {field} has wire type {}, which does not fit its declared type",
        found.wire_type_name()
    ))
}

/// One decoded field value.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Field<'a> {
    Varint(u64),
    Fixed64(u64),
    Bytes(&'a [u8]),
    Fixed32(u32),
}

impl Field<'_> {
    fn wire_type_name(&self) -> &'static str {
        match self {
            Field::Varint(_) => "varint",
            Field::Fixed64(_) => "64-bit",
            Field::Bytes(_) => "length-delimited",
            Field::Fixed32(_) => "32-bit",
        }
    }
}

/// A cursor over protobuf wire bytes.
struct Wire<'a> {
    bytes: &'a [u8],
    pos: usize,
}

impl<'a> Wire<'a> {
    fn new(bytes: &'a [u8]) -> Self {
        Wire { bytes, pos: 0 }
    }

    fn varint(&mut self) -> Result<u64> {
        let start = self.pos;
        let mut value: u64 = 0;
        for shift in (0..70).step_by(7) {
            let Some(&byte) = self.bytes.get(self.pos) else {
                return Err(spm_error(format!(
                    "varint at byte {start} runs past the end of its message"
                )));
            };
            self.pos += 1;
            if shift == 63 && byte > 1 {
                return Err(spm_error(format!(
                    "varint at byte {start} overflows 64 bits"
                )));
            }
            value |= u64::from(byte & 0x7f) << shift;
            if byte & 0x80 == 0 {
                return Ok(value);
            }
        }
        Err(spm_error(format!(
            "varint at byte {start} is longer than 10 bytes"
        )))
    }

    fn take(&mut self, n: u64, what: &str) -> Result<&'a [u8]> {
        let left = (self.bytes.len() - self.pos) as u64;
        if n > left {
            return Err(spm_error(format!(
                "{what} at byte {} needs {n} bytes, {left} left",
                self.pos
            )));
        }
        let n = n as usize;
        let out = &self.bytes[self.pos..self.pos + n];
        self.pos += n;
        Ok(out)
    }

    /// The next (field number, value), or None at the end.
    fn next_field(&mut self) -> Result<Option<(u32, Field<'a>)>> {
        if self.pos == self.bytes.len() {
            return Ok(None);
        }
        let at = self.pos;
        let key = self.varint()?;
        let field = key >> 3;
        if field == 0 || field > u64::from(u32::MAX >> 3) {
            return Err(spm_error(format!("field number {field} at byte {at}")));
        }
        let value = match key & 7 {
            0 => Field::Varint(self.varint()?),
            1 => {
                let b = self.take(8, "64-bit field")?;
                Field::Fixed64(u64::from_le_bytes(b.try_into().expect("8 bytes")))
            }
            2 => {
                let len = self.varint()?;
                Field::Bytes(self.take(len, "length-delimited field")?)
            }
            5 => {
                let b = self.take(4, "32-bit field")?;
                Field::Fixed32(u32::from_le_bytes(b.try_into().expect("4 bytes")))
            }
            t => {
                return Err(spm_error(format!(
                    "wire type {t} (field {field}) at byte {at} is not supported"
                )))
            }
        };
        Ok(Some((field as u32, value)))
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    fn varint(mut v: u64, out: &mut Vec<u8>) {
        loop {
            let b = (v & 0x7f) as u8;
            v >>= 7;
            if v == 0 {
                out.push(b);
                break;
            }
            out.push(b | 0x80);
        }
    }

    fn bytes_field(field: u64, data: &[u8], out: &mut Vec<u8>) {
        varint(field << 3 | 2, out);
        varint(data.len() as u64, out);
        out.extend_from_slice(data);
    }

    fn varint_field(field: u64, v: u64, out: &mut Vec<u8>) {
        varint(field << 3, out);
        varint(v, out);
    }

    /// A serialized piece, as protobuf writes it.
    pub(crate) fn piece(text: &str, score: f32, kind: u64) -> Vec<u8> {
        let mut p = Vec::new();
        bytes_field(1, text.as_bytes(), &mut p);
        varint(2 << 3 | 5, &mut p);
        p.extend_from_slice(&score.to_le_bytes());
        if kind != 1 {
            varint_field(3, kind, &mut p);
        }
        p
    }

    /// A small llama-style model: unk, bos, eos, two bytes, a few pieces.
    pub(crate) fn small_model() -> Vec<u8> {
        let mut m = Vec::new();
        for (text, score, kind) in [
            ("<unk>", 0.0, 2),
            ("<s>", 0.0, 3),
            ("</s>", 0.0, 3),
            ("<0x0A>", 0.0, 6),
            ("<0x41>", 0.0, 6),
            ("▁t", -1.0, 1),
            ("he", -2.0, 1),
            ("▁the", -3.0, 1),
            ("<tool>", 0.0, 4),
            ("▁", -5.0, 1),
            ("t", -6.0, 1),
            ("h", -7.0, 1),
            ("e", -8.0, 1),
        ] {
            bytes_field(1, &piece(text, score, kind), &mut m);
        }
        let mut trainer = Vec::new();
        varint_field(3, 2, &mut trainer);
        varint_field(35, 1, &mut trainer);
        varint_field(43, u64::MAX, &mut trainer); // pad_id = -1, as a 10-byte varint
        bytes_field(2, &trainer, &mut m);
        let mut normalizer = Vec::new();
        bytes_field(1, b"identity", &mut normalizer);
        varint_field(4, 0, &mut normalizer);
        bytes_field(3, &normalizer, &mut m);
        // An unknown field, which readers skip.
        varint_field(99, 7, &mut m);
        m
    }

    #[test]
    fn parses_pieces_trainer_and_normalizer() {
        let m = SentencePieceModel::parse(&small_model()).unwrap();
        assert_eq!(m.pieces.len(), 13);
        assert_eq!(m.pieces[0].kind, PieceType::Unknown);
        assert_eq!(m.pieces[1].piece, "<s>");
        assert_eq!(m.pieces[1].kind, PieceType::Control);
        assert_eq!(m.pieces[3].kind, PieceType::Byte);
        assert_eq!(m.pieces[7].piece, "▁the");
        assert_eq!(m.pieces[7].score, -3.0);
        assert_eq!(m.pieces[8].kind, PieceType::UserDefined);
        assert_eq!(m.model_type, ModelType::Bpe);
        assert!(m.byte_fallback);
        assert_eq!((m.unk_id, m.bos_id, m.eos_id, m.pad_id), (0, 1, 2, -1));
        assert_eq!(m.normalizer_name, "identity");
        assert!(m.add_dummy_prefix);
        assert!(!m.remove_extra_whitespaces);
        assert_eq!(m.piece_id("he"), Some(6));
    }

    #[test]
    fn every_truncation_is_an_error_not_a_panic() {
        let bytes = small_model();
        for cut in 0..bytes.len() {
            // Some prefixes end on a field boundary and parse; none may panic.
            let _ = SentencePieceModel::parse(&bytes[..cut]);
        }
        let err = SentencePieceModel::parse(&bytes[..bytes.len() - 4]).unwrap_err();
        assert!(
            err.to_string().contains("invalid SentencePiece model"),
            "{err}"
        );
    }

    #[test]
    fn refuses_bad_input_with_a_reason() {
        let cases: Vec<(Vec<u8>, &str)> = vec![
            (vec![], "no pieces"),
            (vec![0x0a, 0x05, 0x0a], "needs 5 bytes"),
            (vec![0x0b], "wire type 3"),
            (vec![0x08; 1], "past the end"),
            ([0x08].into_iter().chain([0xff; 11]).collect(), "overflows"),
            (vec![0x0d, 0, 0, 0, 0], "does not fit"),
            (
                {
                    let mut m = Vec::new();
                    bytes_field(1, &piece("x", 0.0, 9), &mut m);
                    m
                },
                "type 9",
            ),
            (
                {
                    let mut m = Vec::new();
                    bytes_field(1, &[0x0a, 0x01, 0xff], &mut m);
                    m
                },
                "UTF-8",
            ),
        ];
        for (bytes, want) in cases {
            let err = SentencePieceModel::parse(&bytes).unwrap_err().to_string();
            assert!(err.contains(want), "{bytes:02x?}: {err}");
        }
    }
}
