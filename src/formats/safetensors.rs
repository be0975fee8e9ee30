//! safetensors: single files and sharded folders, read by mmap with every
//! header rule of the reference implementation enforced, and written by
//! streaming with the reference writer's layout.
//!
//! File: u64 little-endian header length N (at most 100,000,000), N bytes of
//! JSON starting with `{`, then the data. Tensors tile the data in offset
//! order with no holes and end exactly at the end of the file.

use std::borrow::Cow;
use std::collections::{BTreeMap, HashMap, HashSet};
use std::fmt;
use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};

use serde::de::{self, MapAccess, Visitor};
use serde::Deserialize;

pub use safetensors::Dtype;

use super::atomic::AtomicFile;
use super::error::{FormatError, FormatErrorKind, Result};
use super::mmap::MappedFile;
use super::paths::{read_side_file, safe_child, MAX_JSON_SIDE_FILE};

/// Largest header the reference reader accepts.
pub const MAX_HEADER_LEN: u64 = 100_000_000;
/// Name of the index of a sharded folder.
pub const INDEX_FILE: &str = "model.safetensors.index.json";
/// Name of an unsharded model file.
pub const SINGLE_FILE: &str = "model.safetensors";

/// One tensor's entry in a safetensors header.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StTensorInfo {
    /// Tensor name.
    pub name: String,
    /// Element type.
    pub dtype: Dtype,
    /// Shape, outermost first.
    pub shape: Vec<u64>,
    /// Start of the data, relative to the data section.
    pub begin: u64,
    /// End (exclusive) of the data, relative to the data section.
    pub end: u64,
}

impl StTensorInfo {
    /// Number of elements.
    pub fn n_elements(&self) -> u64 {
        self.shape.iter().product()
    }

    /// Data size in bytes.
    pub fn size(&self) -> u64 {
        self.end - self.begin
    }
}

/// Bits per element of a dtype (sub-byte types included).
pub fn dtype_bits(dtype: Dtype) -> u64 {
    dtype.bitsize() as u64
}

/// The dtype's name as it appears in headers (`F32`, `BF16`).
pub fn dtype_name(dtype: Dtype) -> String {
    format!("{dtype:?}")
}

/// Parses a dtype name as headers spell it.
pub fn parse_dtype(name: &str) -> Option<Dtype> {
    serde_json::from_value(serde_json::Value::String(name.to_string())).ok()
}

/// A parsed safetensors header.
#[derive(Debug, Clone)]
pub struct StHeader {
    /// Tensors in header order.
    pub tensors: Vec<StTensorInfo>,
    /// `__metadata__`, string to string.
    pub metadata: Option<BTreeMap<String, String>>,
    /// Absolute offset of the data section (8 + N).
    pub data_offset: u64,
}

/// Most dimensions a tensor may have: numpy 2's NPY_MAXDIMS. The reference
/// reader has no limit; without one a header of `[1,1,1,...]` would cost
/// four times its size in memory.
pub const MAX_RANK: usize = 64;

/// Most `__metadata__` entries: real files carry one (`format`).
pub const MAX_METADATA_ENTRIES: usize = 1 << 16;

/// One value of the header object: `__metadata__` or a tensor entry.
enum RawValue {
    Metadata(BTreeMap<String, String>),
    Entry(RawEntry),
}

/// The header's entries in file order, each deserialized straight into its
/// type (no generic JSON tree, which costs many times the text's size),
/// with duplicate keys caught (serde's maps would let a later entry
/// silently replace an earlier one).
struct RawHeader(Vec<(String, RawValue)>);

impl<'de> Deserialize<'de> for RawHeader {
    fn deserialize<D: de::Deserializer<'de>>(d: D) -> std::result::Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = RawHeader;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a JSON object")
            }
            fn visit_map<A: MapAccess<'de>>(
                self,
                mut map: A,
            ) -> std::result::Result<RawHeader, A::Error> {
                let mut seen = HashSet::new();
                let mut out = Vec::new();
                while let Some(key) = map.next_key::<String>()? {
                    if !seen.insert(key.clone()) {
                        return Err(de::Error::custom(format!("duplicate entry '{key}'")));
                    }
                    let value = if key == "__metadata__" {
                        map.next_value::<BoundedMetadata>()
                            .map(|m| RawValue::Metadata(m.0))
                            .map_err(|e| {
                                de::Error::custom(format!(
                                    "__metadata__ must map strings to strings: {e}"
                                ))
                            })?
                    } else {
                        map.next_value::<RawEntry>()
                            .map(RawValue::Entry)
                            .map_err(|e| de::Error::custom(format!("tensor '{key}': {e}")))?
                    };
                    out.push((key, value));
                }
                Ok(RawHeader(out))
            }
        }
        d.deserialize_map(V)
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawEntry {
    dtype: String,
    shape: BoundedShape,
    data_offsets: (u64, u64),
}

/// A shape of at most [`MAX_RANK`] dimensions, refused at the first one
/// over.
struct BoundedShape(Vec<u64>);

impl<'de> Deserialize<'de> for BoundedShape {
    fn deserialize<D: de::Deserializer<'de>>(d: D) -> std::result::Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = BoundedShape;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                write!(f, "a list of at most {MAX_RANK} dimensions")
            }
            fn visit_seq<A: de::SeqAccess<'de>>(
                self,
                mut seq: A,
            ) -> std::result::Result<BoundedShape, A::Error> {
                let mut dims = Vec::new();
                while let Some(d) = seq.next_element::<u64>()? {
                    if dims.len() == MAX_RANK {
                        return Err(de::Error::custom(format!(
                            "the shape has more than {MAX_RANK} dimensions"
                        )));
                    }
                    dims.push(d);
                }
                Ok(BoundedShape(dims))
            }
        }
        d.deserialize_seq(V)
    }
}

/// `__metadata__` with at most [`MAX_METADATA_ENTRIES`] entries.
struct BoundedMetadata(BTreeMap<String, String>);

impl<'de> Deserialize<'de> for BoundedMetadata {
    fn deserialize<D: de::Deserializer<'de>>(d: D) -> std::result::Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = BoundedMetadata;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("an object mapping strings to strings")
            }
            fn visit_map<A: MapAccess<'de>>(
                self,
                mut map: A,
            ) -> std::result::Result<BoundedMetadata, A::Error> {
                let mut out = BTreeMap::new();
                while let Some((k, v)) = map.next_entry::<String, String>()? {
                    if out.len() == MAX_METADATA_ENTRIES {
                        return Err(de::Error::custom(format!(
                            "more than {MAX_METADATA_ENTRIES} entries"
                        )));
                    }
                    out.insert(k, v);
                }
                Ok(BoundedMetadata(out))
            }
        }
        d.deserialize_map(V)
    }
}

impl StHeader {
    /// Parses and validates the header of a whole file's bytes.
    pub fn parse(bytes: &[u8]) -> Result<StHeader> {
        let file_len = bytes.len() as u64;
        if file_len < 8 {
            return Err(FormatErrorKind::Truncated {
                what: "the header length",
                need: 8,
                have: file_len,
            }
            .into());
        }
        let n = u64::from_le_bytes(bytes[..8].try_into().expect("8 bytes"));
        if n > MAX_HEADER_LEN {
            return Err(FormatError::new(FormatErrorKind::LimitExceeded {
                what: "header length",
                count: n,
                limit: MAX_HEADER_LEN,
            })
            .at(0));
        }
        if n > file_len - 8 {
            return Err(FormatError::new(FormatErrorKind::Truncated {
                what: "the JSON header",
                need: n,
                have: file_len - 8,
            })
            .at(8));
        }
        let json = &bytes[8..8 + n as usize];
        if json.first() != Some(&b'{') {
            return Err(FormatError::new(FormatErrorKind::Json(
                "the header does not start with '{'".into(),
            ))
            .at(8));
        }
        let text = std::str::from_utf8(json).map_err(|_| {
            FormatError::new(FormatErrorKind::InvalidUtf8 {
                what: "the JSON header",
            })
            .at(8)
        })?;
        let raw: RawHeader = serde_json::from_str(text.trim_end_matches(' '))
            .map_err(|e| FormatError::new(FormatErrorKind::Json(e.to_string())).at(8))?;

        let mut metadata = None;
        let mut tensors = Vec::with_capacity(raw.0.len());
        for (key, value) in raw.0 {
            let entry = match value {
                RawValue::Metadata(m) => {
                    metadata = Some(m);
                    continue;
                }
                RawValue::Entry(entry) => entry,
            };
            let shape = entry.shape.0;
            let dtype = parse_dtype(&entry.dtype).ok_or_else(|| {
                FormatError::other(format!("unknown dtype '{}'", entry.dtype)).for_tensor(&key)
            })?;
            let (begin, end) = entry.data_offsets;
            if end < begin {
                return Err(FormatError::new(FormatErrorKind::BadLayout(format!(
                    "data_offsets [{begin}, {end}] end before they begin"
                )))
                .for_tensor(&key));
            }
            let bits = shape
                .iter()
                .try_fold(1u64, |a, &d| a.checked_mul(d))
                .and_then(|n| n.checked_mul(dtype_bits(dtype)))
                .ok_or_else(|| {
                    FormatError::new(FormatErrorKind::BadShape(format!(
                        "shape {shape:?} overflows a byte count"
                    )))
                    .for_tensor(&key)
                })?;
            if bits % 8 != 0 {
                return Err(FormatError::new(FormatErrorKind::BadShape(format!(
                    "shape {shape:?} of {} is not a whole number of bytes",
                    entry.dtype
                )))
                .for_tensor(&key));
            }
            if end - begin != bits / 8 {
                return Err(FormatError::new(FormatErrorKind::BadLayout(format!(
                    "data_offsets [{begin}, {end}] hold {} bytes but shape {shape:?} of {} needs {}",
                    end - begin,
                    entry.dtype,
                    bits / 8
                )))
                .for_tensor(&key));
            }
            tensors.push(StTensorInfo {
                name: key,
                dtype,
                shape,
                begin,
                end,
            });
        }

        let data_offset = 8 + n;
        let data_len = file_len - data_offset;
        let mut by_offset: Vec<&StTensorInfo> = tensors.iter().collect();
        by_offset.sort_by_key(|t| (t.begin, t.end));
        let mut expect = 0u64;
        for t in by_offset {
            if t.begin != expect {
                let what = if t.begin > expect {
                    "leaves a hole before it"
                } else {
                    "overlaps the tensor before it"
                };
                return Err(FormatError::new(FormatErrorKind::BadLayout(format!(
                    "data starts at {} but the previous tensor ends at {expect}: the data {what}",
                    t.begin
                )))
                .for_tensor(&t.name)
                .at(data_offset + t.begin));
            }
            expect = t.end;
        }
        if expect != data_len {
            return Err(FormatError::new(FormatErrorKind::BadLayout(format!(
                "tensors cover {expect} bytes of data but the file holds {data_len} after its header"
            ))));
        }
        Ok(StHeader {
            tensors,
            metadata,
            data_offset,
        })
    }
}

/// One mapped safetensors file.
#[derive(Debug)]
pub struct SafetensorsFile {
    path: PathBuf,
    map: MappedFile,
    header: StHeader,
}

impl SafetensorsFile {
    /// Maps and parses `path`.
    pub fn open(path: impl AsRef<Path>) -> Result<SafetensorsFile> {
        let path = path.as_ref();
        let map = MappedFile::open(path)?;
        let header = StHeader::parse(map.bytes()).map_err(|e| e.in_file(path))?;
        Ok(SafetensorsFile {
            path: path.to_path_buf(),
            map,
            header,
        })
    }

    /// The file's path.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The parsed header.
    pub fn header(&self) -> &StHeader {
        &self.header
    }

    /// File size in bytes.
    pub fn file_len(&self) -> u64 {
        self.map.bytes().len() as u64
    }

    /// Lets the kernel drop the mapped pages under `data` (see
    /// [`MappedFile::release`]).
    pub fn release(&self, data: &[u8]) {
        self.map.release(data);
    }

    /// Zero-copy view of a tensor's bytes.
    pub fn tensor_data(&self, t: &StTensorInfo) -> &[u8] {
        let start = (self.header.data_offset + t.begin) as usize;
        &self.map.bytes()[start..start + t.size() as usize]
    }
}

/// The index of a sharded folder (`model.safetensors.index.json`).
#[derive(Debug, Clone, Deserialize)]
pub struct ShardIndex {
    /// `metadata` (e.g. `total_size`), kept as JSON.
    #[serde(default)]
    pub metadata: serde_json::Map<String, serde_json::Value>,
    /// Tensor name to shard file name.
    pub weight_map: BTreeMap<String, String>,
}

/// A safetensors model: one file, or a folder (sharded with an index, or a
/// single `model.safetensors`), seen as one list of tensors.
#[derive(Debug)]
pub struct SafetensorsModel {
    root: PathBuf,
    files: Vec<SafetensorsFile>,
    /// (file index, tensor index) in model order.
    order: Vec<(usize, usize)>,
    by_name: HashMap<String, usize>,
    index: Option<ShardIndex>,
}

impl SafetensorsModel {
    /// Opens a `.safetensors` file or a folder holding one or an index.
    pub fn open(path: impl AsRef<Path>) -> Result<SafetensorsModel> {
        let path = path.as_ref();
        let (root, file_names, index) = if path.is_dir() {
            let index_path = path.join(INDEX_FILE);
            if let Some(text) = read_side_file(path, INDEX_FILE, MAX_JSON_SIDE_FILE)? {
                let index: ShardIndex = serde_json::from_slice(&text).map_err(|e| {
                    FormatError::new(FormatErrorKind::Json(e.to_string())).in_file(&index_path)
                })?;
                let mut names: Vec<String> = Vec::new();
                for shard in index.weight_map.values() {
                    if !names.contains(shard) {
                        names.push(shard.clone());
                    }
                }
                names.sort();
                (path.to_path_buf(), names, Some(index))
            } else if path.join(SINGLE_FILE).is_file() {
                (path.to_path_buf(), vec![SINGLE_FILE.to_string()], None)
            } else {
                let mut names: Vec<String> = fs::read_dir(path)
                    .map_err(|e| FormatError::io(path, e))?
                    .filter_map(|e| e.ok())
                    .filter_map(|e| e.file_name().into_string().ok())
                    .filter(|n| n.ends_with(".safetensors") && !n.starts_with('.'))
                    .collect();
                names.sort();
                if names.is_empty() {
                    return Err(FormatError::other(format!(
                        "no {INDEX_FILE}, {SINGLE_FILE} or other .safetensors file in this folder"
                    ))
                    .in_file(path));
                }
                (path.to_path_buf(), names, None)
            }
        } else {
            let parent = path.parent().map(Path::to_path_buf).unwrap_or_default();
            let name = path
                .file_name()
                .and_then(|n| n.to_str())
                .ok_or_else(|| {
                    FormatError::other("the path has no usable file name").in_file(path)
                })?
                .to_string();
            (parent, vec![name], None)
        };

        let index_path = root.join(INDEX_FILE);
        let mut files = Vec::with_capacity(file_names.len());
        for name in &file_names {
            // A name from the index, or a file found in a folder: either way
            // it must stay inside the folder. The path of a single file was
            // given by the user and is taken as it is.
            let p = if index.is_some() {
                safe_child(&root, name).map_err(|e| e.in_file(&index_path))?
            } else if path.is_dir() {
                safe_child(&root, name).map_err(|e| e.in_file(&root.join(name)))?
            } else {
                root.join(name)
            };
            files.push(SafetensorsFile::open(&p)?);
        }

        let mut order = Vec::new();
        let mut by_name = HashMap::new();
        for (fi, f) in files.iter().enumerate() {
            for (ti, t) in f.header.tensors.iter().enumerate() {
                if by_name.insert(t.name.clone(), order.len()).is_some() {
                    return Err(FormatError::new(FormatErrorKind::Duplicate {
                        what: "tensor name across shards",
                        name: t.name.clone(),
                    })
                    .in_file(f.path()));
                }
                order.push((fi, ti));
            }
        }
        if let Some(index) = &index {
            for (name, shard) in &index.weight_map {
                let Some(&k) = by_name.get(name) else {
                    return Err(FormatError::other(format!(
                        "the index maps '{name}' to {shard}, which does not hold it"
                    ))
                    .in_file(&index_path));
                };
                let f = &files[order[k].0];
                if f.path().file_name().and_then(|n| n.to_str()) != Some(shard.as_str()) {
                    return Err(FormatError::other(format!(
                        "the index maps '{name}' to {shard}, but it is in {}",
                        f.path().display()
                    ))
                    .in_file(&index_path));
                }
            }
            if index.weight_map.len() != order.len() {
                let missing: Vec<&str> = by_name
                    .keys()
                    .filter(|n| !index.weight_map.contains_key(*n))
                    .map(String::as_str)
                    .take(3)
                    .collect();
                return Err(FormatError::other(format!(
                    "the shards hold {} tensors but the index lists {} (not listed: {missing:?})",
                    order.len(),
                    index.weight_map.len()
                ))
                .in_file(&index_path));
            }
        }
        Ok(SafetensorsModel {
            root,
            files,
            order,
            by_name,
            index,
        })
    }

    /// The folder holding the files.
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// The mapped files.
    pub fn files(&self) -> &[SafetensorsFile] {
        &self.files
    }

    /// The shard index, for sharded folders.
    pub fn index(&self) -> Option<&ShardIndex> {
        self.index.as_ref()
    }

    /// `__metadata__` of the first file.
    pub fn metadata(&self) -> Option<&BTreeMap<String, String>> {
        self.files.first().and_then(|f| f.header.metadata.as_ref())
    }

    /// Number of tensors.
    pub fn tensor_count(&self) -> usize {
        self.order.len()
    }

    /// Tensors in model order (file by file, header order) with their data.
    pub fn tensors(&self) -> impl Iterator<Item = (&StTensorInfo, &[u8])> {
        self.order.iter().map(move |&(fi, ti)| {
            let f = &self.files[fi];
            let t = &f.header.tensors[ti];
            (t, f.tensor_data(t))
        })
    }

    /// The tensor named `name` with its data.
    pub fn tensor(&self, name: &str) -> Option<(&StTensorInfo, &[u8])> {
        let &(fi, ti) = self.order.get(*self.by_name.get(name)?)?;
        let f = &self.files[fi];
        let t = &f.header.tensors[ti];
        Some((t, f.tensor_data(t)))
    }

    /// Total bytes of all files.
    pub fn file_bytes(&self) -> u64 {
        self.files.iter().map(SafetensorsFile::file_len).sum()
    }
}

impl super::mmap::ReleasePages for SafetensorsModel {
    fn release(&self, data: &[u8]) {
        self.files.iter().for_each(|f| f.release(data));
    }
}

/// A tensor to be written: name, dtype, shape (outermost first).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StTensorSpec {
    /// Tensor name.
    pub name: String,
    /// Element type.
    pub dtype: Dtype,
    /// Shape, outermost first.
    pub shape: Vec<u64>,
}

impl StTensorSpec {
    /// Data size in bytes.
    pub fn size(&self) -> Result<u64> {
        self.shape
            .iter()
            .try_fold(1u64, |a, &d| a.checked_mul(d))
            .and_then(|n| n.checked_mul(dtype_bits(self.dtype)))
            .filter(|bits| bits % 8 == 0)
            .map(|bits| bits / 8)
            .ok_or_else(|| {
                FormatError::new(FormatErrorKind::BadShape(format!(
                    "shape {:?} of {} is not a whole number of bytes",
                    self.shape,
                    dtype_name(self.dtype)
                )))
                .for_tensor(&self.name)
            })
    }
}

/// The header bytes (length prefix included) for tensors written in the
/// given order, padded with spaces to a multiple of 8 as the reference
/// writer pads it.
fn header_bytes(
    specs: &[&StTensorSpec],
    metadata: Option<&BTreeMap<String, String>>,
) -> Result<Vec<u8>> {
    let mut map = serde_json::Map::new();
    if let Some(m) = metadata {
        map.insert(
            "__metadata__".into(),
            serde_json::to_value(m).expect("strings serialize"),
        );
    }
    let mut offset = 0u64;
    for s in specs {
        let size = s.size()?;
        map.insert(
            s.name.clone(),
            serde_json::json!({
                "dtype": dtype_name(s.dtype),
                "shape": s.shape,
                "data_offsets": [offset, offset + size],
            }),
        );
        offset += size;
    }
    let mut json = serde_json::to_vec(&map).expect("JSON values serialize");
    json.resize(json.len().next_multiple_of(8), b' ');
    let mut out = Vec::with_capacity(8 + json.len());
    out.extend_from_slice(&(json.len() as u64).to_le_bytes());
    out.extend_from_slice(&json);
    Ok(out)
}

/// The order the reference writer puts tensors in: descending dtype
/// alignment, then name.
pub fn reference_order(specs: &[StTensorSpec]) -> Vec<&StTensorSpec> {
    let mut v: Vec<&StTensorSpec> = specs.iter().collect();
    v.sort_by(|a, b| b.dtype.cmp(&a.dtype).then_with(|| a.name.cmp(&b.name)));
    v
}

/// Writes one safetensors file atomically, streaming: `produce` is called
/// once per tensor, in write order, and its bytes go straight to disk.
pub fn write_file<'a>(
    path: &Path,
    specs: &[StTensorSpec],
    metadata: Option<&BTreeMap<String, String>>,
    mut produce: impl FnMut(&StTensorSpec) -> Result<Cow<'a, [u8]>>,
) -> Result<()> {
    let ordered = reference_order(specs);
    let header = header_bytes(&ordered, metadata).map_err(|e| e.in_file(path))?;
    let mut out = AtomicFile::create(path)?;
    out.write_all(&header)
        .map_err(|e| FormatError::io(path, e))?;
    for s in ordered {
        let data = produce(s).map_err(|e| e.for_tensor(&s.name))?;
        let size = s.size()?;
        if data.len() as u64 != size {
            return Err(FormatError::other(format!(
                "produced {} bytes for a tensor of {size}",
                data.len()
            ))
            .for_tensor(&s.name)
            .in_file(path));
        }
        out.write_all(&data).map_err(|e| FormatError::io(path, e))?;
    }
    out.commit()
}

/// Groups tensors (in the given order) into shards of at most
/// `max_shard_bytes` each, the way huggingface_hub splits a state dict: a
/// tensor that does not fit starts a new shard; a tensor larger than the
/// limit gets a shard of its own.
pub fn plan_shards(specs: &[StTensorSpec], max_shard_bytes: u64) -> Result<Vec<Vec<usize>>> {
    let mut shards: Vec<Vec<usize>> = Vec::new();
    let mut current = 0u64;
    for (i, s) in specs.iter().enumerate() {
        let size = s.size()?;
        match shards.last_mut() {
            Some(last) if !last.is_empty() && current + size <= max_shard_bytes => {
                last.push(i);
                current += size;
            }
            _ => {
                shards.push(vec![i]);
                current = size;
            }
        }
    }
    if shards.is_empty() {
        shards.push(Vec::new());
    }
    Ok(shards)
}

/// The file name of shard `i` of `n` (`model-00001-of-00003.safetensors`),
/// or `model.safetensors` when there is one.
pub fn shard_name(i: usize, n: usize) -> String {
    if n == 1 {
        SINGLE_FILE.to_string()
    } else {
        format!("model-{:05}-of-{:05}.safetensors", i + 1, n)
    }
}

/// Writes a model into `dir` as one file or as shards with an index;
/// `produce` is called once per tensor. Returns the file names written.
pub fn write_model<'a>(
    dir: &Path,
    specs: &[StTensorSpec],
    metadata: Option<&BTreeMap<String, String>>,
    max_shard_bytes: Option<u64>,
    mut produce: impl FnMut(&StTensorSpec) -> Result<Cow<'a, [u8]>>,
) -> Result<Vec<String>> {
    let shards = match max_shard_bytes {
        Some(max) => plan_shards(specs, max)?,
        None => vec![(0..specs.len()).collect()],
    };
    let n = shards.len();
    let mut names = Vec::with_capacity(n);
    let mut weight_map = BTreeMap::new();
    let mut total = 0u64;
    for (i, members) in shards.iter().enumerate() {
        let name = shard_name(i, n);
        let shard_specs: Vec<StTensorSpec> = members.iter().map(|&j| specs[j].clone()).collect();
        for s in &shard_specs {
            weight_map.insert(s.name.clone(), name.clone());
            total += s.size()?;
        }
        write_file(&dir.join(&name), &shard_specs, metadata, &mut produce)?;
        names.push(name);
    }
    if n > 1 {
        let index = serde_json::json!({
            "metadata": {"total_size": total},
            "weight_map": weight_map,
        });
        let path = dir.join(INDEX_FILE);
        let mut out = AtomicFile::create(&path)?;
        let mut text = serde_json::to_string_pretty(&index).expect("JSON serializes");
        text.push('\n');
        out.write_all(text.as_bytes())
            .map_err(|e| FormatError::io(&path, e))?;
        out.commit()?;
        names.push(INDEX_FILE.to_string());
    }
    Ok(names)
}
