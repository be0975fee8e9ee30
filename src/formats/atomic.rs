//! Atomic outputs: write to a temporary name in the target folder, fsync,
//! rename. A failed or killed run leaves no half-written file under the
//! final name; a dropped, uncommitted output removes its temporary file.

use std::fs::{self, File};
use std::io::{self, BufWriter, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

use super::error::{FormatError, Result};

static COUNTER: AtomicU64 = AtomicU64::new(0);

/// The temporary sibling of `path`: hidden, named after the final file, the
/// process and a counter, so concurrent writers never share one.
pub fn temp_path_for(path: &Path) -> PathBuf {
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| "output".into());
    let n = COUNTER.fetch_add(1, Ordering::Relaxed);
    path.with_file_name(format!(".{name}.qforge-{}-{n}.tmp", std::process::id()))
}

/// A file being written under a temporary name until [`AtomicFile::commit`].
pub struct AtomicFile {
    final_path: PathBuf,
    temp_path: PathBuf,
    out: Option<BufWriter<File>>,
}

impl AtomicFile {
    /// Creates the temporary file next to `path`.
    pub fn create(path: impl AsRef<Path>) -> Result<AtomicFile> {
        let final_path = path.as_ref().to_path_buf();
        let temp_path = temp_path_for(&final_path);
        let file = File::options()
            .write(true)
            .create_new(true)
            .open(&temp_path)
            .map_err(|e| FormatError::io(&final_path, e))?;
        Ok(AtomicFile {
            final_path,
            temp_path,
            out: Some(BufWriter::with_capacity(1 << 20, file)),
        })
    }

    /// The name the file will have once committed.
    pub fn final_path(&self) -> &Path {
        &self.final_path
    }

    /// Flushes, fsyncs and renames the file to its final name, then fsyncs
    /// the folder so the rename itself is durable.
    pub fn commit(mut self) -> Result<()> {
        let out = self.out.take().expect("commit is called once");
        let path = self.final_path.clone();
        let file = out
            .into_inner()
            .map_err(|e| FormatError::io(&path, e.into_error()))?;
        file.sync_all().map_err(|e| FormatError::io(&path, e))?;
        drop(file);
        fs::rename(&self.temp_path, &path).map_err(|e| FormatError::io(&path, e))?;
        sync_parent(&path);
        Ok(())
    }
}

impl Write for AtomicFile {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.out.as_mut().expect("not committed").write(buf)
    }

    fn write_all(&mut self, buf: &[u8]) -> io::Result<()> {
        self.out.as_mut().expect("not committed").write_all(buf)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.out.as_mut().expect("not committed").flush()
    }
}

impl Drop for AtomicFile {
    fn drop(&mut self) {
        if self.out.take().is_some() {
            let _ = fs::remove_file(&self.temp_path);
        }
    }
}

/// Best-effort fsync of the folder holding `path` (makes a rename durable on
/// Linux; a no-op where folders cannot be opened).
pub fn sync_parent(path: &Path) {
    let parent = match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    };
    if let Ok(dir) = File::open(parent) {
        let _ = dir.sync_all();
    }
}

/// A folder being filled under a temporary name until
/// [`AtomicDir::commit`] renames it into place.
pub struct AtomicDir {
    final_path: PathBuf,
    temp_path: PathBuf,
    committed: bool,
}

impl AtomicDir {
    /// Creates the temporary folder next to `path`.
    pub fn create(path: impl AsRef<Path>) -> Result<AtomicDir> {
        let final_path = path.as_ref().to_path_buf();
        let temp_path = temp_path_for(&final_path);
        fs::create_dir(&temp_path).map_err(|e| FormatError::io(&final_path, e))?;
        Ok(AtomicDir {
            final_path,
            temp_path,
            committed: false,
        })
    }

    /// Where to write the folder's files until commit.
    pub fn path(&self) -> &Path {
        &self.temp_path
    }

    /// Writes one small file into the folder; `name` may name a subfolder
    /// (`additional_chat_templates/x.jinja`), which is created.
    pub fn write_file(&self, name: &str, bytes: &[u8]) -> Result<()> {
        if let Some(parent) = Path::new(name)
            .parent()
            .filter(|p| !p.as_os_str().is_empty())
        {
            fs::create_dir_all(self.temp_path.join(parent))
                .map_err(|e| FormatError::io(&self.final_path.join(parent), e))?;
        }
        let mut f = AtomicFile::create(self.temp_path.join(name))?;
        f.write_all(bytes)
            .map_err(|e| FormatError::io(&self.final_path.join(name), e))?;
        f.commit()
    }

    /// Moves the folder to its final name. An existing folder there is
    /// replaced: it is moved aside first and removed once the new one is in
    /// place.
    pub fn commit(mut self) -> Result<()> {
        let old = if fs::symlink_metadata(&self.final_path).is_ok() {
            let aside = temp_path_for(&self.final_path);
            fs::rename(&self.final_path, &aside)
                .map_err(|e| FormatError::io(&self.final_path, e))?;
            Some(aside)
        } else {
            None
        };
        if let Err(e) = fs::rename(&self.temp_path, &self.final_path) {
            if let Some(aside) = &old {
                let _ = fs::rename(aside, &self.final_path);
            }
            return Err(FormatError::io(&self.final_path, e));
        }
        self.committed = true;
        sync_parent(&self.final_path);
        if let Some(aside) = old {
            let _ = if aside.is_dir() {
                fs::remove_dir_all(&aside)
            } else {
                fs::remove_file(&aside)
            };
        }
        Ok(())
    }
}

impl Drop for AtomicDir {
    fn drop(&mut self) {
        if !self.committed {
            let _ = fs::remove_dir_all(&self.temp_path);
        }
    }
}
