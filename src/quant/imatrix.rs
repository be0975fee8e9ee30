//! Importance matrices (imatrix): per-column weights that steer the
//! quantizers' searches, as llama-imatrix writes them and llama-quantize
//! reads them.
//!
//! Two formats (llama.cpp common/imatrix-loader.cpp, tools/imatrix):
//! - legacy `.dat`: i32 entry count; per entry an i32 name length, the
//!   name, i32 `ncall`, i32 value count and that many f32 (already divided
//!   by the token count and multiplied by `ncall`); then optionally an i32
//!   chunk count and an i32-length dataset name.
//! - GGUF: per entry two F32 tensors `NAME.in_sum2` (`[ne0, n_matrices]`,
//!   sums of squared activations) and `NAME.counts` (`[1, n_matrices]`),
//!   with keys `imatrix.datasets`, `imatrix.chunk_count`,
//!   `imatrix.chunk_size`.
//!
//! Both are normalized the way llama-quantize's `load_imatrix` does it, in
//! the same f32 arithmetic, so the weights handed to the quantizers are
//! the same bits. Every length is checked against the bytes that remain
//! before anything is allocated from it.

use std::collections::BTreeMap;
use std::path::Path;

use quant_kernels::GgmlType;

use crate::formats::error::{FormatError, FormatErrorKind, Result};
use crate::formats::gguf::{GgufFile, Value, MAGIC};
use crate::formats::mmap::MappedFile;

/// Which of the two file formats a matrix came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ImatrixFormat {
    /// llama.cpp's original `.dat` layout.
    Legacy,
    /// The GGUF layout (llama-imatrix's default since mid-2025).
    Gguf,
}

/// An importance matrix: per tensor, the weights llama-quantize passes to
/// `ggml_quantize_chunk` (one per column, per expert for 3-D tensors).
#[derive(Debug, Clone)]
pub struct ImportanceMatrix {
    /// The file format.
    pub format: ImatrixFormat,
    /// Datasets the matrix was computed on, as recorded.
    pub datasets: Vec<String>,
    /// Chunks of text it was computed on (0 when not recorded).
    pub chunk_count: i64,
    /// Tokens per chunk (GGUF only; 0 otherwise).
    pub chunk_size: u32,
    entries: BTreeMap<String, Vec<f32>>,
}

const KEY_DATASETS: &str = "imatrix.datasets";
const KEY_CHUNK_COUNT: &str = "imatrix.chunk_count";
const KEY_CHUNK_SIZE: &str = "imatrix.chunk_size";
const SUFFIX_SUMS: &str = ".in_sum2";
const SUFFIX_COUNTS: &str = ".counts";

impl ImportanceMatrix {
    /// Reads `path`, GGUF when it starts with the GGUF magic, the legacy
    /// format otherwise.
    pub fn open(path: impl AsRef<Path>) -> Result<ImportanceMatrix> {
        let path = path.as_ref();
        let map = MappedFile::open(path)?;
        let parsed = if map.bytes().starts_with(MAGIC) {
            drop(map);
            let file = GgufFile::open(path)?;
            Self::from_gguf(&file)
        } else {
            Self::parse_legacy(map.bytes())
        };
        parsed.map_err(|e| e.in_file(path))
    }

    /// Parses the legacy `.dat` format.
    pub fn parse_legacy(bytes: &[u8]) -> Result<ImportanceMatrix> {
        let mut c = Cursor { bytes, pos: 0 };
        let n_entries = c.i32("the entry count")?;
        if n_entries < 1 {
            return Err(FormatError::other(format!(
                "the entry count is {n_entries}: an importance matrix has at least one entry"
            ))
            .at(0));
        }
        // Smallest entry: name length, empty name, ncall, nval, one value.
        c.check_count("entry count", n_entries as u64, 16)?;
        let mut entries = BTreeMap::new();
        for _ in 0..n_entries {
            let at = c.pos as u64;
            let len = c.i32("an entry name length")?;
            if len < 0 {
                return Err(FormatError::other(format!("entry name length is {len}")).at(at));
            }
            let raw = c.take(len as u64, "an entry name")?;
            // The reference reads the name as a C string.
            let raw = raw.split(|&b| b == 0).next().unwrap_or(raw);
            let name = String::from_utf8(raw.to_vec()).map_err(|_| {
                FormatError::new(FormatErrorKind::InvalidUtf8 {
                    what: "an entry name",
                })
                .at(at)
            })?;
            let err = |e: FormatError| e.for_tensor(&name);
            let ncall = c.i32("the call count").map_err(err)?;
            let nval_at = c.pos as u64;
            let nval = c.i32("the value count").map_err(err)?;
            if nval < 1 {
                return Err(err(FormatError::other(format!(
                    "value count is {nval}, must be at least 1"
                ))
                .at(nval_at)));
            }
            let sums = c.f32s(nval as u64, "the entry's values").map_err(err)?;
            // llama-quantize: the stored values are (sum / tokens) * ncall.
            let values = if ncall > 0 {
                let d = ncall as f32;
                sums.iter().map(|s| s / d).collect()
            } else {
                sums
            };
            if entries.insert(name.clone(), values).is_some() {
                return Err(FormatError::new(FormatErrorKind::Duplicate {
                    what: "imatrix entry",
                    name,
                })
                .at(at));
            }
        }
        // Optional trailer: chunk count and dataset name. The reference
        // keeps what it can read of it and ignores the rest.
        let mut chunk_count = 0;
        let mut datasets = Vec::new();
        if let Ok(n) = c.i32("the chunk count") {
            chunk_count = i64::from(n);
            if let Ok(len) = c.i32("the dataset name length") {
                if len > 0 {
                    if let Ok(raw) = c.take(len as u64, "the dataset name") {
                        let raw = raw.split(|&b| b == 0).next().unwrap_or(raw);
                        datasets.push(String::from_utf8_lossy(raw).into_owned());
                    }
                }
            }
        }
        Ok(ImportanceMatrix {
            format: ImatrixFormat::Legacy,
            datasets,
            chunk_count,
            chunk_size: 0,
            entries,
        })
    }

    /// Reads the GGUF format from an opened file.
    pub fn from_gguf(file: &GgufFile) -> Result<ImportanceMatrix> {
        let meta = file.metadata();
        if file.tensors().is_empty() {
            return Err(FormatError::other("the GGUF imatrix holds no tensors"));
        }
        for key in [KEY_DATASETS, KEY_CHUNK_COUNT, KEY_CHUNK_SIZE] {
            if !meta.contains(key) {
                return Err(FormatError::new(FormatErrorKind::BadMetadata(format!(
                    "{key} is missing: this GGUF file is not an importance matrix from llama-imatrix"
                ))));
            }
        }
        let datasets = match meta.get(KEY_DATASETS) {
            Some(Value::Array(a)) => a.as_strings().map(<[String]>::to_vec).unwrap_or_default(),
            _ => Vec::new(),
        };
        let u32_key = |key: &str| match meta.get(key) {
            Some(Value::U32(v)) => Ok(*v),
            Some(v) => Err(FormatError::new(FormatErrorKind::BadMetadata(format!(
                "{key} must be a u32, found a {}",
                v.value_type().name()
            )))),
            None => Ok(0),
        };
        let chunk_count = i64::from(u32_key(KEY_CHUNK_COUNT)?);
        let chunk_size = u32_key(KEY_CHUNK_SIZE)?;

        let mut pairs: BTreeMap<&str, (Option<usize>, Option<usize>)> = BTreeMap::new();
        for (i, t) in file.tensors().iter().enumerate() {
            if let Some(base) = t.name.strip_suffix(SUFFIX_SUMS) {
                pairs.entry(base).or_default().0 = Some(i);
            } else if let Some(base) = t.name.strip_suffix(SUFFIX_COUNTS) {
                pairs.entry(base).or_default().1 = Some(i);
            }
        }
        let mut entries = BTreeMap::new();
        for (name, pair) in pairs {
            let (Some(si), Some(ci)) = pair else {
                return Err(FormatError::other(format!(
                    "'{name}' has {} but no {} tensor",
                    if pair.0.is_some() {
                        SUFFIX_SUMS
                    } else {
                        SUFFIX_COUNTS
                    },
                    if pair.0.is_some() {
                        SUFFIX_COUNTS
                    } else {
                        SUFFIX_SUMS
                    },
                ))
                .for_tensor(name));
            };
            let (sums_info, counts_info) = (&file.tensors()[si], &file.tensors()[ci]);
            for info in [sums_info, counts_info] {
                if info.ggml_type != GgmlType::F32 {
                    return Err(FormatError::other(format!(
                        "imatrix tensors must be F32, this one is {}",
                        info.ggml_type
                    ))
                    .for_tensor(&info.name));
                }
            }
            let sums = f32s_of(file.tensor_data(sums_info));
            let counts = f32s_of(file.tensor_data(counts_info));
            if counts.is_empty() || !sums.len().is_multiple_of(counts.len()) {
                return Err(FormatError::other(format!(
                    "{} values in {SUFFIX_SUMS} do not split into {} matrices",
                    sums.len(),
                    counts.len()
                ))
                .for_tensor(name));
            }
            let ne0 = sums.len() / counts.len();
            let mut values = Vec::with_capacity(sums.len());
            for (j, &c) in counts.iter().enumerate() {
                if !c.is_finite() || c.abs() >= 9.0e15 {
                    return Err(
                        FormatError::other(format!("count {j} is {c}, not a token count"))
                            .for_tensor(&counts_info.name),
                    );
                }
                // llama-quantize: counts are rounded to integers (lround),
                // then used as f32 divisors; a matrix never seen weighs 1.
                let count = c.round() as i64 as f32;
                let row = &sums[j * ne0..(j + 1) * ne0];
                if count > 0.0 {
                    values.extend(row.iter().map(|s| s / count));
                } else {
                    values.extend(std::iter::repeat_n(1.0f32, ne0));
                }
            }
            entries.insert(name.to_string(), values);
        }
        if entries.is_empty() {
            return Err(FormatError::other(format!(
                "the GGUF imatrix has no {SUFFIX_SUMS}/{SUFFIX_COUNTS} tensor pairs"
            )));
        }
        Ok(ImportanceMatrix {
            format: ImatrixFormat::Gguf,
            datasets,
            chunk_count,
            chunk_size,
            entries,
        })
    }

    /// The matrix `stats` describe, normalized as [`ImportanceMatrix::open`]
    /// normalizes a GGUF file holding them (sums divided by the rounded
    /// token count; a matrix never seen weighs 1).
    pub fn from_stats(
        stats: &BTreeMap<String, ColumnStats>,
        provenance: &ImatrixProvenance,
    ) -> ImportanceMatrix {
        let entries = stats
            .iter()
            .map(|(name, e)| {
                let count = e.count as f32;
                let values = if count > 0.0 {
                    e.sum2.iter().map(|s| s / count).collect()
                } else {
                    vec![1.0; e.sum2.len()]
                };
                (name.clone(), values)
            })
            .collect();
        ImportanceMatrix {
            format: ImatrixFormat::Gguf,
            datasets: provenance.datasets.clone(),
            chunk_count: i64::from(provenance.chunk_count),
            chunk_size: provenance.chunk_size,
            entries,
        }
    }

    /// Keeps only the entries llama-quantize would use with
    /// `--exclude-weights` (names containing any of `exclude` dropped) and
    /// `--include-weights` (only names containing one of `include` kept).
    pub fn filter(&mut self, include: &[String], exclude: &[String]) {
        if !exclude.is_empty() {
            self.entries
                .retain(|name, _| !exclude.iter().any(|x| name.contains(x.as_str())));
        }
        if !include.is_empty() {
            self.entries
                .retain(|name, _| include.iter().any(|x| name.contains(x.as_str())));
        }
    }

    /// Number of entries.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// Whether there are no entries.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// The weights for tensor `name`, if the matrix has them.
    pub fn get(&self, name: &str) -> Option<&[f32]> {
        self.entries.get(name).map(Vec::as_slice)
    }

    /// Entries by name.
    pub fn entries(&self) -> impl Iterator<Item = (&str, &[f32])> {
        self.entries.iter().map(|(k, v)| (k.as_str(), v.as_slice()))
    }

    /// The first entry holding a NaN or infinite weight, which
    /// llama-quantize refuses.
    pub fn first_non_finite(&self) -> Option<(&str, f32)> {
        self.entries
            .iter()
            .find_map(|(k, v)| v.iter().find(|x| !x.is_finite()).map(|&x| (k.as_str(), x)))
    }
}

/// Accumulates an importance matrix over a model's forward passes the way
/// llama-imatrix does (tools/imatrix/imatrix.cpp, `collect_imatrix`): for
/// every matrix of the decoder layers (`blk.*`, and the output matrix when
/// asked), the sums of squared input activations per input column, in
/// f32, token by token, and the number of tokens seen. Batches of fewer
/// than 16 tokens are skipped, as llama-imatrix skips them.
#[derive(Debug, Default)]
pub struct ImatrixCollector {
    process_output: bool,
    stats: std::sync::Mutex<BTreeMap<String, ColumnStats>>,
}

/// One matrix's running sums.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct ColumnStats {
    /// Sum over tokens of each input column's squared activation.
    pub sum2: Vec<f32>,
    /// Tokens accumulated.
    pub count: u64,
}

/// llama-imatrix ignores matrix products over fewer tokens than this.
const MIN_BATCH: usize = 16;

impl ImatrixCollector {
    /// A collector of the decoder layers' matrices; with `process_output`
    /// also the output matrix (llama-imatrix's `--process-output`).
    pub fn new(process_output: bool) -> ImatrixCollector {
        ImatrixCollector {
            process_output,
            stats: Default::default(),
        }
    }

    /// The sums so far, by GGUF tensor name.
    pub fn into_stats(self) -> BTreeMap<String, ColumnStats> {
        self.stats.into_inner().unwrap_or_else(|e| e.into_inner())
    }
}

impl crate::engine::MatmulObserver for ImatrixCollector {
    fn observe(&self, layer: usize, role: crate::engine::Role, rows: usize, input: &[f32]) {
        if rows < MIN_BATCH || input.is_empty() {
            return;
        }
        if role == crate::engine::Role::Output && !self.process_output {
            return;
        }
        let cols = input.len() / rows;
        let name = role.gguf_name(layer, "weight");
        let mut stats = self.stats.lock().unwrap_or_else(|e| e.into_inner());
        let e = stats.entry(name).or_insert_with(|| ColumnStats {
            sum2: vec![0.0; cols],
            count: 0,
        });
        if e.sum2.len() != cols {
            // A matrix seen with another width cannot happen in one model;
            // keep the first shape rather than mix them.
            return;
        }
        for row in input.chunks_exact(cols) {
            for (acc, &x) in e.sum2.iter_mut().zip(row) {
                *acc += x * x;
            }
        }
        e.count += rows as u64;
    }
}

/// What a GGUF importance matrix records besides its sums.
#[derive(Debug, Clone)]
pub struct ImatrixProvenance {
    /// The texts it was computed on (llama-imatrix records the path given
    /// to `-f`).
    pub datasets: Vec<String>,
    /// Chunks (windows) evaluated.
    pub chunk_count: u32,
    /// Tokens per chunk (the context size).
    pub chunk_size: u32,
}

/// Writes `stats` as llama-imatrix's GGUF importance matrix: `general.type
/// = imatrix`, the `imatrix.*` keys, and per matrix (in name order) an F32
/// `NAME.in_sum2` tensor of `[columns, 1]` and an F32 `NAME.counts` of
/// `[1, 1]`. Written to a temporary file, renamed at the end.
pub fn write_gguf(
    path: &Path,
    stats: &BTreeMap<String, ColumnStats>,
    provenance: &ImatrixProvenance,
) -> Result<()> {
    use crate::formats::atomic::AtomicFile;
    use crate::formats::gguf::{Array, GgufWriter, Metadata, TensorSpec, VERSION};

    let mut meta = Metadata::new();
    meta.set("general.type", Value::String("imatrix".into()));
    meta.set(
        KEY_DATASETS,
        Value::Array(Array::String(provenance.datasets.clone())),
    );
    meta.set(KEY_CHUNK_COUNT, Value::U32(provenance.chunk_count));
    meta.set(KEY_CHUNK_SIZE, Value::U32(provenance.chunk_size));
    let mut specs = Vec::with_capacity(2 * stats.len());
    for (name, e) in stats {
        specs.push(TensorSpec {
            name: format!("{name}{SUFFIX_SUMS}"),
            dims: vec![e.sum2.len() as u64, 1],
            ggml_type: GgmlType::F32,
        });
        specs.push(TensorSpec {
            name: format!("{name}{SUFFIX_COUNTS}"),
            dims: vec![1, 1],
            ggml_type: GgmlType::F32,
        });
    }
    let mut out = AtomicFile::create(path)?;
    let mut w = GgufWriter::new(&mut out, VERSION, &meta, &specs).map_err(|e| e.in_file(path))?;
    for (name, e) in stats {
        let sums: Vec<u8> = e.sum2.iter().flat_map(|v| v.to_le_bytes()).collect();
        w.write_tensor(&format!("{name}{SUFFIX_SUMS}"), &sums)
            .map_err(|e| e.in_file(path))?;
        w.write_tensor(
            &format!("{name}{SUFFIX_COUNTS}"),
            &(e.count as f32).to_le_bytes(),
        )
        .map_err(|e| e.in_file(path))?;
    }
    w.finish().map_err(|e| e.in_file(path))?;
    out.commit()
}

fn f32s_of(bytes: &[u8]) -> Vec<f32> {
    bytes
        .chunks_exact(4)
        .map(|c| f32::from_le_bytes(c.try_into().expect("4 bytes")))
        .collect()
}

/// A bounds-checked little-endian reader.
struct Cursor<'a> {
    bytes: &'a [u8],
    pos: usize,
}

impl<'a> Cursor<'a> {
    fn remaining(&self) -> u64 {
        (self.bytes.len() - self.pos) as u64
    }

    fn take(&mut self, n: u64, what: &'static str) -> Result<&'a [u8]> {
        if n > self.remaining() {
            return Err(FormatError::new(FormatErrorKind::Truncated {
                what,
                need: n,
                have: self.remaining(),
            })
            .at(self.pos as u64));
        }
        let start = self.pos;
        self.pos += n as usize;
        Ok(&self.bytes[start..self.pos])
    }

    fn i32(&mut self, what: &'static str) -> Result<i32> {
        let b = self.take(4, what)?;
        Ok(i32::from_le_bytes(b.try_into().expect("4 bytes")))
    }

    fn f32s(&mut self, n: u64, what: &'static str) -> Result<Vec<f32>> {
        let bytes = self.take(n.saturating_mul(4), what)?;
        Ok(f32s_of(bytes))
    }

    fn check_count(&self, what: &'static str, count: u64, min_size: u64) -> Result<()> {
        let max = self.remaining() / min_size;
        if count > max {
            return Err(
                FormatError::new(FormatErrorKind::CountTooLarge { what, count, max }).at(0),
            );
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn legacy(entries: &[(&str, i32, &[f32])], trailer: Option<(i32, &str)>) -> Vec<u8> {
        let mut b = Vec::new();
        b.extend_from_slice(&(entries.len() as i32).to_le_bytes());
        for (name, ncall, values) in entries {
            b.extend_from_slice(&(name.len() as i32).to_le_bytes());
            b.extend_from_slice(name.as_bytes());
            b.extend_from_slice(&ncall.to_le_bytes());
            b.extend_from_slice(&(values.len() as i32).to_le_bytes());
            for v in *values {
                b.extend_from_slice(&v.to_le_bytes());
            }
        }
        if let Some((chunks, dataset)) = trailer {
            b.extend_from_slice(&chunks.to_le_bytes());
            b.extend_from_slice(&(dataset.len() as i32).to_le_bytes());
            b.extend_from_slice(dataset.as_bytes());
        }
        b
    }

    #[test]
    fn legacy_entries_are_divided_by_ncall() {
        let bytes = legacy(
            &[("blk.0.attn_q.weight", 4, &[2.0, 6.0]), ("b", 0, &[3.0])],
            Some((7, "GPL-3")),
        );
        let m = ImportanceMatrix::parse_legacy(&bytes).unwrap();
        assert_eq!(m.format, ImatrixFormat::Legacy);
        assert_eq!(m.get("blk.0.attn_q.weight"), Some(&[0.5f32, 1.5][..]));
        assert_eq!(m.get("b"), Some(&[3.0f32][..]));
        assert_eq!(m.chunk_count, 7);
        assert_eq!(m.datasets, ["GPL-3"]);
        let m = ImportanceMatrix::parse_legacy(&legacy(&[("a", 1, &[1.0])], None)).unwrap();
        assert_eq!((m.chunk_count, m.datasets.len()), (0, 0));
    }

    #[test]
    fn legacy_refuses_hostile_sizes_with_offsets() {
        let mut bytes = legacy(&[("a", 1, &[1.0])], None);
        bytes[8 + 1 + 4..8 + 1 + 8].copy_from_slice(&i32::MAX.to_le_bytes());
        let e = ImportanceMatrix::parse_legacy(&bytes).unwrap_err();
        assert!(e.to_string().contains("file ends"), "{e}");
        assert_eq!(e.tensor.as_deref(), Some("a"));

        let mut bytes = legacy(&[("a", 1, &[1.0])], None);
        bytes[4..8].copy_from_slice(&(-5i32).to_le_bytes());
        let e = ImportanceMatrix::parse_legacy(&bytes).unwrap_err();
        assert_eq!(e.offset, Some(4));

        let mut bytes = legacy(&[("a", 1, &[1.0])], None);
        bytes[0..4].copy_from_slice(&1_000_000i32.to_le_bytes());
        assert!(ImportanceMatrix::parse_legacy(&bytes).is_err());
        assert!(ImportanceMatrix::parse_legacy(&[]).is_err());
        assert!(ImportanceMatrix::parse_legacy(&0i32.to_le_bytes()).is_err());

        let dup = legacy(&[("a", 1, &[1.0]), ("a", 1, &[1.0])], None);
        assert!(ImportanceMatrix::parse_legacy(&dup).is_err());
    }

    #[test]
    fn include_and_exclude_filter_by_substring() {
        let bytes = legacy(
            &[
                ("blk.0.attn_q.weight", 1, &[1.0]),
                ("blk.0.ffn_down.weight", 1, &[1.0]),
                ("output.weight", 1, &[1.0]),
            ],
            None,
        );
        let mut m = ImportanceMatrix::parse_legacy(&bytes).unwrap();
        m.filter(&[], &["ffn_".into()]);
        assert_eq!(m.len(), 2);
        m.filter(&["attn".into()], &[]);
        assert_eq!(
            m.entries().map(|e| e.0).collect::<Vec<_>>(),
            ["blk.0.attn_q.weight"]
        );
    }
}
