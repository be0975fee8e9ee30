//! Split GGUF sets (`NAME-00001-of-00003.gguf`), as llama-gguf-split writes
//! and llama.cpp loads them: the first file carries all metadata, every file
//! carries `split.no`, `split.count` and `split.tensors.count`, and tensors
//! are spread over the files in order.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use super::reader::GgufFile;
use super::value::{Metadata, Value};
use super::writer::{GgufWriter, TensorSpec};
use super::{align_up, keys, TensorInfo, DEFAULT_ALIGNMENT, VERSION};
use crate::formats::atomic::{commit_all, AtomicFile};
use crate::formats::error::{FormatError, Result};
use crate::formats::paths::safe_child;

/// The path of split `index` (from 0) of `count` for a set named `prefix`
/// (`prefix-00001-of-00003.gguf`, llama.cpp's `llama_split_path`).
pub fn split_path(prefix: &Path, index: usize, count: usize) -> PathBuf {
    let mut s = prefix.as_os_str().to_os_string();
    s.push(format!("-{:05}-of-{:05}.gguf", index + 1, count));
    PathBuf::from(s)
}

/// A split file name taken apart.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SplitName {
    /// Everything before `-0000N-of-0000M.gguf`.
    pub prefix: PathBuf,
    /// Split index from 0.
    pub index: usize,
    /// Number of splits.
    pub count: usize,
}

impl SplitName {
    /// Parses `prefix-00002-of-00003.gguf`.
    pub fn parse(path: &Path) -> Option<SplitName> {
        let name = path.file_name()?.to_str()?;
        let stem = name.strip_suffix(".gguf")?;
        let (rest, count) = stem.rsplit_once("-of-")?;
        let (prefix, index) = rest.rsplit_once('-')?;
        if index.len() != 5 || count.len() != 5 || prefix.is_empty() {
            return None;
        }
        let index: usize = index.parse().ok()?;
        let count: usize = count.parse().ok()?;
        if index == 0 || index > count {
            return None;
        }
        Some(SplitName {
            prefix: path.with_file_name(prefix),
            index: index - 1,
            count,
        })
    }
}

/// How to cut a model into splits (llama-gguf-split's two modes).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SplitBy {
    /// At most this many tensors per file (`--split-max-tensors`).
    Tensors(usize),
    /// At most this many bytes of padded tensor data per file
    /// (`--split-max-size`); a file holds at least one tensor.
    Bytes(u64),
}

/// A GGUF model: one file, or every file of a split set, seen as one.
#[derive(Debug)]
pub struct GgufModel {
    files: Vec<GgufFile>,
    /// (file index, tensor index in that file) in model order.
    order: Vec<(usize, usize)>,
    by_name: HashMap<String, usize>,
}

impl GgufModel {
    /// Opens `path`; when it is part of a split set (`split.count` > 1),
    /// opens every file of the set, whichever one was named.
    pub fn open(path: impl AsRef<Path>) -> Result<GgufModel> {
        let path = path.as_ref();
        let first = GgufFile::open(path)?;
        let count = split_count(&first)?;
        let files = if count <= 1 {
            vec![first]
        } else {
            let name = SplitName::parse(path).ok_or_else(|| {
                FormatError::other(format!(
                    "{} is {count} but the name does not end in -0000N-of-{count:05}.gguf, so the other files cannot be found",
                    keys::SPLIT_COUNT
                ))
                .in_file(path)
            })?;
            if name.count != count {
                return Err(FormatError::other(format!(
                    "the name says {} splits but {} is {count}",
                    name.count,
                    keys::SPLIT_COUNT
                ))
                .in_file(path));
            }
            let mut files = Vec::with_capacity(count);
            for i in 0..count {
                let f = if i == name.index {
                    GgufFile::open(path)?
                } else {
                    GgufFile::open(sibling(&name.prefix, i, count)?)?
                };
                let no = f.metadata().get_u64(keys::SPLIT_NO);
                if no != Some(i as u64) {
                    return Err(FormatError::other(format!(
                        "{} is {no:?}, expected {i}",
                        keys::SPLIT_NO
                    ))
                    .in_file(f.path()));
                }
                if split_count(&f)? != count {
                    return Err(FormatError::other(format!(
                        "{} differs from the first split's {count}",
                        keys::SPLIT_COUNT
                    ))
                    .in_file(f.path()));
                }
                files.push(f);
            }
            files
        };

        let mut order = Vec::new();
        let mut by_name = HashMap::new();
        for (fi, f) in files.iter().enumerate() {
            for (ti, t) in f.tensors().iter().enumerate() {
                if by_name.insert(t.name.clone(), order.len()).is_some() {
                    return Err(FormatError::new(
                        crate::formats::error::FormatErrorKind::Duplicate {
                            what: "tensor name across splits",
                            name: t.name.clone(),
                        },
                    )
                    .in_file(f.path()));
                }
                order.push((fi, ti));
            }
        }
        if files.len() > 1 {
            let declared = files[0].metadata().get_u64(keys::SPLIT_TENSORS_COUNT);
            if declared != Some(order.len() as u64) {
                return Err(FormatError::other(format!(
                    "{} is {declared:?} but the splits hold {} tensors",
                    keys::SPLIT_TENSORS_COUNT,
                    order.len()
                ))
                .in_file(files[0].path()));
            }
        }
        Ok(GgufModel {
            files,
            order,
            by_name,
        })
    }

    /// The files of the model (one unless split).
    pub fn files(&self) -> &[GgufFile] {
        &self.files
    }

    /// The model's metadata: the first file's, which holds all keys.
    pub fn metadata(&self) -> &Metadata {
        self.files[0].metadata()
    }

    /// Number of tensors over all files.
    pub fn tensor_count(&self) -> usize {
        self.order.len()
    }

    /// Tensors in model order, each with its data.
    pub fn tensors(&self) -> impl Iterator<Item = (&TensorInfo, &[u8])> {
        self.order.iter().map(move |&(fi, ti)| {
            let f = &self.files[fi];
            let info = &f.tensors()[ti];
            (info, f.tensor_data(info))
        })
    }

    /// The tensor named `name` with its data.
    pub fn tensor(&self, name: &str) -> Option<(&TensorInfo, &[u8])> {
        let &(fi, ti) = self.order.get(*self.by_name.get(name)?)?;
        let f = &self.files[fi];
        let info = &f.tensors()[ti];
        Some((info, f.tensor_data(info)))
    }

    /// Total bytes of all files.
    pub fn file_bytes(&self) -> u64 {
        self.files.iter().map(GgufFile::file_len).sum()
    }
}

/// Split `index` of the set next to the file the user named: its name is
/// built here, but it may be a symlink, which must stay in the folder (as
/// shards named by a safetensors index must).
fn sibling(prefix: &Path, index: usize, count: usize) -> Result<PathBuf> {
    let path = split_path(prefix, index, count);
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d,
        _ => Path::new("."),
    };
    let name = path
        .file_name()
        .and_then(|n| n.to_str())
        .expect("split_path ends in a UTF-8 name");
    safe_child(dir, name).map_err(|e| e.in_file(&path))?;
    Ok(path)
}

impl crate::formats::mmap::ReleasePages for GgufModel {
    fn release(&self, data: &[u8]) {
        self.files.iter().for_each(|f| f.release(data));
    }
}

fn split_count(f: &GgufFile) -> Result<usize> {
    match f.metadata().get(keys::SPLIT_COUNT) {
        None => Ok(1),
        Some(Value::U16(n)) => Ok(usize::from(*n)),
        Some(v) => Err(FormatError::other(format!(
            "{} must be a u16, found a {}",
            keys::SPLIT_COUNT,
            v.value_type().name()
        ))
        .in_file(f.path())),
    }
}

/// Groups tensor indices into splits the way llama-gguf-split does.
fn plan_splits(tensors: &[&TensorInfo], by: SplitBy) -> Result<Vec<Vec<usize>>> {
    let mut splits: Vec<Vec<usize>> = vec![Vec::new()];
    let mut current = 0u64;
    for (i, t) in tensors.iter().enumerate() {
        let padded =
            align_up(t.size, DEFAULT_ALIGNMENT).expect("tensor size is bounded by the file");
        let next = current + padded;
        let cut = match by {
            SplitBy::Tensors(n) => i > 0 && i % n.max(1) == 0,
            SplitBy::Bytes(max) => next > max,
        };
        if cut {
            if splits.last().is_some_and(Vec::is_empty) {
                return Err(FormatError::other(format!(
                    "tensor '{}' alone ({padded} bytes) is larger than the split size",
                    t.name
                )));
            }
            splits.push(Vec::new());
            current = padded;
        } else {
            current = next;
        }
        splits.last_mut().expect("never empty").push(i);
    }
    if splits.len() > usize::from(u16::MAX) {
        return Err(FormatError::other(format!(
            "{} splits would be needed, GGUF counts at most {}",
            splits.len(),
            u16::MAX
        )));
    }
    Ok(splits)
}

/// Writes `model` as a split set `prefix-0000N-of-0000M.gguf`; returns the
/// paths written. Metadata goes into the first file only, as
/// llama-gguf-split does.
pub fn split_file(model: &GgufModel, prefix: &Path, by: SplitBy) -> Result<Vec<PathBuf>> {
    split_file_with_metadata(model, model.metadata(), prefix, by)
}

/// [`split_file`] with other metadata for the first file (any `split.*`
/// keys in it are replaced).
pub fn split_file_with_metadata(
    model: &GgufModel,
    metadata: &Metadata,
    prefix: &Path,
    by: SplitBy,
) -> Result<Vec<PathBuf>> {
    let tensors: Vec<(&TensorInfo, &[u8])> = model.tensors().collect();
    let infos: Vec<&TensorInfo> = tensors.iter().map(|(t, _)| *t).collect();
    let plan = plan_splits(&infos, by)?;
    let count = plan.len();

    // Every part is written before any is renamed into place: a failure
    // leaves no part of the set under its final name.
    let mut paths = Vec::with_capacity(count);
    let mut outs = Vec::with_capacity(count);
    for (i, members) in plan.iter().enumerate() {
        let mut meta = if i == 0 {
            metadata.clone()
        } else {
            Metadata::new()
        };
        // llama-gguf-split sets split.count last (its setter moves a key to
        // the end), so the keys go in this order for identical bytes.
        for key in [keys::SPLIT_NO, keys::SPLIT_COUNT, keys::SPLIT_TENSORS_COUNT] {
            meta.remove(key);
        }
        meta.set(keys::SPLIT_NO, Value::U16(i as u16));
        meta.set(keys::SPLIT_TENSORS_COUNT, Value::I32(tensors.len() as i32));
        meta.set(keys::SPLIT_COUNT, Value::U16(count as u16));
        let specs: Vec<TensorSpec> = members
            .iter()
            .map(|&j| TensorSpec::from(infos[j]))
            .collect();
        let path = split_path(prefix, i, count);
        let mut out = AtomicFile::create(&path)?;
        let mut w =
            GgufWriter::new(&mut out, VERSION, &meta, &specs).map_err(|e| e.in_file(&path))?;
        for &j in members {
            let (t, data) = tensors[j];
            w.write_tensor(&t.name, data)
                .map_err(|e| e.in_file(&path))?;
        }
        w.finish().map_err(|e| e.in_file(&path))?;
        outs.push(out.finish()?);
        paths.push(path);
    }
    commit_all(outs)?;
    Ok(paths)
}

/// Writes the tensors of a split set into one file, with the first split's
/// metadata minus the `split.*` keys: merging what [`split_file`] wrote
/// gives back the original bytes.
pub fn merge_split(model: &GgufModel, out_path: &Path) -> Result<()> {
    let mut meta = model.metadata().clone();
    for key in [keys::SPLIT_NO, keys::SPLIT_COUNT, keys::SPLIT_TENSORS_COUNT] {
        meta.remove(key);
    }
    let specs: Vec<TensorSpec> = model.tensors().map(|(t, _)| TensorSpec::from(t)).collect();
    let version = model.files()[0].header().version;
    let mut out = AtomicFile::create(out_path)?;
    let mut w =
        GgufWriter::new(&mut out, version, &meta, &specs).map_err(|e| e.in_file(out_path))?;
    for (t, data) in model.tensors() {
        w.write_tensor(&t.name, data)
            .map_err(|e| e.in_file(out_path))?;
    }
    w.finish().map_err(|e| e.in_file(out_path))?;
    out.commit()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn split_names_round_trip() {
        let p = split_path(Path::new("/m/model"), 1, 3);
        assert_eq!(p, Path::new("/m/model-00002-of-00003.gguf"));
        let n = SplitName::parse(&p).unwrap();
        assert_eq!(n.prefix, Path::new("/m/model"));
        assert_eq!((n.index, n.count), (1, 3));
        assert!(SplitName::parse(Path::new("model.gguf")).is_none());
        assert!(SplitName::parse(Path::new("m-00000-of-00003.gguf")).is_none());
        assert!(SplitName::parse(Path::new("m-00004-of-00003.gguf")).is_none());
    }
}
