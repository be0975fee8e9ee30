//! What a manifest says about the model beyond its weights — name,
//! license, templates, system prompt, run parameters — and where each goes:
//! GGUF metadata keys, and an Ollama Modelfile next to each GGUF.
//!
//! GGUF keys written (all optional, only when the manifest sets them):
//!
//! | manifest | GGUF key | type |
//! | --- | --- | --- |
//! | `name` | `general.name` | string |
//! | `license` | `general.license` | string |
//! | `chat_template` | `tokenizer.chat_template` (replaces the source's) | string |
//! | `template` | `qforge.template` (Ollama's Go template) | string |
//! | `system` | `qforge.system` | string |
//! | `parameters.KEY` | `qforge.parameters.KEY` | int64, float32, or string array (`stop`) |
//! | `parameters.temperature` | `general.sampling.temp` | float32 |
//! | `parameters.top_k` | `general.sampling.top_k` | int32 |
//! | `parameters.top_p` | `general.sampling.top_p` | float32 |
//! | `parameters.min_p` | `general.sampling.min_p` | float32 |
//! | `parameters.repeat_penalty` | `general.sampling.penalty_repeat` | float32 |
//! | `parameters.repeat_last_n` | `general.sampling.penalty_last_n` | int32 |
//!
//! The `general.sampling.*` keys are the sampling defaults llama.cpp reads
//! from a model (`llama_model_meta_key`); `qforge.parameters.*` carries every
//! Modelfile parameter so the GGUF alone holds what the Modelfile says.

use serde_json::{json, Value as Json};

use super::schema::{Manifest, ParamValue};
use crate::formats::gguf::{Array, Value};

/// The manifest's model-level settings.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct ModelMetadata {
    /// `general.name`.
    pub name: Option<String>,
    /// License id or text.
    pub license: Option<String>,
    /// Ollama prompt template (Go template syntax).
    pub template: Option<String>,
    /// Jinja chat template.
    pub chat_template: Option<String>,
    /// System prompt.
    pub system: Option<String>,
    /// Ollama parameters, in manifest order.
    pub parameters: Vec<(String, ParamValue)>,
}

/// Modelfile parameters llama.cpp also reads, with their GGUF key.
const SAMPLING_KEYS: &[(&str, &str)] = &[
    ("temperature", "general.sampling.temp"),
    ("top_k", "general.sampling.top_k"),
    ("top_p", "general.sampling.top_p"),
    ("min_p", "general.sampling.min_p"),
    ("repeat_penalty", "general.sampling.penalty_repeat"),
    ("repeat_last_n", "general.sampling.penalty_last_n"),
];

impl ModelMetadata {
    /// The settings of `m`.
    pub fn from_manifest(m: &Manifest) -> ModelMetadata {
        ModelMetadata {
            name: m.name.clone(),
            license: m.license.clone(),
            template: m.template.clone(),
            chat_template: m.chat_template.clone(),
            system: m.system.clone(),
            parameters: m.parameters.clone(),
        }
    }

    /// The metadata entries a GGUF artifact gets, replacing any the
    /// conversion wrote under the same key.
    pub fn gguf_entries(&self) -> Vec<(String, Value)> {
        let mut out = Vec::new();
        let mut text = |key: &str, v: &Option<String>| {
            if let Some(v) = v {
                out.push((key.to_string(), Value::String(v.clone())));
            }
        };
        text("general.name", &self.name);
        text("general.license", &self.license);
        text("tokenizer.chat_template", &self.chat_template);
        text("qforge.template", &self.template);
        text("qforge.system", &self.system);
        for (key, v) in &self.parameters {
            if let Some((_, gguf_key)) = SAMPLING_KEYS.iter().find(|(k, _)| k == key) {
                let value = match v {
                    ParamValue::Int(i) => i32::try_from(*i).ok().map(Value::I32),
                    ParamValue::Float(f) => Some(Value::F32(*f as f32)),
                    ParamValue::Strings(_) => None,
                };
                if let Some(value) = value {
                    out.push((gguf_key.to_string(), value));
                }
            }
        }
        for (key, v) in &self.parameters {
            let value = match v {
                ParamValue::Int(i) => Value::I64(*i),
                ParamValue::Float(f) => Value::F32(*f as f32),
                ParamValue::Strings(s) => Value::Array(Array::String(s.clone())),
            };
            out.push((format!("qforge.parameters.{key}"), value));
        }
        out
    }

    /// The settings as JSON, for settings hashes and reports.
    pub fn to_json(&self) -> Json {
        let params: serde_json::Map<String, Json> = self
            .parameters
            .iter()
            .map(|(k, v)| {
                let v = match v {
                    ParamValue::Int(i) => json!(i),
                    ParamValue::Float(f) => json!(f),
                    ParamValue::Strings(s) => json!(s),
                };
                (k.clone(), v)
            })
            .collect();
        json!({
            "name": self.name,
            "license": self.license,
            "template": self.template,
            "chat_template": self.chat_template,
            "system": self.system,
            "parameters": params,
        })
    }

    /// An Ollama Modelfile for the GGUF file `gguf_name`, which sits in the
    /// same folder (`ollama create NAME -f X.Modelfile` from anywhere).
    /// `comment` heads the file.
    pub fn modelfile(&self, gguf_name: &str, comment: &str) -> String {
        let mut out = String::new();
        for line in comment.lines() {
            out.push_str(&format!("# {line}\n"));
        }
        out.push_str(&format!("FROM ./{gguf_name}\n"));
        if let Some(t) = &self.template {
            out.push_str(&format!("TEMPLATE {}\n", quote(t)));
        }
        if let Some(s) = &self.system {
            out.push_str(&format!("SYSTEM {}\n", quote(s)));
        }
        for (key, v) in &self.parameters {
            match v {
                ParamValue::Int(i) => out.push_str(&format!("PARAMETER {key} {i}\n")),
                ParamValue::Float(f) => out.push_str(&format!("PARAMETER {key} {f}\n")),
                ParamValue::Strings(list) => {
                    for s in list {
                        out.push_str(&format!("PARAMETER {key} {}\n", quote(s)));
                    }
                }
            }
        }
        if let Some(l) = &self.license {
            out.push_str(&format!("LICENSE {}\n", quote(l)));
        }
        out
    }
}

/// Quotes a Modelfile argument the way Ollama's parser reads it back
/// (parser/parser.go): text with a newline, a `"`, a `#` or spaces at either
/// end goes in `"""` (which the manifest parser keeps out of the text);
/// anything else in `"` when it has spaces or is empty, else bare.
fn quote(s: &str) -> String {
    let plain = !s.is_empty()
        && !s.contains(['\n', '\r', '"', '\t', ' ', '#'])
        && !s.starts_with(char::is_whitespace);
    if plain {
        s.to_string()
    } else if s.contains(['\n', '\r', '"']) || s.starts_with(' ') || s.ends_with(' ') {
        format!("\"\"\"{s}\"\"\"")
    } else {
        format!("\"{s}\"")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn meta() -> ModelMetadata {
        ModelMetadata {
            name: Some("Demo".into()),
            license: Some("apache-2.0".into()),
            template: Some(
                "{{ if .System }}<|system|>\n{{ .System }}{{ end }}<|user|>\n{{ .Prompt }}".into(),
            ),
            chat_template: None,
            system: Some("You are terse.".into()),
            parameters: vec![
                ("temperature".into(), ParamValue::Float(0.7)),
                ("top_k".into(), ParamValue::Int(40)),
                ("num_ctx".into(), ParamValue::Int(2048)),
                (
                    "stop".into(),
                    ParamValue::Strings(vec!["<|im_end|>".into(), "User: ".into()]),
                ),
            ],
        }
    }

    #[test]
    fn modelfile_text() {
        let text = meta().modelfile("demo-q8_0.gguf", "written by qforge");
        assert_eq!(
            text,
            "# written by qforge\n\
             FROM ./demo-q8_0.gguf\n\
             TEMPLATE \"\"\"{{ if .System }}<|system|>\n{{ .System }}{{ end }}<|user|>\n{{ .Prompt }}\"\"\"\n\
             SYSTEM \"You are terse.\"\n\
             PARAMETER temperature 0.7\n\
             PARAMETER top_k 40\n\
             PARAMETER num_ctx 2048\n\
             PARAMETER stop <|im_end|>\n\
             PARAMETER stop \"\"\"User: \"\"\"\n\
             LICENSE apache-2.0\n"
        );
    }

    #[test]
    fn gguf_keys() {
        let entries = meta().gguf_entries();
        let keys: Vec<&str> = entries.iter().map(|(k, _)| k.as_str()).collect();
        assert_eq!(
            keys,
            [
                "general.name",
                "general.license",
                "qforge.template",
                "qforge.system",
                "general.sampling.temp",
                "general.sampling.top_k",
                "qforge.parameters.temperature",
                "qforge.parameters.top_k",
                "qforge.parameters.num_ctx",
                "qforge.parameters.stop",
            ]
        );
        assert_eq!(entries[5].1, Value::I32(40));
    }
}
