//! `qforge plan`: the artifacts as independent jobs, for a CI system's job
//! matrix. Reads no model and fetches nothing.

use serde::Serialize;
use serde_json::Value as Json;

use super::lock::json_sha256;
use super::resolve::{ModelRef, ResolvedManifest};
use super::runner::{quantization_label, settings};
use super::schema::{output_names, Quantization};

/// One artifact as a CI job.
#[derive(Debug, Clone, Serialize)]
pub struct Job {
    /// The artifact's name.
    pub name: String,
    /// gguf, mlx or safetensors.
    pub format: String,
    /// Its quantization in short.
    pub quantization: String,
    /// Its settings, as hashed into the lockfile.
    pub settings: Json,
    /// SHA-256 of `settings` (the lockfile's `settings_sha256`).
    pub settings_sha256: String,
    /// What it reads: the source, and its importance matrix, text and
    /// reference when it has them.
    pub inputs: Vec<String>,
    /// What it writes into the output folder.
    pub outputs: Vec<String>,
    /// Whether it is verified.
    pub verify: bool,
    /// The command that builds it alone.
    pub command: String,
}

/// The jobs of `m`, in manifest order; `manifest_arg` is the manifest path
/// as the jobs' commands should name it.
pub fn jobs(m: &ResolvedManifest, manifest_arg: &str) -> Vec<Job> {
    let source = match &m.source {
        ModelRef::Hub(h) => h.to_string(),
        ModelRef::Local { .. } => m.manifest.from.value.clone(),
    };
    m.artifacts
        .iter()
        .map(|a| {
            let s = settings(m, a);
            let mut inputs = vec![source.clone()];
            if let Quantization::Gguf {
                imatrix: Some(i), ..
            } = &a.spec.quantization
            {
                inputs.push(i.value.clone());
            }
            if let Some(v) = &a.verify {
                inputs.push(v.text.display().to_string());
                if let Some(r) = &v.reference {
                    inputs.push(r.to_string());
                }
            }
            Job {
                name: a.spec.name.clone(),
                format: a.spec.format.name().to_string(),
                quantization: quantization_label(a),
                settings_sha256: json_sha256(&s),
                settings: s,
                inputs,
                outputs: output_names(&a.spec.name, a.spec.format),
                verify: a.verify.is_some(),
                command: format!(
                    "qforge run {} --only {}",
                    shell_quote(manifest_arg),
                    a.spec.name
                ),
            }
        })
        .collect()
}

/// Quotes a word for a POSIX shell when it needs it.
fn shell_quote(s: &str) -> String {
    if !s.is_empty()
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"/._-+=:@,".contains(&b))
    {
        s.to_string()
    } else {
        format!("'{}'", s.replace('\'', r"'\''"))
    }
}
