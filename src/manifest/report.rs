//! `report.json` and `report.md`: one row per artifact — size, bits per
//! weight, perplexity, KL divergence, top-1 agreement, tokens/s, peak
//! memory, pass/fail, sha256 — and the gates each was held to.

use std::fmt::Write as _;
use std::path::Path;

use serde::{Deserialize, Serialize};

use super::lock::write_atomic;
use super::schema::Gates;
use super::stages::Measurements;

/// `report.json`'s name.
pub const REPORT_JSON: &str = "report.json";
/// `report.md`'s name.
pub const REPORT_MD: &str = "report.md";
/// The chart's name.
pub const REPORT_SVG: &str = "report.svg";

/// The whole report.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Report {
    /// The qforge that wrote it.
    pub qforge_version: String,
    /// The manifest's file name.
    pub manifest: String,
    /// The model's name (manifest `name`, else the manifest's file stem).
    pub title: String,
    /// `from:` as written.
    pub source: String,
    /// The Hub commit of the source.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub commit: Option<String>,
    /// One entry per artifact, in manifest order.
    pub artifacts: Vec<ArtifactReport>,
    /// Every artifact built and passed its gates.
    pub pass: bool,
}

/// What happened to an artifact on this run.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Status {
    /// Built on this run.
    Built,
    /// Already on disk with the same settings and inputs.
    UpToDate,
    /// A step failed.
    Failed,
    /// Not in this run (`--only`), no earlier result.
    NotBuilt,
}

impl Status {
    /// Words for tables.
    pub fn name(self) -> &'static str {
        match self {
            Status::Built => "built",
            Status::UpToDate => "up to date",
            Status::Failed => "failed",
            Status::NotBuilt => "not built",
        }
    }
}

/// One artifact's row.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ArtifactReport {
    /// Its name.
    pub name: String,
    /// gguf, mlx or safetensors.
    pub format: String,
    /// Its quantization in short (`Q4_K_M`, `4-bit g64`, `bf16`).
    pub quantization: String,
    /// What this run did with it.
    pub status: Status,
    /// Its main path, relative to the output folder.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub path: Option<String>,
    /// Bytes on disk.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub size: Option<u64>,
    /// Tensor bits per weight.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bits_per_weight: Option<f64>,
    /// The artifact's hash (see the lockfile).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sha256: Option<String>,
    /// Its verification, if it is verified and got that far.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub verify: Option<VerifyRecord>,
    /// Each gate it was held to.
    #[serde(default)]
    pub gates: Vec<GateResult>,
    /// Built (or up to date) and every gate held.
    pub pass: bool,
    /// The step that failed and why.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

/// A verification and what it measured.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct VerifyRecord {
    /// SHA-256 of the verification's settings, the artifact and the inputs
    /// (text, reference): equal means the measurements still stand.
    pub key: String,
    /// The reference, as written (`source` for the source model).
    pub reference: String,
    /// The text file.
    pub text: String,
    /// Context window.
    pub ctx: u32,
    /// Windows scored (`None`: all).
    pub chunks: Option<u32>,
    /// The numbers.
    pub measurements: Measurements,
}

/// One gate against its measurement.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct GateResult {
    /// The gate (`max_kld`).
    pub gate: String,
    /// Its limit.
    pub limit: f64,
    /// The measured value (`None`: not measured, which fails).
    pub value: Option<f64>,
    /// Whether it held.
    pub pass: bool,
}

impl GateResult {
    /// The gate in words: `max_kld: 0.0123 > 0.01`.
    pub fn describe(&self) -> String {
        match self.value {
            None => format!("{}: not measured", self.gate),
            Some(v) => {
                let op = match (self.gate.starts_with("max"), self.pass) {
                    (true, true) => "<=",
                    (true, false) => ">",
                    (false, true) => ">=",
                    (false, false) => "<",
                };
                format!("{}: {} {op} {}", self.gate, fmt_num(v), fmt_num(self.limit))
            }
        }
    }
}

/// Holds `m` to `gates`.
pub fn evaluate(gates: &Gates, m: &Measurements) -> Vec<GateResult> {
    gates
        .set()
        .into_iter()
        .map(|(gate, limit)| {
            let value = match gate {
                "max_ppl" => m.ppl,
                "max_ppl_ratio" => m.ppl_ratio,
                "max_kld" => m.kld_mean,
                "min_top1" => m.top1,
                "min_gen_tok_s" => m.gen_tok_s,
                "min_prompt_tok_s" => m.prompt_tok_s,
                _ => None,
            };
            let pass = value.is_some_and(|v| {
                if gate.starts_with("max") {
                    v <= limit
                } else {
                    v >= limit
                }
            });
            GateResult {
                gate: gate.to_string(),
                limit,
                value,
                pass,
            }
        })
        .collect()
}

/// A number in about four significant digits, without float noise.
pub fn fmt_num(v: f64) -> String {
    let a = v.abs();
    if a == 0.0 {
        "0".into()
    } else if a >= 1000.0 {
        format!("{v:.0}")
    } else if a >= 100.0 {
        format!("{v:.1}")
    } else if a >= 1.0 {
        format!("{v:.3}")
    } else if a >= 0.001 {
        format!("{v:.4}")
    } else {
        format!("{v:.2e}")
    }
}

/// Bytes in binary units, as memory is usually given.
pub fn fmt_bytes(n: u64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut v = n as f64;
    let mut u = 0;
    while v >= 1024.0 && u + 1 < UNITS.len() {
        v /= 1024.0;
        u += 1;
    }
    if u == 0 {
        format!("{n} B")
    } else {
        format!("{v:.1} {}", UNITS[u])
    }
}

impl Report {
    /// Reads `report.json` from `dir`, if there is a readable one.
    pub fn read(dir: &Path) -> Option<Report> {
        let text = std::fs::read_to_string(dir.join(REPORT_JSON)).ok()?;
        serde_json::from_str(&text).ok()
    }

    /// The entry of artifact `name`.
    pub fn artifact(&self, name: &str) -> Option<&ArtifactReport> {
        self.artifacts.iter().find(|a| a.name == name)
    }

    /// Writes report.json, report.md and report.svg into `dir`.
    pub fn write(&self, dir: &Path) -> std::io::Result<()> {
        let mut json = serde_json::to_string_pretty(self).expect("reports serialize");
        json.push('\n');
        write_atomic(&dir.join(REPORT_JSON), json.as_bytes())?;
        write_atomic(&dir.join(REPORT_SVG), super::svg::chart(self).as_bytes())?;
        write_atomic(&dir.join(REPORT_MD), self.markdown().as_bytes())
    }

    /// The table's header and rows, as text cells.
    pub fn table(&self) -> (Vec<&'static str>, Vec<Vec<String>>) {
        let header = vec![
            "artifact",
            "format",
            "size",
            "bits/weight",
            "ppl",
            "KLD",
            "top-1",
            "prompt tok/s",
            "gen tok/s",
            "peak memory",
            "result",
            "sha256",
        ];
        let dash = || "–".to_string();
        let opt = |v: Option<f64>| v.map_or_else(dash, fmt_num);
        let rows = self
            .artifacts
            .iter()
            .map(|a| {
                let m = a.verify.as_ref().map(|v| &v.measurements);
                let get = |f: fn(&Measurements) -> Option<f64>| opt(m.and_then(f));
                let ppl = match (m.and_then(|m| m.ppl), m.and_then(|m| m.ppl_err)) {
                    (Some(p), Some(e)) => format!("{} ± {}", fmt_num(p), fmt_num(e)),
                    (Some(p), None) => fmt_num(p),
                    _ => dash(),
                };
                let top1 = m
                    .and_then(|m| m.top1)
                    .map_or_else(dash, |t| format!("{:.1}%", t * 100.0));
                let result = match (a.status, a.pass) {
                    (Status::Failed, _) => "**FAILED**".to_string(),
                    (Status::NotBuilt, _) => "not built".to_string(),
                    (_, true) => "pass".to_string(),
                    (_, false) => "**FAIL**".to_string(),
                };
                vec![
                    a.name.clone(),
                    format!("{} {}", a.format, a.quantization),
                    a.size.map_or_else(dash, fmt_bytes),
                    a.bits_per_weight.map_or_else(dash, |b| format!("{b:.2}")),
                    ppl,
                    get(|m| m.kld_mean),
                    top1,
                    get(|m| m.prompt_tok_s),
                    get(|m| m.gen_tok_s),
                    m.and_then(|m| m.peak_rss).map_or_else(dash, fmt_bytes),
                    result,
                    a.sha256
                        .as_deref()
                        .map_or_else(dash, |s| format!("`{}`", &s[..s.len().min(12)])),
                ]
            })
            .collect();
        (header, rows)
    }

    /// report.md.
    pub fn markdown(&self) -> String {
        let mut md = String::new();
        let _ = writeln!(md, "# {}\n", self.title);
        let _ = write!(md, "Source: `{}`", self.source);
        if let Some(c) = &self.commit {
            let _ = write!(md, " (commit `{c}`)");
        }
        let _ = writeln!(
            md,
            ". Manifest `{}`, qforge {}.\n",
            self.manifest, self.qforge_version
        );
        let (header, rows) = self.table();
        let _ = writeln!(md, "| {} |", header.join(" | "));
        let _ = writeln!(
            md,
            "|{}|",
            header
                .iter()
                .enumerate()
                .map(|(i, _)| if (2..10).contains(&i) {
                    " ---: "
                } else {
                    " --- "
                })
                .collect::<Vec<_>>()
                .join("|")
        );
        for r in rows {
            let cells: Vec<String> = r.iter().map(|c| c.replace('|', "\\|")).collect();
            let _ = writeln!(md, "| {} |", cells.join(" | "));
        }
        let _ = writeln!(md, "\n![quality against size]({REPORT_SVG})\n");
        let _ = writeln!(md, "## Gates\n");
        for a in &self.artifacts {
            if let Some(e) = &a.error {
                let _ = writeln!(md, "- **{}**: failed: {}", a.name, e.replace('\n', " "));
                continue;
            }
            if a.gates.is_empty() {
                let what = if a.verify.is_some() {
                    "verified, no gates"
                } else {
                    "not verified"
                };
                let _ = writeln!(md, "- {}: {what}", a.name);
                continue;
            }
            let gates: Vec<String> = a
                .gates
                .iter()
                .map(|g| {
                    if g.pass {
                        g.describe()
                    } else {
                        format!("**{}**", g.describe())
                    }
                })
                .collect();
            let _ = writeln!(md, "- {}: {}", a.name, gates.join(", "));
        }
        let samples: Vec<(&str, &str)> = self
            .artifacts
            .iter()
            .filter_map(|a| {
                let s = a.verify.as_ref()?.measurements.sample.as_deref()?;
                Some((a.name.as_str(), s))
            })
            .collect();
        if !samples.is_empty() {
            let _ = writeln!(md, "\n## Greedy samples\n");
            for (name, s) in samples {
                let _ = writeln!(md, "- {name}: `{}`", s.replace('`', "'").replace('\n', "⏎"));
            }
        }
        let _ = writeln!(
            md,
            "\nResult: **{}**. Every file's sha256 is in `qforge.lock`; \
             `qforge run --check` re-hashes them.",
            if self.pass { "pass" } else { "FAIL" }
        );
        md
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn gates_hold_or_fail() {
        let gates = Gates {
            max_kld: Some(0.01),
            min_top1: Some(0.9),
            min_gen_tok_s: Some(5.0),
            ..Gates::default()
        };
        let m = Measurements {
            kld_mean: Some(0.02),
            top1: Some(0.95),
            ..Measurements::default()
        };
        let r = evaluate(&gates, &m);
        assert_eq!(
            r.iter().map(GateResult::describe).collect::<Vec<_>>(),
            [
                "max_kld: 0.0200 > 0.0100",
                "min_top1: 0.9500 >= 0.9000",
                "min_gen_tok_s: not measured"
            ]
        );
        assert_eq!(
            r.iter().map(|g| g.pass).collect::<Vec<_>>(),
            [false, true, false]
        );
    }

    #[test]
    fn numbers() {
        assert_eq!(fmt_num(12.3456), "12.346");
        assert_eq!(fmt_num(0.000123), "1.23e-4");
        assert_eq!(fmt_num(1234.4), "1234");
        assert_eq!(fmt_bytes(5 << 20), "5.0 MiB");
    }
}
