//! Read-only memory maps of model files: the one place this crate uses
//! `unsafe`.

use std::fs::File;
use std::path::Path;

use memmap2::Mmap;

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
}
