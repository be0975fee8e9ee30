//! A parsed manifest resolved against the environment: `${VAR}` expanded,
//! relative paths taken from the manifest's folder, local inputs found and
//! their formats detected, verification settings merged per artifact.
//! Nothing is fetched or built here.

use std::fmt;
use std::path::{Path, PathBuf};

use super::error::{ManifestError, Problem};
use super::schema::{
    ArtifactSpec, Gates, Located, Manifest, Quantization, VerifyOverride, VerifySpec,
};
use super::yaml::{At, NodePath};
use crate::fetch::RepoRef;
use crate::formats::{detect, ModelFormat};

/// Perplexity context when a manifest gives none (llama-perplexity's).
pub const DEFAULT_CTX: u32 = 512;

/// `hf://ORG/REPO[@REVISION][/PATH]`: a Hub repo, and optionally one file
/// in it (a GGUF repo holds several).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HubSource {
    /// Repo and revision (`main` when not given).
    pub repo: RepoRef,
    /// A file of the repo, `/`-separated.
    pub file: Option<String>,
}

/// Why an `hf://` URL does not parse.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BadHubUrl(String);

impl fmt::Display for BadHubUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "`{}` is not a Hub model: write hf://ORG/REPO, hf://ORG/REPO@REVISION \
             or hf://ORG/REPO@REVISION/FILE.gguf",
            self.0
        )
    }
}

impl HubSource {
    /// Parses what follows `hf://`. The revision comes after the repo as in
    /// `huggingface_hub`'s `hf://` paths; a `/` in it is written `%2F`.
    pub fn parse(rest: &str) -> Result<HubSource, BadHubUrl> {
        let bad = || BadHubUrl(format!("hf://{rest}"));
        let mut parts = rest.splitn(3, '/');
        let org = parts.next().filter(|s| !s.is_empty()).ok_or_else(bad)?;
        let repo_rev = parts.next().filter(|s| !s.is_empty()).ok_or_else(bad)?;
        let file = parts.next().map(str::to_string);
        if file
            .as_deref()
            .is_some_and(|f| f.is_empty() || f.split('/').any(|s| s.is_empty() || s == ".."))
        {
            return Err(bad());
        }
        let id = format!("{org}/{}", repo_rev.replace("%2F", "/"));
        let repo = RepoRef::parse(&id).map_err(|_| bad())?;
        Ok(HubSource { repo, file })
    }
}

impl fmt::Display for HubSource {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "hf://{}@{}",
            self.repo.repo,
            self.repo.revision.replace('/', "%2F")
        )?;
        if let Some(file) = &self.file {
            write!(f, "/{file}")?;
        }
        Ok(())
    }
}

/// A model named by `from:` or `reference:`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ModelRef {
    /// On the Hub; fetched at run time.
    Hub(HubSource),
    /// On disk, with its format.
    Local {
        /// Absolute or manifest-relative path made whole.
        path: PathBuf,
        /// What it holds.
        format: ModelFormat,
    },
}

impl fmt::Display for ModelRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ModelRef::Hub(h) => h.fmt(f),
            ModelRef::Local { path, .. } => path.display().fmt(f),
        }
    }
}

/// Verification of one artifact, merged and resolved.
#[derive(Debug, Clone, PartialEq)]
pub struct ResolvedVerify {
    /// The text perplexity is measured on.
    pub text: PathBuf,
    /// The reference model; `None` is the source.
    pub reference: Option<ModelRef>,
    /// Context window.
    pub ctx: u32,
    /// Windows to score; `None` is all of the text.
    pub chunks: Option<u32>,
    /// Thresholds.
    pub gates: Gates,
}

/// One artifact, resolved.
#[derive(Debug, Clone)]
pub struct ResolvedArtifact {
    /// As written.
    pub spec: ArtifactSpec,
    /// The importance matrix file.
    pub imatrix: Option<PathBuf>,
    /// Its verification; `None` when it is not verified.
    pub verify: Option<ResolvedVerify>,
}

/// A manifest ready to run.
#[derive(Debug, Clone)]
pub struct ResolvedManifest {
    /// As parsed.
    pub manifest: Manifest,
    /// The manifest file.
    pub path: PathBuf,
    /// Its folder: relative paths start here.
    pub dir: PathBuf,
    /// The source model.
    pub source: ModelRef,
    /// The output folder.
    pub output: PathBuf,
    /// The artifacts, in manifest order.
    pub artifacts: Vec<ResolvedArtifact>,
}

impl ResolvedManifest {
    /// The artifact named `name`.
    pub fn artifact(&self, name: &str) -> Option<&ResolvedArtifact> {
        self.artifacts.iter().find(|a| a.spec.name == name)
    }
}

/// Checks the `${VAR}` references in `s` are well formed.
pub fn check_vars(s: &str) -> Result<(), String> {
    expand_vars(s, &|_| Some(String::new())).map(|_| ())
}

/// Replaces each `${NAME}` in `s` with `lookup(NAME)`; `$$` is a literal
/// `$`, and a `$` followed by anything else stays as it is.
pub fn expand_vars(s: &str, lookup: &dyn Fn(&str) -> Option<String>) -> Result<String, String> {
    let mut out = String::with_capacity(s.len());
    let mut rest = s;
    while let Some(i) = rest.find('$') {
        out.push_str(&rest[..i]);
        let after = &rest[i + 1..];
        if let Some(tail) = after.strip_prefix('$') {
            out.push('$');
            rest = tail;
        } else if let Some(body) = after.strip_prefix('{') {
            let end = body
                .find('}')
                .ok_or_else(|| "`${` is not closed with `}`".to_string())?;
            let name = &body[..end];
            let valid = name
                .chars()
                .next()
                .is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
                && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_');
            if !valid {
                return Err(format!(
                    "`${{{name}}}` is not an environment variable name \
                     (letters, digits and `_`, not starting with a digit)"
                ));
            }
            match lookup(name) {
                Some(v) => out.push_str(&v),
                None => return Err(format!("environment variable {name} is not set")),
            }
            rest = &body[end + 1..];
        } else {
            out.push('$');
            rest = after;
        }
    }
    out.push_str(rest);
    Ok(out)
}

struct Resolver<'m> {
    manifest: &'m Manifest,
    dir: PathBuf,
    env: &'m dyn Fn(&str) -> Option<String>,
    problems: Vec<Problem>,
}

impl Resolver<'_> {
    fn problem(&mut self, path: &NodePath, message: String) {
        self.problem_at(path, At::Value, message);
    }

    fn problem_at(&mut self, path: &NodePath, at: At, message: String) {
        let pos = self.manifest.pos(path, at);
        self.problems.push(Problem::new(pos, message));
    }

    /// Expands and joins a path-valued field to the manifest's folder.
    fn path(&mut self, field: &Located<String>, key: &str) -> Option<PathBuf> {
        let text = match expand_vars(&field.value, self.env) {
            Ok(t) => t,
            Err(msg) => {
                self.problem(&field.path, format!("`{key}`: {msg}"));
                return None;
            }
        };
        if text.trim().is_empty() {
            self.problem(
                &field.path,
                format!("`{key}` is empty once `{}` is expanded", field.value),
            );
            return None;
        }
        let p = if let Some(home) = text.strip_prefix("~/") {
            match (self.env)("HOME") {
                Some(h) => Path::new(&h).join(home),
                None => PathBuf::from(&text),
            }
        } else {
            PathBuf::from(&text)
        };
        let joined = if p.is_absolute() { p } else { self.dir.join(p) };
        // Drop `.` components so messages show clean paths.
        Some(
            joined
                .components()
                .filter(|c| !matches!(c, std::path::Component::CurDir))
                .collect(),
        )
    }

    fn file(&mut self, field: &Located<String>, key: &str, what: &str) -> Option<PathBuf> {
        let p = self.path(field, key)?;
        if !p.is_file() {
            let why = if p.exists() {
                "is not a file"
            } else {
                "does not exist"
            };
            self.problem(
                &field.path,
                format!("`{key}`: {what} {} {why}", p.display()),
            );
            return None;
        }
        Some(p)
    }

    fn model(&mut self, field: &Located<String>, key: &str) -> Option<ModelRef> {
        let expanded = match expand_vars(&field.value, self.env) {
            Ok(t) => t,
            Err(msg) => {
                self.problem(&field.path, format!("`{key}`: {msg}"));
                return None;
            }
        };
        if let Some(rest) = expanded.strip_prefix("hf://") {
            return match HubSource::parse(rest) {
                Ok(h) => Some(ModelRef::Hub(h)),
                Err(e) => {
                    self.problem(&field.path, format!("`{key}`: {e}"));
                    None
                }
            };
        }
        let path = self.path(field, key)?;
        if !path.exists() {
            self.problem(
                &field.path,
                format!("`{key}`: the model {} does not exist", path.display()),
            );
            return None;
        }
        match detect(&path) {
            Ok(format) => Some(ModelRef::Local { path, format }),
            Err(e) => {
                self.problem(
                    &field.path,
                    format!("`{key}`: not a model qforge reads: {e}"),
                );
                None
            }
        }
    }

    fn verify(
        &mut self,
        global: Option<&VerifySpec>,
        over: &VerifyOverride,
        artifact: &ArtifactSpec,
    ) -> Option<Option<ResolvedVerify>> {
        let merged = match (global, over) {
            (_, VerifyOverride::Skip) | (None, VerifyOverride::Inherit) => return Some(None),
            (Some(g), VerifyOverride::Inherit) => g.clone(),
            (None, VerifyOverride::Override(o)) => (**o).clone(),
            (Some(g), VerifyOverride::Override(o)) => VerifySpec {
                text: o.text.clone().or_else(|| g.text.clone()),
                reference: o.reference.clone().or_else(|| g.reference.clone()),
                ctx: o.ctx.or(g.ctx),
                chunks: o.chunks.or(g.chunks),
                gates: g.gates.overlaid(&o.gates),
            },
        };
        let Some(text_field) = merged.text.as_ref() else {
            let at = match over {
                VerifyOverride::Override(_) => artifact.path.key("verify"),
                _ => NodePath::root().key("verify"),
            };
            self.problem_at(
                &at,
                At::Key,
                format!(
                    "artifact `{}` is verified but no `text` is given: name the file \
                     perplexity is measured on (e.g. /usr/share/common-licenses/GPL-3)",
                    artifact.name
                ),
            );
            return None;
        };
        let text = self.file(text_field, "text", "the text")?;
        let reference = match &merged.reference {
            Some(r) if r.value == "source" => None,
            Some(r) => Some(self.model(r, "reference")?),
            None => None,
        };
        Some(Some(ResolvedVerify {
            text,
            reference,
            ctx: merged.ctx.unwrap_or(DEFAULT_CTX),
            chunks: merged.chunks,
            gates: merged.gates,
        }))
    }
}

/// Resolves `manifest`, read from `path`, against the environment `env`
/// (`std::env::var` in the CLI). `output` replaces the manifest's output
/// folder.
pub fn resolve(
    manifest: Manifest,
    path: &Path,
    env: &dyn Fn(&str) -> Option<String>,
    output: Option<&Path>,
) -> Result<ResolvedManifest, ManifestError> {
    // Relative stays relative (to the working folder), so messages and
    // reports show paths as the user gave them.
    let dir = match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
        _ => PathBuf::from("."),
    };
    let mut r = Resolver {
        manifest: &manifest,
        dir: dir.clone(),
        env,
        problems: Vec::new(),
    };
    let source = r.model(&manifest.from, "from");
    let output = match (output, &manifest.output) {
        (Some(o), _) => Some(o.to_path_buf()),
        (None, Some(o)) => r.path(o, "output"),
        (None, None) => {
            let stem = path
                .file_stem()
                .map(|s| s.to_string_lossy().into_owned())
                .unwrap_or_else(|| "manifest".into());
            Some(dir.join(format!("{stem}.out")))
        }
    };
    let mut artifacts = Vec::new();
    for a in &manifest.artifacts {
        let imatrix = match &a.quantization {
            Quantization::Gguf {
                imatrix: Some(m), ..
            } => r.file(m, "imatrix", "the importance matrix"),
            _ => None,
        };
        let verify = r.verify(manifest.verify.as_ref(), &a.verify, a);
        if let Some(verify) = verify {
            artifacts.push(ResolvedArtifact {
                spec: a.clone(),
                imatrix,
                verify,
            });
        }
    }
    if !r.problems.is_empty() {
        let mut problems = r.problems;
        problems.sort_by_key(|p| p.pos);
        problems.dedup();
        return Err(ManifestError::new(path, problems));
    }
    Ok(ResolvedManifest {
        path: path.to_path_buf(),
        dir,
        source: source.expect("no problems"),
        output: output.expect("no problems"),
        artifacts,
        manifest,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hub_urls() {
        let h = HubSource::parse("org/repo").unwrap();
        assert_eq!(
            (h.repo.repo.as_str(), h.repo.revision.as_str()),
            ("org/repo", "main")
        );
        assert_eq!(h.file, None);
        let h = HubSource::parse("org/repo@v1.0/sub/model-Q8_0.gguf").unwrap();
        assert_eq!(h.repo.revision, "v1.0");
        assert_eq!(h.file.as_deref(), Some("sub/model-Q8_0.gguf"));
        assert_eq!(h.to_string(), "hf://org/repo@v1.0/sub/model-Q8_0.gguf");
        let h = HubSource::parse("org/repo@refs%2Fpr%2F1").unwrap();
        assert_eq!(h.repo.revision, "refs/pr/1");
        for bad in [
            "",
            "org",
            "org/",
            "/repo",
            "org/repo@",
            "org/repo/../x",
            "org/re po",
        ] {
            assert!(HubSource::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn variables() {
        let env = |k: &str| (k == "A").then(|| "x".to_string());
        assert_eq!(expand_vars("${A}/b", &env).unwrap(), "x/b");
        assert_eq!(expand_vars("$$A $B", &env).unwrap(), "$A $B");
        assert_eq!(
            expand_vars("${B}", &env).unwrap_err(),
            "environment variable B is not set"
        );
        assert!(expand_vars("${A", &env).is_err());
        assert!(expand_vars("${1A}", &env).is_err());
    }
}
