//! Read-only memory maps of model files: the one place this crate uses
//! `unsafe`.

use std::fs::File;
use std::path::Path;

use memmap2::{Mmap, UncheckedAdvice};

use super::error::{FormatError, Result};

/// A file mapped read-only, or an empty file (which cannot be mapped).
#[derive(Debug)]
pub struct MappedFile {
    map: Option<Mmap>,
}

impl MappedFile {
    /// Maps `path` read-only.
    pub fn open(path: &Path) -> Result<MappedFile> {
        let file = File::open(path).map_err(|e| FormatError::io(path, e))?;
        let len = file.metadata().map_err(|e| FormatError::io(path, e))?.len();
        if len == 0 {
            return Ok(MappedFile { map: None });
        }
        // SAFETY: the map is read-only and private to this process. Another
        // process truncating or rewriting the file while it is mapped would
        // change the bytes under us (or fault on access past the new end);
        // qforge never writes to its inputs, it writes outputs through a
        // temporary file and a rename, which leaves mapped inputs intact.
        let map = unsafe { Mmap::map(&file) }.map_err(|e| FormatError::io(path, e))?;
        Ok(MappedFile { map: Some(map) })
    }

    /// The mapped bytes.
    pub fn bytes(&self) -> &[u8] {
        self.map.as_deref().unwrap_or(&[])
    }

    /// Tells the kernel that the whole pages inside `data` (a slice of this
    /// map) will not be read again soon, so it can drop them from this
    /// process's resident set. Reading them later faults them back in from
    /// the file. Slices from elsewhere are ignored; so are errors (this is
    /// advice only).
    pub fn release(&self, data: &[u8]) {
        let Some(map) = &self.map else { return };
        let base = map.as_ptr() as usize;
        let start = data.as_ptr() as usize;
        if start < base || start + data.len() > base + map.len() {
            return;
        }
        const PAGE: usize = 4096;
        let first = (start - base).next_multiple_of(PAGE);
        let end = (start - base + data.len()) / PAGE * PAGE;
        if end > first {
            // SAFETY: the map is read-only and private and was never
            // written, so MADV_DONTNEED only drops clean pages; any later
            // access reads the same bytes back from the file (see `open` for
            // why the file does not change under us). References into the
            // range stay valid: the mapping itself is untouched.
            let _ = unsafe {
                map.unchecked_advise_range(UncheckedAdvice::DontNeed, first, end - first)
            };
        }
    }
}

/// Models whose tensor bytes are mapped files: a writer that is done with a
/// tensor hands its bytes back so that reading a model never keeps more
/// than a few tensors resident.
pub trait ReleasePages: Sync + std::fmt::Debug {
    /// Releases the mapped pages under `data`, if this model maps them.
    fn release(&self, data: &[u8]);
}
