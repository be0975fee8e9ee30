//! The manifest's schema and its parser: YAML text to plain data, every
//! problem found at once, each with its line and column. Parsing touches no
//! file and reads no environment variable; [`super::resolve`] does that.

use serde_yaml_ng::{Mapping, Value};

use super::error::{ManifestError, Problem};
use super::suggest::did_you_mean;
use super::yaml::{locate, locate_key, parse_error_path, syntax_message, At, NodePath, Pos};

/// A parsed manifest: one model and the artifacts made from it.
#[derive(Debug, Clone)]
pub struct Manifest {
    /// Where the model comes from, as written (`${VAR}` not yet expanded).
    pub from: Located<String>,
    /// `general.name` of GGUF artifacts and the report's title.
    pub name: Option<String>,
    /// License id or text: GGUF `general.license`, Modelfile `LICENSE`.
    pub license: Option<String>,
    /// Ollama prompt template (Go template syntax): Modelfile `TEMPLATE`.
    pub template: Option<String>,
    /// Jinja chat template replacing the source's: GGUF
    /// `tokenizer.chat_template`, `chat_template` of MLX/safetensors folders.
    pub chat_template: Option<String>,
    /// System prompt: Modelfile `SYSTEM`.
    pub system: Option<String>,
    /// Ollama run parameters, in the order written.
    pub parameters: Vec<(String, ParamValue)>,
    /// The output folder, as written.
    pub output: Option<Located<String>>,
    /// Verification settings shared by every artifact.
    pub verify: Option<VerifySpec>,
    /// The artifacts, in the order written.
    pub artifacts: Vec<ArtifactSpec>,
    /// The YAML text, kept to place later (resolve-time) errors.
    pub(crate) text: String,
}

/// A value and where it was written.
#[derive(Debug, Clone, PartialEq)]
pub struct Located<T> {
    /// The value.
    pub value: T,
    /// Its node in the YAML tree.
    pub path: NodePath,
}

/// The three artifact formats.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum ArtifactFormat {
    /// One GGUF file (llama.cpp, Ollama).
    Gguf,
    /// An mlx-lm folder.
    Mlx,
    /// A Hugging Face safetensors folder (transformers).
    Safetensors,
}

impl ArtifactFormat {
    /// Lower-case name, as written in manifests.
    pub fn name(self) -> &'static str {
        match self {
            ArtifactFormat::Gguf => "gguf",
            ArtifactFormat::Mlx => "mlx",
            ArtifactFormat::Safetensors => "safetensors",
        }
    }
}

/// Float type of unquantized tensors in a folder artifact.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Dtype {
    /// 32-bit float.
    F32,
    /// IEEE half.
    F16,
    /// bfloat16.
    Bf16,
}

impl Dtype {
    /// Lower-case name, as written in manifests.
    pub fn name(self) -> &'static str {
        match self {
            Dtype::F32 => "f32",
            Dtype::F16 => "f16",
            Dtype::Bf16 => "bf16",
        }
    }
}

/// How an artifact is quantized.
#[derive(Debug, Clone, PartialEq)]
pub enum Quantization {
    /// Not quantized (safetensors, or an unquantized MLX folder).
    None,
    /// A llama.cpp file type.
    Gguf {
        /// The llama-quantize name (`Q4_K_M`), canonical case.
        file_type: &'static str,
        /// An importance matrix file, as written.
        imatrix: Option<Located<String>>,
        /// Requantize a source that is already quantized.
        allow_requantize: bool,
    },
    /// MLX affine quantization of every quantizable layer.
    Mlx {
        /// Bits per weight.
        bits: u8,
        /// Weights per scale/bias pair.
        group_size: u32,
    },
    /// One of mlx-lm's mixed recipes.
    MlxRecipe {
        /// The recipe name (`mixed_3_6`).
        recipe: &'static str,
        /// Weights per scale/bias pair.
        group_size: u32,
    },
}

/// One artifact to build.
#[derive(Debug, Clone)]
pub struct ArtifactSpec {
    /// Its name: the output file or folder name, and `--only NAME`.
    pub name: String,
    /// Its node in the YAML tree.
    pub path: NodePath,
    /// Its format.
    pub format: ArtifactFormat,
    /// How it is quantized.
    pub quantization: Quantization,
    /// Float type of unquantized tensors (folders only).
    pub dtype: Option<Dtype>,
    /// Its verification, relative to the manifest's.
    pub verify: VerifyOverride,
}

/// An artifact's verification relative to the manifest-wide settings.
#[derive(Debug, Clone, PartialEq)]
pub enum VerifyOverride {
    /// The manifest's settings as they are.
    Inherit,
    /// `verify: false`: not verified.
    Skip,
    /// The manifest's settings with these fields replaced.
    Override(Box<VerifySpec>),
}

/// Verification settings; every field optional so artifacts can override
/// one at a time.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct VerifySpec {
    /// Text to measure perplexity on, as written.
    pub text: Option<Located<String>>,
    /// The reference model, as written (default: the source).
    pub reference: Option<Located<String>>,
    /// Context window in tokens.
    pub ctx: Option<u32>,
    /// Windows of the text to score (default: all).
    pub chunks: Option<u32>,
    /// Pass/fail thresholds.
    pub gates: Gates,
}

/// Pass/fail thresholds of a verification.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Gates {
    /// Highest perplexity allowed.
    pub max_ppl: Option<f64>,
    /// Highest perplexity relative to the reference's.
    pub max_ppl_ratio: Option<f64>,
    /// Highest mean KL divergence from the reference.
    pub max_kld: Option<f64>,
    /// Lowest top-1 agreement with the reference (a fraction).
    pub min_top1: Option<f64>,
    /// Lowest generation speed, tokens/s.
    pub min_gen_tok_s: Option<f64>,
    /// Lowest prompt-processing speed, tokens/s.
    pub min_prompt_tok_s: Option<f64>,
}

impl Gates {
    /// The gate names, in report order.
    pub const NAMES: [&'static str; 6] = [
        "max_ppl",
        "max_ppl_ratio",
        "max_kld",
        "min_top1",
        "min_gen_tok_s",
        "min_prompt_tok_s",
    ];

    /// (name, limit) of each gate that is set, in report order.
    pub fn set(&self) -> Vec<(&'static str, f64)> {
        Self::NAMES
            .iter()
            .zip(self.values())
            .filter_map(|(n, v)| v.map(|v| (*n, v)))
            .collect()
    }

    fn values(&self) -> [Option<f64>; 6] {
        [
            self.max_ppl,
            self.max_ppl_ratio,
            self.max_kld,
            self.min_top1,
            self.min_gen_tok_s,
            self.min_prompt_tok_s,
        ]
    }

    fn slot(&mut self, name: &str) -> Option<&mut Option<f64>> {
        Some(match name {
            "max_ppl" => &mut self.max_ppl,
            "max_ppl_ratio" => &mut self.max_ppl_ratio,
            "max_kld" => &mut self.max_kld,
            "min_top1" => &mut self.min_top1,
            "min_gen_tok_s" => &mut self.min_gen_tok_s,
            "min_prompt_tok_s" => &mut self.min_prompt_tok_s,
            _ => return None,
        })
    }

    /// These gates with every gate `over` sets replaced.
    pub fn overlaid(&self, over: &Gates) -> Gates {
        let mut out = *self;
        for (name, v) in over.set() {
            *out.slot(name).expect("a gate name") = Some(v);
        }
        out
    }
}

/// A Modelfile parameter value.
#[derive(Debug, Clone, PartialEq)]
pub enum ParamValue {
    /// A whole number.
    Int(i64),
    /// A number.
    Float(f64),
    /// One or more strings (`stop`).
    Strings(Vec<String>),
}

/// The kind of value each Ollama parameter takes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum ParamKind {
    Int,
    Float,
    Strings,
}

/// Ollama's Modelfile parameters (docs/modelfile.md and api.Options).
const PARAMETERS: &[(&str, ParamKind)] = &[
    ("num_ctx", ParamKind::Int),
    ("repeat_last_n", ParamKind::Int),
    ("repeat_penalty", ParamKind::Float),
    ("temperature", ParamKind::Float),
    ("seed", ParamKind::Int),
    ("stop", ParamKind::Strings),
    ("num_predict", ParamKind::Int),
    ("top_k", ParamKind::Int),
    ("top_p", ParamKind::Float),
    ("min_p", ParamKind::Float),
    ("typical_p", ParamKind::Float),
    ("presence_penalty", ParamKind::Float),
    ("frequency_penalty", ParamKind::Float),
];

/// GGUF file types a manifest may ask for (llama-quantize's names).
pub const GGUF_TYPES: &[&str] = &[
    "F32", "F16", "BF16", "Q8_0", "Q4_0", "Q4_1", "Q5_0", "Q5_1", "Q2_K", "Q2_K_S", "Q3_K_S",
    "Q3_K_M", "Q3_K_L", "Q4_K_S", "Q4_K_M", "Q5_K_S", "Q5_K_M", "Q6_K", "IQ4_NL", "IQ4_XS",
];

/// mlx-lm's mixed quantization recipes.
pub const MLX_RECIPES: &[&str] = &["mixed_2_6", "mixed_3_4", "mixed_3_6", "mixed_4_6"];
/// Bits MLX affine quantization supports.
pub const MLX_BITS: &[u64] = &[2, 3, 4, 5, 6, 8];
/// Group sizes MLX affine quantization supports.
pub const MLX_GROUP_SIZES: &[u64] = &[32, 64, 128];
/// mlx-lm's default group size.
pub const MLX_DEFAULT_GROUP_SIZE: u32 = 64;

const TOP_KEYS: &[&str] = &[
    "from",
    "name",
    "license",
    "template",
    "chat_template",
    "system",
    "parameters",
    "output",
    "verify",
    "artifacts",
];
const ARTIFACT_KEYS: &[&str] = &["name", "format", "quantization", "dtype", "verify"];
const QUANT_KEYS: &[&str] = &[
    "type",
    "imatrix",
    "allow_requantize",
    "bits",
    "group_size",
    "recipe",
];
const VERIFY_KEYS: &[&str] = &["text", "reference", "ctx", "chunks", "gates"];
const FORMATS: &[&str] = &["gguf", "mlx", "safetensors"];
const DTYPES: &[&str] = &["f32", "f16", "bf16"];

/// Names reserved for the files a run writes into the output folder.
pub const RESERVED_NAMES: &[&str] = &["report.json", "report.md", "report.svg", "qforge.lock"];

impl Manifest {
    /// Parses a manifest's text. `file` names it in error messages.
    pub fn parse(text: &str, file: &std::path::Path) -> Result<Manifest, ManifestError> {
        let fail = |problems| ManifestError::new(file, problems);
        let mut root: Value = match serde_yaml_ng::from_str(text) {
            Ok(v) => v,
            Err(e) => {
                let mut pos = e.location().map_or(Pos { line: 1, column: 1 }, |l| Pos {
                    line: l.line(),
                    column: l.column(),
                });
                if let Some(second) = duplicate_key_pos(text, &e) {
                    pos = second;
                }
                return Err(fail(vec![Problem::new(pos, yaml_error_message(&e))]));
            }
        };
        if let Err(e) = root.apply_merge() {
            return Err(fail(vec![Problem::new(
                Pos { line: 1, column: 1 },
                format!("invalid YAML merge (<<): {}", syntax_message(&e)),
            )]));
        }
        let mut p = Parser {
            text,
            problems: Vec::new(),
        };
        let manifest = p.manifest(&root);
        if p.problems.is_empty() {
            let mut m = manifest.expect("no problems means a manifest");
            m.text = text.to_string();
            Ok(m)
        } else {
            p.problems.sort_by_key(|pr| pr.pos);
            Err(fail(p.problems))
        }
    }

    /// The position of a node, for errors found after parsing.
    pub(crate) fn pos(&self, path: &NodePath, at: At) -> Pos {
        locate(&self.text, path, at)
    }

    /// The artifact named `name`.
    pub fn artifact(&self, name: &str) -> Option<&ArtifactSpec> {
        self.artifacts.iter().find(|a| a.name == name)
    }
}

/// Where the second of two equal keys is: serde_yaml_ng places a
/// duplicate-key error at the start of its mapping.
fn duplicate_key_pos(text: &str, e: &serde_yaml_ng::Error) -> Option<Pos> {
    let msg = syntax_message(e);
    let (path, rest) = match msg.split_once(": duplicate entry with key ") {
        Some((p, r)) => (parse_error_path(p), r),
        None => (
            NodePath::root(),
            msg.strip_prefix("duplicate entry with key ")?,
        ),
    };
    let key: String = serde_json::from_str(rest).ok()?;
    locate_key(text, &path, &key, 1)
}

fn yaml_error_message(e: &serde_yaml_ng::Error) -> String {
    let msg = syntax_message(e);
    if let Some(rest) = msg.split("duplicate entry with key ").nth(1) {
        let key = rest.trim_matches('"');
        return format!("key `{key}` appears twice in this mapping");
    }
    if msg.starts_with("deserializing from YAML containing more than one document") {
        return "a manifest is one YAML document; remove the `---` separating a second one".into();
    }
    format!("invalid YAML: {msg}")
}

/// A description of a YAML value for "found ..." messages.
fn found(v: &Value) -> String {
    match v {
        Value::Null => "nothing".into(),
        Value::Bool(b) => format!("a boolean ({b})"),
        Value::Number(n) => format!("a number ({n})"),
        Value::String(s) => format!("a string ({s:?})"),
        Value::Sequence(_) => "a list".into(),
        Value::Mapping(_) => "a mapping".into(),
        Value::Tagged(t) => format!("a value tagged {}", t.tag),
    }
}

struct Parser<'t> {
    text: &'t str,
    problems: Vec<Problem>,
}

impl Parser<'_> {
    fn problem(&mut self, path: &NodePath, at: At, message: String) {
        let pos = locate(self.text, path, at);
        self.problems.push(Problem::new(pos, message));
    }

    /// Reports the keys of `m` not in `allowed`, with a suggestion, or the
    /// section a misplaced key belongs to. Returns the keys suggested, so a
    /// "missing key" message does not repeat what the suggestion says.
    fn keys(
        &mut self,
        m: &Mapping,
        path: &NodePath,
        allowed: &[&'static str],
        section: &str,
    ) -> Vec<&'static str> {
        let mut suggested = Vec::new();
        for k in m.keys() {
            let Some(key) = k.as_str() else {
                let text = serde_yaml_ng::to_string(k).unwrap_or_default();
                self.problem(
                    path,
                    At::Value,
                    format!("keys in {section} are names; found {}", text.trim_end()),
                );
                continue;
            };
            if allowed.contains(&key) {
                continue;
            }
            let hint = if let Some(s) = did_you_mean(key, allowed) {
                suggested.push(s);
                format!(" (did you mean `{s}`?)")
            } else if let Some(home) = home_of(key, allowed) {
                format!(" (`{key}` belongs {home})")
            } else {
                format!("; expected one of: {}", allowed.join(", "))
            };
            self.problem(
                &path.key(key),
                At::Key,
                format!("unknown key `{key}` in {section}{hint}"),
            );
        }
        suggested
    }

    fn mapping<'v>(&mut self, v: &'v Value, path: &NodePath, what: &str) -> Option<&'v Mapping> {
        match v {
            Value::Mapping(m) => Some(m),
            other => {
                self.problem(
                    path,
                    At::Value,
                    format!("{what} must be a mapping of keys, found {}", found(other)),
                );
                None
            }
        }
    }

    fn string(&mut self, v: &Value, path: &NodePath, key: &str) -> Option<String> {
        match v {
            Value::String(s) => Some(s.clone()),
            Value::Number(_) | Value::Bool(_) => {
                self.problem(
                    path,
                    At::Value,
                    format!(
                        "`{key}` must be a string, found {}; quote it to make it one",
                        found(v)
                    ),
                );
                None
            }
            other => {
                self.problem(
                    path,
                    At::Value,
                    format!("`{key}` must be a string, found {}", found(other)),
                );
                None
            }
        }
    }

    fn text_field(&mut self, m: &Mapping, path: &NodePath, key: &str) -> Option<String> {
        let v = m.get(key)?;
        let s = self.string(v, &path.key(key), key)?;
        if s.contains("\"\"\"") {
            self.problem(
                &path.key(key),
                At::Value,
                format!(
                    "`{key}` cannot contain \"\"\": the Modelfile quotes multi-line text with it"
                ),
            );
        }
        Some(s)
    }

    fn path_field(&mut self, m: &Mapping, path: &NodePath, key: &str) -> Option<Located<String>> {
        let v = m.get(key)?;
        let p = path.key(key);
        let s = self.string(v, &p, key)?;
        if s.trim().is_empty() {
            self.problem(&p, At::Value, format!("`{key}` is empty"));
            return None;
        }
        if let Err(msg) = super::resolve::check_vars(&s) {
            self.problem(&p, At::Value, format!("`{key}`: {msg}"));
            return None;
        }
        Some(Located { value: s, path: p })
    }

    fn uint(&mut self, v: &Value, path: &NodePath, key: &str, min: u64, max: u64) -> Option<u64> {
        let n = match v {
            Value::Number(n) if n.as_u64().is_some() => n.as_u64().expect("checked"),
            other => {
                self.problem(
                    path,
                    At::Value,
                    format!("`{key}` must be a whole number, found {}", found(other)),
                );
                return None;
            }
        };
        if n < min || n > max {
            self.problem(
                path,
                At::Value,
                format!("`{key}` must be between {min} and {max}, found {n}"),
            );
            return None;
        }
        Some(n)
    }

    fn number(&mut self, v: &Value, path: &NodePath, key: &str) -> Option<f64> {
        match v {
            Value::Number(n) => {
                let x = n.as_f64().expect("YAML numbers convert to f64");
                if x.is_finite() {
                    Some(x)
                } else {
                    self.problem(
                        path,
                        At::Value,
                        format!("`{key}` must be a finite number, found {n}"),
                    );
                    None
                }
            }
            other => {
                self.problem(
                    path,
                    At::Value,
                    format!("`{key}` must be a number, found {}", found(other)),
                );
                None
            }
        }
    }

    fn bool(&mut self, v: &Value, path: &NodePath, key: &str) -> Option<bool> {
        match v {
            Value::Bool(b) => Some(*b),
            other => {
                self.problem(
                    path,
                    At::Value,
                    format!("`{key}` must be true or false, found {}", found(other)),
                );
                None
            }
        }
    }

    /// A word from a closed list, matched without regard to case.
    fn choice(
        &mut self,
        v: &Value,
        path: &NodePath,
        key: &str,
        what: &str,
        choices: &[&'static str],
    ) -> Option<&'static str> {
        let s = self.string(v, path, key)?;
        if let Some(c) = choices.iter().find(|c| c.eq_ignore_ascii_case(&s)) {
            return Some(c);
        }
        let hint = match did_you_mean(&s, choices) {
            Some(c) => format!(" (did you mean `{c}`?)"),
            None => format!("; expected one of: {}", choices.join(", ")),
        };
        self.problem(path, At::Value, format!("unknown {what} `{s}`{hint}"));
        None
    }

    fn manifest(&mut self, root: &Value) -> Option<Manifest> {
        let path = NodePath::root();
        let m = match root {
            Value::Null => {
                self.problems.push(Problem::new(
                    Pos { line: 1, column: 1 },
                    "the manifest is empty: it needs at least `from:` and `artifacts:`".into(),
                ));
                return None;
            }
            v => self.mapping(v, &path, "a manifest")?,
        };
        let suggested = self.keys(m, &path, TOP_KEYS, "the manifest");

        let from = match m.get("from") {
            Some(_) => self.path_field(m, &path, "from"),
            None if suggested.contains(&"from") => None,
            None => {
                self.problem(
                    &path,
                    At::Value,
                    "missing key `from`: the model to start from \
                     (hf://ORG/REPO[@REVISION], a model folder or a GGUF file)"
                        .into(),
                );
                None
            }
        };
        if let Some(f) = &from {
            if let Some(rest) = f.value.strip_prefix("hf://") {
                if let Err(msg) = check_hub_url(rest) {
                    self.problem(&f.path, At::Value, msg);
                }
            }
        }
        let name = m
            .get("name")
            .and_then(|v| self.string(v, &path.key("name"), "name"));
        let license = self.text_field(m, &path, "license");
        let template = self.text_field(m, &path, "template");
        let chat_template = m
            .get("chat_template")
            .and_then(|v| self.string(v, &path.key("chat_template"), "chat_template"));
        let system = self.text_field(m, &path, "system");
        let parameters = match m.get("parameters") {
            Some(v) => self.parameters(v, &path.key("parameters")),
            None => Vec::new(),
        };
        let output = self.path_field(m, &path, "output");
        let verify = match m.get("verify") {
            Some(v) => self.verify(v, &path.key("verify"), "verify"),
            None => None,
        };
        let artifacts = match m.get("artifacts") {
            Some(v) => self.artifacts(v, &path.key("artifacts")),
            None if suggested.contains(&"artifacts") => Vec::new(),
            None => {
                self.problem(
                    &path,
                    At::Value,
                    "missing key `artifacts`: the list of artifacts to build".into(),
                );
                Vec::new()
            }
        };
        Some(Manifest {
            from: from?,
            name,
            license,
            template,
            chat_template,
            system,
            parameters,
            output,
            verify,
            artifacts,
            text: String::new(),
        })
    }

    fn parameters(&mut self, v: &Value, path: &NodePath) -> Vec<(String, ParamValue)> {
        let Some(m) = self.mapping(v, path, "`parameters`") else {
            return Vec::new();
        };
        let names: Vec<&str> = PARAMETERS.iter().map(|(n, _)| *n).collect();
        let mut out = Vec::new();
        for (k, v) in m {
            let Some(key) = k.as_str() else {
                let text = serde_yaml_ng::to_string(k).unwrap_or_default();
                self.problem(
                    path,
                    At::Value,
                    format!("parameter names are words; found {}", text.trim_end()),
                );
                continue;
            };
            let p = path.key(key);
            let Some((_, kind)) = PARAMETERS.iter().find(|(n, _)| *n == key) else {
                let hint = match did_you_mean(key, &names) {
                    Some(s) => format!(" (did you mean `{s}`?)"),
                    None => format!("; Ollama's parameters are: {}", names.join(", ")),
                };
                self.problem(&p, At::Key, format!("unknown parameter `{key}`{hint}"));
                continue;
            };
            let value = match kind {
                ParamKind::Int => match v {
                    Value::Number(n) if n.as_i64().is_some() => {
                        Some(ParamValue::Int(n.as_i64().expect("checked")))
                    }
                    other => {
                        self.problem(
                            &p,
                            At::Value,
                            format!("`{key}` must be a whole number, found {}", found(other)),
                        );
                        None
                    }
                },
                ParamKind::Float => self.number(v, &p, key).map(ParamValue::Float),
                ParamKind::Strings => self.stop_strings(v, &p, key),
            };
            if let Some(value) = value {
                out.push((key.to_string(), value));
            }
        }
        out
    }

    fn stop_strings(&mut self, v: &Value, path: &NodePath, key: &str) -> Option<ParamValue> {
        let items: Vec<(NodePath, &Value)> = match v {
            Value::Sequence(s) => s
                .iter()
                .enumerate()
                .map(|(i, v)| (path.index(i), v))
                .collect(),
            v => vec![(path.clone(), v)],
        };
        let mut out = Vec::new();
        for (p, item) in items {
            match item {
                Value::String(s) if s.is_empty() => {
                    self.problem(&p, At::Value, format!("`{key}` strings cannot be empty"));
                }
                Value::String(s) if s.contains("\"\"\"") => self.problem(
                    &p,
                    At::Value,
                    format!("`{key}` strings cannot contain \"\"\""),
                ),
                Value::String(s) => out.push(s.clone()),
                other => self.problem(
                    &p,
                    At::Value,
                    format!(
                        "`{key}` must be a string or a list of strings, found {}",
                        found(other)
                    ),
                ),
            }
        }
        (!out.is_empty()).then_some(ParamValue::Strings(out))
    }

    fn verify(&mut self, v: &Value, path: &NodePath, section: &str) -> Option<VerifySpec> {
        let m = self.mapping(v, path, &format!("`{section}`"))?;
        self.keys(m, path, VERIFY_KEYS, section);
        let mut spec = VerifySpec {
            text: self.path_field(m, path, "text"),
            reference: self.path_field(m, path, "reference"),
            ..VerifySpec::default()
        };
        if let Some(v) = m.get("ctx") {
            spec.ctx = self
                .uint(v, &path.key("ctx"), "ctx", 8, 1 << 20)
                .map(|n| n as u32);
        }
        if let Some(v) = m.get("chunks") {
            spec.chunks = self
                .uint(v, &path.key("chunks"), "chunks", 1, 1 << 20)
                .map(|n| n as u32);
        }
        if let Some(v) = m.get("gates") {
            let gp = path.key("gates");
            if let Some(g) = self.mapping(v, &gp, "`gates`") {
                self.keys(g, &gp, &Gates::NAMES, &format!("{section}.gates"));
                for name in Gates::NAMES {
                    let Some(v) = g.get(name) else { continue };
                    let p = gp.key(name);
                    let Some(x) = self.number(v, &p, name) else {
                        continue;
                    };
                    if x < 0.0 {
                        self.problem(&p, At::Value, format!("`{name}` cannot be negative"));
                    } else if name == "min_top1" && x > 1.0 {
                        self.problem(
                            &p,
                            At::Value,
                            format!(
                                "`min_top1` is a fraction between 0 and 1 (0.9 means 90%), found {x}"
                            ),
                        );
                    } else {
                        *spec.gates.slot(name).expect("a gate name") = Some(x);
                    }
                }
            }
        }
        Some(spec)
    }

    fn artifacts(&mut self, v: &Value, path: &NodePath) -> Vec<ArtifactSpec> {
        let items = match v {
            Value::Sequence(s) => s,
            other => {
                self.problem(
                    path,
                    At::Value,
                    format!(
                        "`artifacts` must be a list (each item starting with `- name:`), found {}",
                        found(other)
                    ),
                );
                return Vec::new();
            }
        };
        if items.is_empty() {
            self.problem(
                path,
                At::Value,
                "`artifacts` is empty: list at least one artifact".into(),
            );
        }
        // Output names taken so far, compared without case (macOS and
        // Windows file systems), with the artifact that took each. Checked
        // on the raw names, so a clash shows even beside other problems.
        let mut taken: Vec<(String, String, NodePath)> = Vec::new();
        let mut clashes = Vec::new();
        for (i, item) in items.iter().enumerate() {
            let path = path.index(i);
            let Some(name) = item.get("name").and_then(Value::as_str) else {
                continue;
            };
            if !portable_name(name) {
                continue;
            }
            let format = match item.get("format").and_then(Value::as_str) {
                Some(f) if f.eq_ignore_ascii_case("gguf") => ArtifactFormat::Gguf,
                _ => ArtifactFormat::Mlx,
            };
            let files = output_names(name, format);
            let same_name = taken
                .iter()
                .find(|(_, owner, _)| owner.eq_ignore_ascii_case(name))
                .map(|(f, owner, p)| (f.clone(), owner.clone(), p.clone()));
            let clash = same_name.or_else(|| {
                files.iter().find_map(|file| {
                    let lower = file.to_lowercase();
                    taken
                        .iter()
                        .find(|(f, _, _)| *f == lower)
                        .map(|(_, owner, owner_path)| {
                            (file.clone(), owner.clone(), owner_path.clone())
                        })
                })
            });
            match clash {
                Some((file, owner, owner_path)) => {
                    let first = locate(self.text, &owner_path.key("name"), At::Value);
                    let msg = if owner.eq_ignore_ascii_case(name) {
                        format!(
                            "artifact name `{name}` is used twice (first at line {})",
                            first.line
                        )
                    } else {
                        format!(
                            "artifact `{name}` would write `{file}`, which artifact `{owner}` \
                             (line {}) writes too",
                            first.line
                        )
                    };
                    self.problem(&path.key("name"), At::Value, msg);
                    clashes.push(i);
                }
                None => {
                    for file in files {
                        taken.push((file.to_lowercase(), name.to_string(), path.clone()));
                    }
                }
            }
        }
        items
            .iter()
            .enumerate()
            .filter_map(|(i, item)| {
                let a = self.artifact(item, &path.index(i))?;
                (!clashes.contains(&i)).then_some(a)
            })
            .collect()
    }

    fn artifact(&mut self, v: &Value, path: &NodePath) -> Option<ArtifactSpec> {
        let m = self.mapping(v, path, "an artifact")?;
        let named = m.get("name").and_then(Value::as_str).unwrap_or("");
        let section = if named.is_empty() {
            "an artifact".to_string()
        } else {
            format!("artifact `{named}`")
        };
        let suggested = self.keys(m, path, ARTIFACT_KEYS, &section);
        let name = match m.get("name") {
            Some(v) => self
                .string(v, &path.key("name"), "name")
                .filter(|n| self.check_name(n, &path.key("name"))),
            None if suggested.contains(&"name") => None,
            None => {
                self.problem(
                    path,
                    At::Value,
                    "an artifact needs a `name` (its output file or folder name)".into(),
                );
                None
            }
        };
        let format = match m.get("format") {
            Some(v) => {
                let s = self.choice(v, &path.key("format"), "format", "format", FORMATS);
                s.map(|s| match s {
                    "gguf" => ArtifactFormat::Gguf,
                    "mlx" => ArtifactFormat::Mlx,
                    _ => ArtifactFormat::Safetensors,
                })
            }
            None if suggested.contains(&"format") => None,
            None => {
                self.problem(
                    path,
                    At::Value,
                    format!("{section} needs a `format`: gguf, mlx or safetensors"),
                );
                None
            }
        };
        let dtype = match m.get("dtype") {
            Some(v) => {
                let p = path.key("dtype");
                let d = self
                    .choice(v, &p, "dtype", "dtype", DTYPES)
                    .map(|s| match s {
                        "f32" => Dtype::F32,
                        "f16" => Dtype::F16,
                        _ => Dtype::Bf16,
                    });
                if format == Some(ArtifactFormat::Gguf) {
                    self.problem(
                        &p,
                        At::Key,
                        "`dtype` applies to mlx and safetensors artifacts; \
                         a gguf artifact takes `quantization: {type: F16}` (or BF16, F32)"
                            .into(),
                    );
                }
                d
            }
            None => None,
        };
        let quantization = if m.get("quantization").is_none() && suggested.contains(&"quantization")
        {
            None
        } else {
            self.quantization(m.get("quantization"), path, format, &section)
        };
        let verify = match m.get("verify") {
            None => VerifyOverride::Inherit,
            Some(Value::Bool(false)) => VerifyOverride::Skip,
            Some(Value::Bool(true)) => VerifyOverride::Inherit,
            Some(v) => match self.verify(v, &path.key("verify"), &format!("{section} verify")) {
                Some(s) => VerifyOverride::Override(Box::new(s)),
                None => VerifyOverride::Inherit,
            },
        };
        Some(ArtifactSpec {
            name: name?,
            path: path.clone(),
            format: format?,
            quantization: quantization?,
            dtype,
            verify,
        })
    }

    /// Names become file and folder names in the output folder: keep them
    /// to a portable set so none can climb out of it or hide.
    fn check_name(&mut self, name: &str, path: &NodePath) -> bool {
        if !portable_name(name) {
            let why = if name.contains('/') || name.contains('\\') || name.contains("..") {
                "would write outside the output folder"
            } else {
                "is not a portable file name"
            };
            self.problem(
                path,
                At::Value,
                format!(
                    "artifact name `{name}` {why}: use letters, digits, `.`, `_` and `-`, \
                     not starting with `.`"
                ),
            );
            return false;
        }
        if let Some(r) = RESERVED_NAMES.iter().find(|r| r.eq_ignore_ascii_case(name)) {
            self.problem(
                path,
                At::Value,
                format!("artifact name `{name}` is taken by the run's own `{r}`"),
            );
            return false;
        }
        true
    }

    fn quantization(
        &mut self,
        v: Option<&Value>,
        artifact: &NodePath,
        format: Option<ArtifactFormat>,
        section: &str,
    ) -> Option<Quantization> {
        let path = artifact.key("quantization");
        let Some(v) = v else {
            return match format {
                Some(ArtifactFormat::Gguf) => {
                    self.problem(
                        artifact,
                        At::Value,
                        format!(
                            "{section} needs `quantization: {{type: ...}}` \
                             (a GGUF type such as Q8_0, Q4_K_M or F16)"
                        ),
                    );
                    None
                }
                _ => Some(Quantization::None),
            };
        };
        if let (Value::String(_), None) = (v, format) {
            // The format is wrong or missing, said already: nothing to add.
            return None;
        }
        if let (Value::String(_), Some(ArtifactFormat::Gguf)) = (v, format) {
            let t = self.choice(v, &path, "quantization", "GGUF type", GGUF_TYPES)?;
            return Some(Quantization::Gguf {
                file_type: t,
                imatrix: None,
                allow_requantize: false,
            });
        }
        let m = self.mapping(v, &path, "`quantization`")?;
        let suggested = self.keys(m, &path, QUANT_KEYS, &format!("{section} quantization"));
        let format = format?;
        let misplaced = |key: &str| -> Option<String> {
            match (format, key) {
                (ArtifactFormat::Gguf, "bits" | "group_size" | "recipe") => Some(format!(
                    "`{key}` applies to mlx artifacts; a gguf artifact is quantized with `type` \
                     (e.g. Q4_K_M)"
                )),
                (ArtifactFormat::Mlx, "type" | "imatrix" | "allow_requantize") => Some(format!(
                    "`{key}` applies to gguf artifacts; an mlx artifact is quantized with \
                     `bits` and `group_size` (or `recipe`)"
                )),
                _ => None,
            }
        };
        if format == ArtifactFormat::Safetensors {
            self.problem(
                &path,
                At::Key,
                "a safetensors artifact is not quantized: drop `quantization` \
                 and set `dtype` (f32, f16 or bf16) if needed"
                    .into(),
            );
            return None;
        }
        let mut ok = true;
        for key in QUANT_KEYS {
            if m.contains_key(*key) {
                if let Some(msg) = misplaced(key) {
                    self.problem(&path.key(key), At::Key, msg);
                    ok = false;
                }
            }
        }
        if !ok {
            return None;
        }
        match format {
            ArtifactFormat::Gguf => {
                let Some(t) = m.get("type") else {
                    if suggested.contains(&"type") {
                        return None;
                    }
                    self.problem(
                        &path,
                        At::Value,
                        "a gguf artifact's quantization needs a `type` (e.g. Q8_0, Q4_K_M, F16)"
                            .into(),
                    );
                    return None;
                };
                let file_type =
                    self.choice(t, &path.key("type"), "type", "GGUF type", GGUF_TYPES)?;
                let imatrix = self.path_field(m, &path, "imatrix");
                let allow_requantize = match m.get("allow_requantize") {
                    Some(v) => self.bool(v, &path.key("allow_requantize"), "allow_requantize")?,
                    None => false,
                };
                if imatrix.is_some() && matches!(file_type, "F32" | "F16" | "BF16") {
                    self.problem(
                        &path.key("imatrix"),
                        At::Key,
                        format!("an importance matrix has no use for {file_type}, which is not quantized"),
                    );
                    return None;
                }
                Some(Quantization::Gguf {
                    file_type,
                    imatrix,
                    allow_requantize,
                })
            }
            ArtifactFormat::Mlx => {
                let group_size = match m.get("group_size") {
                    Some(v) => {
                        let p = path.key("group_size");
                        match v.as_u64() {
                            Some(g) if MLX_GROUP_SIZES.contains(&g) => g as u32,
                            _ => {
                                self.problem(
                                    &p,
                                    At::Value,
                                    format!(
                                        "`group_size` must be 32, 64 or 128, found {}",
                                        short(v)
                                    ),
                                );
                                return None;
                            }
                        }
                    }
                    None => MLX_DEFAULT_GROUP_SIZE,
                };
                match (m.get("bits"), m.get("recipe")) {
                    (Some(_), Some(_)) => {
                        self.problem(
                            &path.key("recipe"),
                            At::Key,
                            "`recipe` sets the bits of every layer: give `recipe` or `bits`, \
                             not both"
                                .into(),
                        );
                        None
                    }
                    (Some(b), None) => match b.as_u64() {
                        Some(bits) if MLX_BITS.contains(&bits) => Some(Quantization::Mlx {
                            bits: bits as u8,
                            group_size,
                        }),
                        _ => {
                            self.problem(
                                &path.key("bits"),
                                At::Value,
                                format!("`bits` must be 2, 3, 4, 5, 6 or 8, found {}", short(b)),
                            );
                            None
                        }
                    },
                    (None, Some(r)) => {
                        let recipe = self.choice(
                            r,
                            &path.key("recipe"),
                            "recipe",
                            "MLX recipe",
                            MLX_RECIPES,
                        )?;
                        Some(Quantization::MlxRecipe { recipe, group_size })
                    }
                    (None, None)
                        if suggested.contains(&"bits") || suggested.contains(&"recipe") =>
                    {
                        None
                    }
                    (None, None) => {
                        self.problem(
                            &path,
                            At::Value,
                            "an mlx artifact's quantization needs `bits` (with an optional \
                             `group_size`) or a `recipe`"
                                .into(),
                        );
                        None
                    }
                }
            }
            ArtifactFormat::Safetensors => unreachable!("handled above"),
        }
    }
}

/// A name that is safe as a file or folder name in the output folder: a
/// portable set of characters, no leading `.`, no `..`.
fn portable_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 128
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"._-".contains(&b))
        && !name.starts_with('.')
        && !name.contains("..")
}

fn short(v: &Value) -> String {
    match v {
        Value::Number(n) => n.to_string(),
        other => found(other),
    }
}

/// Where a key that is not allowed here does belong, if anywhere.
fn home_of(key: &str, here: &[&str]) -> Option<&'static str> {
    let homes: [(&[&str], &str); 5] = [
        (QUANT_KEYS, "under an artifact's `quantization:`"),
        (VERIFY_KEYS, "under `verify:`"),
        (&Gates::NAMES, "under `verify: gates:`"),
        (&["format", "dtype"], "in an entry of `artifacts:`"),
        (TOP_KEYS, "at the top level of the manifest"),
    ];
    if PARAMETERS.iter().any(|(n, _)| *n == key) {
        return Some("under `parameters:`");
    }
    homes
        .iter()
        .find(|(keys, _)| keys.contains(&key) && !std::ptr::eq(*keys, here))
        .map(|(_, h)| *h)
}

/// Checks an `hf://` URL's shape (what follows `hf://`):
/// `ORG/REPO[@REVISION][/PATH]`.
fn check_hub_url(rest: &str) -> Result<(), String> {
    super::resolve::HubSource::parse(rest)
        .map(|_| ())
        .map_err(|e| e.to_string())
}

/// The names an artifact takes in the output folder.
pub fn output_names(name: &str, format: ArtifactFormat) -> Vec<String> {
    match format {
        ArtifactFormat::Gguf => vec![format!("{name}.gguf"), format!("{name}.Modelfile")],
        ArtifactFormat::Mlx | ArtifactFormat::Safetensors => vec![name.to_string()],
    }
}
