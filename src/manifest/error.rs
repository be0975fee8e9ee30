//! Manifest errors: every problem found, each with its line and column.

use std::fmt;
use std::path::{Path, PathBuf};

use super::yaml::Pos;

/// One thing wrong with a manifest.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Problem {
    /// Where, in the manifest's text.
    pub pos: Pos,
    /// What, in words a user can act on.
    pub message: String,
}

impl Problem {
    /// A problem at `pos`.
    pub fn new(pos: Pos, message: String) -> Problem {
        Problem { pos, message }
    }
}

impl fmt::Display for Problem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.pos, self.message)
    }
}

/// A manifest that cannot be run, and why. Nothing has run when this is
/// returned.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ManifestError {
    /// The manifest file.
    pub file: PathBuf,
    /// Its problems, in the order of the text.
    pub problems: Vec<Problem>,
}

impl ManifestError {
    /// Problems of `file`.
    pub fn new(file: &Path, problems: Vec<Problem>) -> ManifestError {
        ManifestError {
            file: file.to_path_buf(),
            problems,
        }
    }

    /// A problem that is not about the manifest's text (the file cannot be
    /// read).
    pub fn whole_file(file: &Path, message: String) -> ManifestError {
        ManifestError::new(
            file,
            vec![Problem::new(Pos { line: 1, column: 1 }, message)],
        )
    }
}

impl fmt::Display for ManifestError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, p) in self.problems.iter().enumerate() {
            if i > 0 {
                writeln!(f)?;
            }
            write!(f, "{}:{p}", self.file.display())?;
        }
        Ok(())
    }
}

impl std::error::Error for ManifestError {}
