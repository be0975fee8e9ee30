//! Manifests: one model and the artifacts made from it, in the spirit of
//! Ollama's Modelfile, run end to end by `qforge run`.
//!
//! - [`schema`]: the YAML schema and its parser (line and column for every
//!   problem, "did you mean" for unknown keys); [`resolve`]: the manifest
//!   against the environment (`${VAR}`, paths, formats of local inputs).
//! - [`stages`]: the four stage traits (fetch, convert, quantize, verify)
//!   and where the real stages plug in; [`steps`]: which stage calls make
//!   each artifact.
//! - [`runner`]: `qforge run`, content addressed against [`lock`]
//!   (`qforge.lock`), writing [`report`] (`report.json`, `report.md`, the
//!   [`svg`] chart) and an Ollama Modelfile per GGUF ([`modelfile`]);
//!   [`check`]: `--check` and the merge of CI parts; [`plan`]: CI jobs.
//!
//! The schema is documented for users in `manifests/README.md`.

pub mod check;
pub mod error;
pub mod lock;
pub mod measure;
pub mod modelfile;
pub mod plan;
pub mod report;
pub mod resolve;
pub mod runner;
pub mod schema;
pub mod stages;
pub mod steps;
pub mod suggest;
pub mod svg;
pub mod yaml;

use std::path::Path;

pub use error::{ManifestError, Problem};
pub use resolve::{resolve, ModelRef, ResolvedArtifact, ResolvedManifest, ResolvedVerify};
pub use runner::{run, RunError, RunEvent, RunObserver, RunOptions, RunOutcome};
pub use schema::{ArtifactFormat, ArtifactSpec, Gates, Manifest, Quantization};
pub use stages::Stages;

/// Reads and parses the manifest at `path`.
pub fn load(path: &Path) -> Result<Manifest, ManifestError> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| ManifestError::whole_file(path, format!("cannot read the manifest: {e}")))?;
    Manifest::parse(&text, path)
}

/// Reads, parses and resolves the manifest at `path` against the process
/// environment; `output` replaces its output folder.
pub fn load_resolved(
    path: &Path,
    output: Option<&Path>,
) -> Result<ResolvedManifest, ManifestError> {
    let manifest = load(path)?;
    resolve(manifest, path, &|k| std::env::var(k).ok(), output)
}
