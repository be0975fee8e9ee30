//! `qforge run --check`: every artifact on disk against the lockfile, byte
//! for byte, without building anything; and `qforge report`, which gathers
//! the output folders of several `--only` runs (CI runners) into one.

use std::collections::BTreeMap;
use std::fs;
use std::path::{Path, PathBuf};

use super::lock::{json_sha256, list_files, listing_sha256, slash_path, Lockfile};
use super::report::Report;
use super::resolve::ResolvedManifest;
use super::runner::{select, settings, RunError};
use super::schema::{output_names, ArtifactFormat};
use crate::hashing::sha256_file;

/// What `--check` found for one artifact.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CheckStatus {
    /// Every file is as the lockfile says, and the settings are current.
    Ok,
    /// The lockfile has no entry for it.
    NotBuilt,
    /// Its files are intact but the manifest (or qforge) changed since:
    /// `qforge run` would rebuild it.
    Stale(String),
    /// Files that differ from the lockfile: each with what is wrong.
    Damaged(Vec<String>),
}

impl CheckStatus {
    /// Intact and current.
    pub fn ok(&self) -> bool {
        *self == CheckStatus::Ok
    }

    /// In words.
    pub fn describe(&self) -> String {
        match self {
            CheckStatus::Ok => "ok".into(),
            CheckStatus::NotBuilt => "not built (no lockfile entry)".into(),
            CheckStatus::Stale(why) => format!("stale: {why}"),
            CheckStatus::Damaged(list) => format!("damaged: {}", list.join("; ")),
        }
    }
}

/// One artifact's check.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CheckResult {
    /// Its name.
    pub name: String,
    /// What was found.
    pub status: CheckStatus,
}

/// Checks the files of one lockfile entry in `dir` (an output folder or a
/// part of one): missing, resized, re-hashed, or unexpected files.
fn damage(
    dir: &Path,
    name: &str,
    format: ArtifactFormat,
    lock: &super::lock::ArtifactLock,
) -> Vec<String> {
    let mut out = Vec::new();
    let mut on_disk = Vec::new();
    for top in output_names(name, format) {
        if let Ok(files) = list_files(&dir.join(&top), dir) {
            on_disk.extend(files.iter().map(|p| slash_path(p)));
        }
    }
    for f in &lock.outputs {
        let p = dir.join(&f.path);
        match fs::metadata(&p) {
            Err(_) => out.push(format!("{} is missing", f.path)),
            Ok(md) if md.len() != f.size => out.push(format!(
                "{} is {} bytes, the lockfile says {}",
                f.path,
                md.len(),
                f.size
            )),
            Ok(_) => match sha256_file(&p) {
                Ok(h) if h == f.sha256 => {}
                Ok(h) => out.push(format!(
                    "{} has sha256 {h}, the lockfile says {}",
                    f.path, f.sha256
                )),
                Err(e) => out.push(format!("{} cannot be read: {e}", f.path)),
            },
        }
    }
    for p in on_disk {
        if !lock.outputs.iter().any(|f| f.path == p) {
            out.push(format!("{p} is not in the lockfile"));
        }
    }
    if format != ArtifactFormat::Gguf
        && out.is_empty()
        && listing_sha256(&lock.outputs) != lock.sha256
    {
        out.push("the lockfile's artifact hash does not match its file list".into());
    }
    out
}

/// Checks every selected artifact in the output folder against the
/// lockfile and the manifest. Builds nothing, fetches nothing.
pub fn check(m: &ResolvedManifest, only: &[String]) -> Result<Vec<CheckResult>, RunError> {
    let selected = select(m, only)?;
    let lock = Lockfile::read(&m.output)
        .map_err(RunError)?
        .ok_or_else(|| {
            RunError(format!(
                "{} has no {}: run `qforge run {}` first",
                m.output.display(),
                super::lock::LOCK_FILE,
                m.path.display()
            ))
        })?;
    Ok(selected
        .iter()
        .map(|a| {
            let name = a.spec.name.clone();
            let Some(entry) = lock.artifacts.get(&name) else {
                return CheckResult {
                    name,
                    status: CheckStatus::NotBuilt,
                };
            };
            let damaged = damage(&m.output, &name, a.spec.format, entry);
            let status = if !damaged.is_empty() {
                CheckStatus::Damaged(damaged)
            } else if json_sha256(&settings(m, a)) != entry.settings_sha256 {
                CheckStatus::Stale("its settings in the manifest changed since it was built".into())
            } else if lock.qforge_version != crate::VERSION {
                CheckStatus::Stale(format!(
                    "built by qforge {}, this is qforge {}",
                    lock.qforge_version,
                    crate::VERSION
                ))
            } else {
                CheckStatus::Ok
            };
            CheckResult { name, status }
        })
        .collect())
}

/// Moves `from` to `to`, replacing what is there (rename, or copy and
/// delete across file systems).
fn move_into(from: &Path, to: &Path) -> std::io::Result<()> {
    if fs::symlink_metadata(to).is_ok() {
        if to.is_dir() {
            fs::remove_dir_all(to)?;
        } else {
            fs::remove_file(to)?;
        }
    }
    if let Some(parent) = to.parent() {
        fs::create_dir_all(parent)?;
    }
    if fs::rename(from, to).is_ok() {
        return Ok(());
    }
    copy_tree(from, to)?;
    if from.is_dir() {
        fs::remove_dir_all(from)
    } else {
        fs::remove_file(from)
    }
}

fn copy_tree(from: &Path, to: &Path) -> std::io::Result<()> {
    if from.is_dir() {
        fs::create_dir_all(to)?;
        for e in fs::read_dir(from)? {
            let e = e?;
            copy_tree(&e.path(), &to.join(e.file_name()))?;
        }
        Ok(())
    } else {
        fs::copy(from, to).map(|_| ())
    }
}

/// What gathering parts did.
#[derive(Debug, Clone)]
pub struct MergeOutcome {
    /// The merged report (also written).
    pub report: Report,
    /// The merged lockfile (also written).
    pub lock: Lockfile,
    /// Artifacts taken from each part.
    pub taken: Vec<(PathBuf, Vec<String>)>,
}

/// Gathers the output folders of `--only` runs (`parts`) into the
/// manifest's output folder: checks each part's artifacts against its own
/// lockfile, moves them in, and writes one lockfile and one report over
/// all of them. Parts must have been built from the same source.
pub fn merge(m: &ResolvedManifest, parts: &[PathBuf]) -> Result<MergeOutcome, RunError> {
    let output = &m.output;
    fs::create_dir_all(output)
        .map_err(|e| RunError(format!("cannot create {}: {e}", output.display())))?;
    let mut lock = Lockfile::read(output).map_err(RunError)?;
    let mut report = Report::read(output);
    let mut rows: BTreeMap<String, super::report::ArtifactReport> = report
        .as_ref()
        .map(|r| {
            r.artifacts
                .iter()
                .map(|a| (a.name.clone(), a.clone()))
                .collect()
        })
        .unwrap_or_default();
    let mut taken = Vec::new();
    for part in parts {
        let part_lock = Lockfile::read(part).map_err(RunError)?.ok_or_else(|| {
            RunError(format!(
                "{} has no {}: it is not the output folder of a qforge run",
                part.display(),
                super::lock::LOCK_FILE
            ))
        })?;
        let part_report = Report::read(part);
        match &lock {
            Some(l) if l.source.sha256 != part_lock.source.sha256 => {
                return Err(RunError(format!(
                    "{} was built from another source than the others (source sha256 {}, expected {})",
                    part.display(),
                    part_lock.source.sha256,
                    l.source.sha256
                )));
            }
            _ => {}
        }
        let mut names = Vec::new();
        for (name, entry) in &part_lock.artifacts {
            let Some(a) = m.artifact(name) else {
                return Err(RunError(format!(
                    "{} holds artifact `{name}`, which {} does not list",
                    part.display(),
                    m.path.display()
                )));
            };
            let same_folder = fs::canonicalize(part).ok() == fs::canonicalize(output).ok();
            let damaged = damage(part, name, a.spec.format, entry);
            if !damaged.is_empty() {
                return Err(RunError(format!(
                    "artifact `{name}` in {}: {}",
                    part.display(),
                    damaged.join("; ")
                )));
            }
            if !same_folder {
                for top in output_names(name, a.spec.format) {
                    let from = part.join(&top);
                    if from.exists() {
                        move_into(&from, &output.join(&top)).map_err(|e| {
                            RunError(format!(
                                "moving {} into {}: {e}",
                                from.display(),
                                output.display()
                            ))
                        })?;
                    }
                }
            }
            if let Some(row) = part_report.as_ref().and_then(|r| r.artifact(name)) {
                rows.insert(name.clone(), row.clone());
            }
            names.push(name.clone());
        }
        let l = lock.get_or_insert_with(|| Lockfile {
            artifacts: BTreeMap::new(),
            ..part_lock.clone()
        });
        for name in &names {
            l.artifacts
                .insert(name.clone(), part_lock.artifacts[name].clone());
        }
        if report.is_none() {
            report = part_report.clone();
        }
        taken.push((part.clone(), names));
    }
    let lock = lock.ok_or_else(|| RunError("no parts and no lockfile to report on".into()))?;
    let mut report = report.ok_or_else(|| {
        RunError("none of the parts has a report.json: they are not qforge run outputs".into())
    })?;
    report.artifacts = m
        .artifacts
        .iter()
        .filter_map(|a| rows.remove(&a.spec.name))
        .collect();
    report.pass = report.artifacts.iter().all(|a| a.pass);
    lock.write(output)
        .map_err(|e| RunError(format!("writing the lockfile: {e}")))?;
    report
        .write(output)
        .map_err(|e| RunError(format!("writing the report: {e}")))?;
    Ok(MergeOutcome {
        report,
        lock,
        taken,
    })
}
