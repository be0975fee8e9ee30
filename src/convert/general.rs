//! The `general.*` keys of a GGUF made from a Hugging Face folder, as
//! gguf-py's `Metadata` (gguf-py/gguf/metadata.py) derives them: the model
//! card's front matter, config.json's `_name_or_path`, the folder's name,
//! generation_config.json's sampling settings, and the parameter count.
//!
//! gguf-py reads the model card with a YAML parser; qforge reads the flat
//! subset model cards use for these keys (`key: value`, `key: [a, b]`, and
//! `key:` followed by `- item` lines). Nested maps are ignored.

use serde_json::{Map, Value as Json};

use crate::formats::gguf::{Array, Metadata, Value};

/// One base model or dataset entry.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct SourceEntry {
    /// `name`, `author`, ... in gguf-py's order.
    pub fields: Vec<(&'static str, String)>,
}

/// gguf-py's `Metadata`: everything `set_gguf_meta_model` writes.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct GeneralInfo {
    /// `general.sampling.*` (key suffix, value) in gguf-py's order.
    pub sampling: Vec<(&'static str, Value)>,
    /// `general.name` and the other strings, by key suffix.
    pub strings: Vec<(&'static str, Option<String>)>,
    /// Base models.
    pub base_models: Option<Vec<SourceEntry>>,
    /// Datasets.
    pub datasets: Option<Vec<SourceEntry>>,
    /// Tags.
    pub tags: Option<Vec<String>>,
    /// Languages.
    pub languages: Option<Vec<String>>,
}

/// String fields of `Metadata`, in the order `set_gguf_meta_model` writes
/// them, with their keys.
const STRING_FIELDS: &[(&str, &str)] = &[
    ("name", "general.name"),
    ("author", "general.author"),
    ("version", "general.version"),
    ("organization", "general.organization"),
    ("finetune", "general.finetune"),
    ("basename", "general.basename"),
    ("description", "general.description"),
    ("quantized_by", "general.quantized_by"),
    ("size_label", "general.size_label"),
    ("license", "general.license"),
    ("license_name", "general.license.name"),
    ("license_link", "general.license.link"),
    ("url", "general.url"),
    ("doi", "general.doi"),
    ("uuid", "general.uuid"),
    ("repo_url", "general.repo_url"),
    ("source_url", "general.source.url"),
    ("source_doi", "general.source.doi"),
    ("source_uuid", "general.source.uuid"),
    ("source_repo_url", "general.source.repo_url"),
];

impl GeneralInfo {
    fn get(&self, field: &str) -> Option<&str> {
        self.strings
            .iter()
            .find(|(f, _)| *f == field)
            .and_then(|(_, v)| v.as_deref())
    }

    fn set(&mut self, field: &'static str, value: Option<String>) {
        match self.strings.iter_mut().find(|(f, _)| *f == field) {
            Some(slot) => slot.1 = value,
            None => self.strings.push((field, value)),
        }
    }

    /// Sets `field` only when it is not set yet.
    fn set_if_none(&mut self, field: &'static str, value: Option<String>) {
        if self.get(field).is_none() && value.is_some() {
            self.set(field, value);
        }
    }

    /// The model name.
    pub fn name(&self) -> Option<&str> {
        self.get("name")
    }
}

/// What gguf-py looks at.
#[derive(Debug, Clone, Copy, Default)]
pub struct GeneralSources<'a> {
    /// README.md's text.
    pub model_card: Option<&'a str>,
    /// config.json as written.
    pub config: Option<&'a Map<String, Json>>,
    /// generation_config.json.
    pub generation_config: Option<&'a Map<String, Json>>,
    /// The model folder's name as given on the command line.
    pub dir_name: &'a str,
    /// Elements over all output tensors.
    pub total_params: i64,
    /// `--model-name`.
    pub name_override: Option<&'a str>,
}

/// gguf-py's `Metadata.load` followed by the script's fallbacks (name from
/// the folder, size label from the parameter count).
pub fn general_info(src: &GeneralSources<'_>) -> GeneralInfo {
    let mut m = GeneralInfo::default();
    let card = src.model_card.map(front_matter).unwrap_or_default();
    apply_model_card(&mut m, &card, src.total_params);

    if let Some(id) = src
        .config
        .and_then(|c| c.get("_name_or_path"))
        .and_then(Json::as_str)
        .filter(|id| id.matches('/').count() <= 1)
    {
        apply_model_id(&mut m, id, src.total_params);
    }
    apply_model_id(&mut m, src.dir_name, src.total_params);

    if let Some(g) = src.generation_config {
        const SAMPLING: &[(&str, &str, char)] = &[
            ("sequence", "sequence", 's'),
            ("top_k", "top_k", 'i'),
            ("top_p", "top_p", 'f'),
            ("min_p", "min_p", 'f'),
            ("xtc_probability", "xtc_probability", 'f'),
            ("xtc_threshold", "xtc_threshold", 'f'),
            ("temperature", "temp", 'f'),
            ("penalty_last_n", "penalty_last_n", 'i'),
            ("penalty_repeat", "penalty_repeat", 'f'),
            ("mirostat", "mirostat", 'i'),
            ("mirostat_tau", "mirostat_tau", 'f'),
            ("mirostat_eta", "mirostat_eta", 'f'),
        ];
        for &(key, suffix, kind) in SAMPLING {
            let v = if key == "penalty_repeat" {
                g.get("penalty_repeat")
                    .or_else(|| g.get("repetition_penalty"))
            } else {
                g.get(key)
            };
            let value = match (kind, v) {
                ('s', Some(Json::String(s))) => Some(Value::String(s.clone())),
                ('i', Some(v)) => v
                    .as_i64()
                    .and_then(|n| i32::try_from(n).ok())
                    .map(Value::I32),
                ('f', Some(v)) => v.as_f64().map(|x| Value::F32(x as f32)),
                _ => None,
            };
            if let Some(value) = value {
                m.sampling.push((suffix, value));
            }
        }
    }

    if let Some(name) = src.name_override {
        m.set("name", Some(name.to_string()));
    }
    if m.name().is_none() {
        m.set("name", Some(src.dir_name.to_string()));
    }
    if m.get("size_label").is_none() && src.total_params > 0 {
        m.set("size_label", Some(size_label(src.total_params as u64)));
    }
    m
}

/// Writes the keys in `set_gguf_meta_model`'s order. Empty strings are
/// skipped, as gguf-py's `add_string` skips them.
pub fn write_general(info: &GeneralInfo, md: &mut Metadata) {
    let mut put = |key: String, v: Value| {
        if !matches!(&v, Value::String(s) if s.is_empty()) {
            md.set(key, v);
        }
    };
    for (suffix, v) in &info.sampling {
        put(format!("general.sampling.{suffix}"), v.clone());
    }
    for &(field, key) in STRING_FIELDS {
        if let Some(v) = info.get(field) {
            put(key.to_string(), Value::String(v.to_string()));
        }
    }
    for (list, what) in [
        (&info.base_models, "base_model"),
        (&info.datasets, "dataset"),
    ] {
        if let Some(entries) = list {
            put(
                format!("general.{what}.count"),
                Value::U32(entries.len() as u32),
            );
            for (i, e) in entries.iter().enumerate() {
                for (field, v) in &e.fields {
                    put(
                        format!("general.{what}.{i}.{field}"),
                        Value::String(v.clone()),
                    );
                }
            }
        }
    }
    for (list, key) in [
        (&info.tags, "general.tags"),
        (&info.languages, "general.languages"),
    ] {
        if let Some(items) = list.as_ref().filter(|l| !l.is_empty()) {
            put(key.to_string(), Value::Array(Array::String(items.clone())));
        }
    }
}

fn card_string(v: &Json) -> Option<String> {
    match v {
        Json::Null => None,
        Json::String(s) => Some(s.clone()),
        Json::Array(items) => Some(
            items
                .iter()
                .filter_map(card_string)
                .collect::<Vec<_>>()
                .join(","),
        ),
        other => Some(other.to_string()),
    }
}

fn apply_model_card(m: &mut GeneralInfo, card: &Map<String, Json>, total_params: i64) {
    let use_key = |m: &mut GeneralInfo, field: &'static str, key: &str| {
        if let Some(v) = card.get(key) {
            m.set_if_none(field, card_string(v));
        }
    };
    for (field, key) in [
        ("name", "name"),
        ("author", "author"),
        ("version", "version"),
        ("organization", "organization"),
        ("description", "description"),
        ("finetune", "finetune"),
        ("basename", "basename"),
        ("size_label", "size_label"),
        ("source_url", "url"),
        ("source_doi", "doi"),
        ("source_uuid", "uuid"),
        ("source_repo_url", "repo_url"),
        ("name", "model_name"),
        ("author", "model_author"),
        ("version", "model_version"),
        ("organization", "model_organization"),
        ("description", "model_description"),
        ("finetune", "model_finetune"),
        ("basename", "model_basename"),
        ("size_label", "model_size_label"),
        ("source_url", "model_url"),
        ("source_doi", "model_doi"),
        ("source_uuid", "model_uuid"),
        ("source_repo_url", "model_repo_url"),
        ("name", "model_name"),
        ("author", "model_creator"),
        ("basename", "model_type"),
    ] {
        use_key(m, field, key);
    }
    if let Some(v) = ["base_model", "base_models", "base_model_sources"]
        .iter()
        .find_map(|k| card.get(*k))
    {
        let entries = m.base_models.get_or_insert_with(Vec::new);
        for id in list_of_strings(v) {
            entries.push(source_entry(&id, total_params));
        }
    }
    if let Some(v) = ["datasets", "dataset", "dataset_sources"]
        .iter()
        .find_map(|k| card.get(*k))
    {
        let entries = m.datasets.get_or_insert_with(Vec::new);
        for id in list_of_strings(v) {
            entries.push(source_entry(&id, total_params));
        }
    }
    for (field, key) in [
        ("license", "license"),
        ("license_name", "license_name"),
        ("license_link", "license_link"),
    ] {
        use_key(m, field, key);
    }
    for (key, list) in [
        ("tags", 0),
        ("pipeline_tag", 0),
        ("languages", 1),
        ("language", 1),
    ] {
        if let Some(v) = card.get(key).filter(|v| !v.is_null()) {
            let target = if list == 0 {
                &mut m.tags
            } else {
                &mut m.languages
            };
            target
                .get_or_insert_with(Vec::new)
                .extend(list_of_strings(v));
        }
    }
}

fn list_of_strings(v: &Json) -> Vec<String> {
    match v {
        Json::String(s) => vec![s.clone()],
        Json::Array(items) => items.iter().filter_map(card_string).collect(),
        _ => Vec::new(),
    }
}

/// A base model or dataset named by a Hugging Face id or URL.
fn source_entry(id: &str, total_params: i64) -> SourceEntry {
    let mut e = SourceEntry::default();
    let hub_id =
        if id.starts_with("http://") || id.starts_with("https://") || id.starts_with("ssh://") {
            e.fields.push(("repo_url", id.to_string()));
            id.split_once("huggingface.co/")
                .map(|(_, rest)| rest)
                .filter(|rest| rest.matches('/').count() == 1 && !rest.ends_with('/'))
                .map(str::to_string)
        } else {
            Some(id.to_string())
        };
    let from_url = !e.fields.is_empty();
    if let Some(hub_id) = hub_id {
        let c = model_id_components(&hub_id, total_params);
        let mut fields = Vec::new();
        if let Some(n) = &c.full_name {
            fields.push(("name", id_to_title(n)));
        }
        if let Some(o) = &c.org {
            fields.push(("organization", id_to_title(o)));
        }
        if let Some(v) = &c.version {
            fields.push(("version", v.clone()));
        }
        if !from_url {
            if let (Some(o), Some(n)) = (&c.org, &c.full_name) {
                fields.push(("repo_url", format!("https://huggingface.co/{o}/{n}")));
            }
        }
        // gguf-py fills a dict in this order: repo_url first for URLs.
        e.fields.extend(fields);
    }
    order_fields(&mut e);
    e
}

/// Puts fields in the order `set_gguf_meta_model` writes them.
fn order_fields(e: &mut SourceEntry) {
    const ORDER: [&str; 9] = [
        "name",
        "author",
        "version",
        "organization",
        "description",
        "url",
        "doi",
        "uuid",
        "repo_url",
    ];
    e.fields
        .sort_by_key(|(k, _)| ORDER.iter().position(|o| o == k).unwrap_or(ORDER.len()));
}

fn apply_model_id(m: &mut GeneralInfo, id: &str, total_params: i64) {
    let c = model_id_components(id, total_params);
    m.set_if_none("name", c.full_name.as_deref().map(id_to_title));
    m.set_if_none("organization", c.org.as_deref().map(id_to_title));
    m.set_if_none("basename", c.basename);
    m.set_if_none("finetune", c.finetune);
    m.set_if_none("version", c.version);
    m.set_if_none("size_label", c.size_label);
}

/// The parts of a model id (`Org/Name-7B-Instruct-v0.2`) gguf-py finds.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct ModelIdComponents {
    /// Everything after the org.
    pub full_name: Option<String>,
    /// The org.
    pub org: Option<String>,
    /// Base name.
    pub basename: Option<String>,
    /// Finetune tags.
    pub finetune: Option<String>,
    /// Version.
    pub version: Option<String>,
    /// Size label.
    pub size_label: Option<String>,
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Kind {
    Basename,
    SizeLabel,
    Finetune,
    Version,
    Type,
}

/// `Metadata.get_model_id_components`.
pub fn model_id_components(model_id: &str, total_params: i64) -> ModelIdComponents {
    if model_id.contains(' ') {
        return ModelIdComponents {
            full_name: Some(model_id.to_string()),
            ..Default::default()
        };
    }
    let (mut org, name) = match model_id.split_once('/') {
        Some((o, n)) => (Some(o.to_string()), n.to_string()),
        None => (None, model_id.to_string()),
    };
    if org.as_deref().is_some_and(|o| o.starts_with('.')) {
        org = None;
    }
    let mut parts: Vec<String> = name
        .split('-')
        .filter(|p| !p.is_empty())
        .map(str::to_string)
        .collect();
    let mut kinds: Vec<Vec<Kind>> = vec![Vec::new(); parts.len()];
    for i in 0..parts.len() {
        let part = parts[i].clone();
        if is_version(&part) {
            kinds[i].push(Kind::Version);
        } else if is_quant_type(&part) {
            kinds[i].push(Kind::Type);
            parts[i] = part.to_uppercase();
        } else if i > 0 && is_size(&part) {
            let mut p: Vec<char> = part.replace('_', ".").chars().collect();
            let n = p.len();
            if p[n - 1].is_ascii_digit() && n >= 2 {
                let (a, b) = (p[n - 2], p[n - 1]);
                p.truncate(n - 2);
                p.push('.');
                p.push(b);
                p.push(a);
            }
            let n = p.len();
            if n > 1 && p[n - 2].is_ascii_digit() && "kmbt".contains(p[n - 1]) {
                p[n - 1] = p[n - 1].to_ascii_uppercase();
            }
            if total_params != 0 {
                let n = p.len();
                let number: String = p[..n - 1].iter().collect();
                if let Ok(x) = number.parse::<f64>() {
                    let exp = " KMBT".find(p[n - 1]).map_or(-1, |e| e as i32);
                    let label = x * 1000f64.powi(exp);
                    let total = total_params;
                    let context = (total < 0 && label < ((-total) / 8) as f64)
                        || (total > 0 && (label - total as f64).abs() > (7 * total / 8) as f64);
                    if context {
                        kinds[i].push(Kind::Finetune);
                        p[n - 1] = p[n - 1].to_ascii_lowercase();
                    }
                }
            }
            if kinds[i].is_empty() {
                kinds[i].push(Kind::SizeLabel);
            }
            parts[i] = p.into_iter().collect();
        } else if i > 0
            && ["chat", "instruct", "vision", "lora"].contains(&part.to_lowercase().as_str())
        {
            if total_params < 0 && part.eq_ignore_ascii_case("lora") {
                kinds[i].push(Kind::Type);
            } else {
                kinds[i].push(Kind::Finetune);
            }
        }
    }
    let numeric_size = parts
        .iter()
        .zip(&kinds)
        .any(|(p, k)| k.contains(&Kind::SizeLabel) && p.chars().any(|c| c.is_ascii_digit()));
    if numeric_size {
        for (p, k) in parts.iter().zip(kinds.iter_mut()) {
            if k.contains(&Kind::SizeLabel) && p.chars().all(char::is_alphabetic) {
                k.retain(|x| *x != Kind::SizeLabel);
            }
        }
    }
    let mut at_start = true;
    for (p, k) in parts.iter().zip(kinds.iter_mut()) {
        let alpha_start = p.chars().next().is_some_and(char::is_alphabetic);
        if at_start && ((k.is_empty() && alpha_start) || k.contains(&Kind::Version)) {
            k.push(Kind::Basename);
        } else {
            at_start = false;
            if k.is_empty() {
                k.push(Kind::Finetune);
            }
        }
    }
    for k in kinds.iter_mut().rev() {
        if k.contains(&Kind::Basename) && k.len() > 1 {
            k.retain(|x| *x != Kind::Basename);
        } else {
            break;
        }
    }
    let join = |want: &dyn Fn(&Vec<Kind>) -> bool| -> Option<String> {
        let mut seen: Vec<&str> = Vec::new();
        for (p, k) in parts.iter().zip(&kinds) {
            if want(k) {
                seen.push(p);
            }
        }
        (!seen.is_empty()).then(|| seen.join("-"))
    };
    let mut basename = join(&|k| k.contains(&Kind::Basename));
    let size_label = {
        let mut seen: Vec<&str> = Vec::new();
        for (p, k) in parts.iter().zip(&kinds) {
            if k.contains(&Kind::SizeLabel) && !seen.contains(&p.as_str()) {
                seen.push(p);
            }
        }
        (!seen.is_empty()).then(|| seen.join("-"))
    };
    let finetune = join(&|k| k.contains(&Kind::Finetune));
    let version = join(&|k| k.contains(&Kind::Version) && !k.contains(&Kind::Basename));
    if size_label.is_none() && finetune.is_none() && version.is_none() {
        basename = None;
    }
    ModelIdComponents {
        full_name: Some(name),
        org,
        basename,
        finetune,
        version,
        size_label,
    }
}

fn digits(s: &[u8]) -> usize {
    s.iter().take_while(|b| b.is_ascii_digit()).count()
}

/// `(v|iter)?\d+([.]\d+)*`, ignoring case.
fn is_version(s: &str) -> bool {
    let l = s.to_ascii_lowercase();
    let b = l.as_bytes();
    for prefix in [&b""[..], b"v", b"iter"] {
        if let Some(rest) = b.strip_prefix(prefix) {
            let mut i = digits(rest);
            if i == 0 {
                continue;
            }
            let mut ok = true;
            while i < rest.len() {
                if rest[i] != b'.' {
                    ok = false;
                    break;
                }
                let n = digits(&rest[i + 1..]);
                if n == 0 {
                    ok = false;
                    break;
                }
                i += 1 + n;
            }
            if ok {
                return true;
            }
        }
    }
    false
}

/// `i?q\d(_\w)*|b?fp?(16|32)`, ignoring case.
fn is_quant_type(s: &str) -> bool {
    let l = s.to_ascii_lowercase();
    let b = l.as_bytes();
    let q = b
        .strip_prefix(b"i")
        .filter(|r| r.starts_with(b"q"))
        .unwrap_or(b);
    if let Some(rest) = q.strip_prefix(b"q") {
        if rest.first().is_some_and(u8::is_ascii_digit) {
            let tail = &rest[1..];
            if tail.len() % 2 == 0
                && tail
                    .chunks(2)
                    .all(|c| c[0] == b'_' && (c[1].is_ascii_alphanumeric() || c[1] == b'_'))
            {
                return true;
            }
        }
    }
    let f = b.strip_prefix(b"b").unwrap_or(b);
    if let Some(rest) = f.strip_prefix(b"f") {
        let rest = rest.strip_prefix(b"p").unwrap_or(rest);
        if rest == b"16" || rest == b"32" {
            return true;
        }
    }
    false
}

/// `(([A]|\d+[x])?\d+([._]\d+)?[KMBT][\d]?|small|mini|medium|large|x?xl)`,
/// ignoring case.
fn is_size(s: &str) -> bool {
    let l = s.to_ascii_lowercase();
    if ["small", "mini", "medium", "large", "xl", "xxl"].contains(&l.as_str()) {
        return true;
    }
    let b = l.as_bytes();
    let core = |r: &[u8]| -> bool {
        let n = digits(r);
        if n == 0 {
            return false;
        }
        let mut r = &r[n..];
        if r.len() > 1 && (r[0] == b'.' || r[0] == b'_') {
            let m = digits(&r[1..]);
            if m > 0 {
                r = &r[1 + m..];
            }
        }
        match r {
            [u, rest @ ..] if b"kmbt".contains(u) => {
                rest.is_empty() || (rest.len() == 1 && rest[0].is_ascii_digit())
            }
            _ => false,
        }
    };
    if core(b) || b.strip_prefix(b"a").is_some_and(core) {
        return true;
    }
    // `\d+x` prefix.
    let n = digits(b);
    n > 0 && b.get(n) == Some(&b'x') && core(&b[n + 1..])
}

/// `Metadata.id_to_title`: title-cases lower-case words that are not
/// versions or numbers, dashes as spaces.
pub fn id_to_title(s: &str) -> String {
    s.trim()
        .replace('-', " ")
        .split_whitespace()
        .map(|w| {
            let lower = w.chars().any(char::is_lowercase) && !w.chars().any(char::is_uppercase);
            let numeric = w.starts_with(|c: char| c.is_ascii_digit())
                || (w.starts_with('v') && is_version_word(&w[1..]));
            if lower && !numeric {
                python_title(w)
            } else {
                w.to_string()
            }
        })
        .collect::<Vec<_>>()
        .join(" ")
}

/// `\d+(?:\.\d+)*` as the rest of a `v` word.
fn is_version_word(rest: &str) -> bool {
    !rest.is_empty() && is_version(rest) && rest.starts_with(|c: char| c.is_ascii_digit())
}

/// Python's `str.title()`.
fn python_title(w: &str) -> String {
    let mut out = String::with_capacity(w.len());
    let mut prev_cased = false;
    for c in w.chars() {
        if c.is_lowercase() || c.is_uppercase() {
            if prev_cased {
                out.extend(c.to_lowercase());
            } else {
                out.extend(c.to_uppercase());
            }
            prev_cased = true;
        } else {
            out.push(c);
            prev_cased = false;
        }
    }
    out
}

/// gguf-py's `model_weight_count_rounded_notation(n, min_digits=2)`.
pub fn size_label(n: u64) -> String {
    let n = n as f64;
    let (scaled, suffix) = if n > 1e12 {
        (n * 1e-12, "T")
    } else if n > 1e9 {
        (n * 1e-9, "B")
    } else if n > 1e6 {
        (n * 1e-6, "M")
    } else {
        (n * 1e-3, "K")
    };
    let rounded = scaled.round_ties_even() as u64;
    let int_digits = if rounded == 0 {
        0
    } else {
        rounded.to_string().len()
    };
    let fix = 2usize.saturating_sub(int_digits);
    format!("{scaled:.fix$}{suffix}")
}

/// The YAML front matter of a model card, in the flat subset described in
/// the module docs.
pub fn front_matter(card: &str) -> Map<String, Json> {
    let mut out = Map::new();
    let lines: Vec<&str> = card.lines().collect();
    if lines.first() != Some(&"---") {
        return out;
    }
    let body: Vec<String> = lines[1..]
        .iter()
        .take_while(|l| **l != "---")
        .map(|l| l.replace('\t', "  "))
        .collect();
    let mut i = 0;
    while i < body.len() {
        let line = &body[i];
        i += 1;
        if line.starts_with([' ', '#', '-']) || line.trim().is_empty() {
            continue;
        }
        let Some((key, value)) = line.split_once(':') else {
            continue;
        };
        let key = key.trim().trim_matches(['"', '\'']).to_string();
        let value = value.trim();
        if value.is_empty() {
            let mut items = Vec::new();
            let mut nested = false;
            while i < body.len() && (body[i].starts_with(' ') || body[i].starts_with('-')) {
                let item = body[i].trim();
                let entry = item
                    .strip_prefix("- ")
                    .or_else(|| (item == "-").then_some(""));
                if let Some(v) = entry.filter(|v| !is_mapping(v)) {
                    items.push(scalar(v.trim()));
                } else if !item.is_empty() {
                    nested = true;
                }
                i += 1;
            }
            let v = if nested || items.is_empty() {
                Json::Null
            } else {
                Json::Array(items)
            };
            out.insert(key, v);
        } else if let Some(inner) = value.strip_prefix('[').and_then(|v| v.strip_suffix(']')) {
            let items = inner
                .split(',')
                .map(str::trim)
                .filter(|s| !s.is_empty())
                .map(scalar)
                .collect();
            out.insert(key, Json::Array(items));
        } else {
            out.insert(key, scalar(value));
        }
    }
    out
}

/// True for `key: value` (a map entry, not a scalar).
fn is_mapping(v: &str) -> bool {
    !v.starts_with(['"', '\'']) && (v.contains(": ") || v.ends_with(':'))
}

/// A YAML scalar: quoted string, null, bool, number, or plain string.
fn scalar(v: &str) -> Json {
    let v = match v.find(" #") {
        Some(i) if !v.starts_with(['"', '\'']) => v[..i].trim(),
        _ => v,
    };
    if v.len() >= 2
        && ((v.starts_with('"') && v.ends_with('"')) || (v.starts_with('\'') && v.ends_with('\'')))
    {
        return Json::String(v[1..v.len() - 1].to_string());
    }
    match v {
        "" | "~" | "null" | "Null" | "NULL" => Json::Null,
        "true" | "True" | "TRUE" => Json::Bool(true),
        "false" | "False" | "FALSE" => Json::Bool(false),
        _ => {
            if let Ok(n) = v.parse::<i64>() {
                Json::from(n)
            } else if let Some(x) = v.parse::<f64>().ok().filter(|x| x.is_finite()) {
                serde_json::Number::from_f64(x).map_or(Json::Null, Json::Number)
            } else {
                Json::String(v.to_string())
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn model_ids_split_like_gguf_py() {
        let c = model_id_components("HuggingFaceTB/SmolLM2-135M-Instruct", 134_515_008);
        assert_eq!(c.full_name.as_deref(), Some("SmolLM2-135M-Instruct"));
        assert_eq!(c.org.as_deref(), Some("HuggingFaceTB"));
        assert_eq!(c.basename.as_deref(), Some("SmolLM2"));
        assert_eq!(c.size_label.as_deref(), Some("135M"));
        assert_eq!(c.finetune.as_deref(), Some("Instruct"));
        let c = model_id_components("Mistral-7B-Instruct-v0.2", 7_241_732_096);
        assert_eq!(c.basename.as_deref(), Some("Mistral"));
        assert_eq!(c.version.as_deref(), Some("v0.2"));
        assert_eq!(c.size_label.as_deref(), Some("7B"));
        let c = model_id_components("llama", 107_000);
        assert_eq!((c.basename, c.size_label), (None, None));
        let c = model_id_components("bloom-7b1", 7_000_000_000);
        assert_eq!(c.size_label.as_deref(), Some("7.1B"));
        // A size label far from the parameter count is a context length.
        let c = model_id_components("Yarn-Llama-2-13b-128k", 13_000_000_000);
        assert_eq!(c.size_label.as_deref(), Some("13B"));
        assert_eq!(c.finetune.as_deref(), Some("128k"));
    }

    #[test]
    fn titles_and_sizes() {
        assert_eq!(
            id_to_title("smollm2-135m-instruct"),
            "Smollm2 135m Instruct"
        );
        assert_eq!(id_to_title("llama"), "Llama");
        assert_eq!(id_to_title("demo-llama"), "Demo Llama");
        assert_eq!(id_to_title("model-v0.2"), "Model v0.2");
        assert_eq!(id_to_title("SmolLM2"), "SmolLM2");
        assert_eq!(size_label(107_456), "107K");
        assert_eq!(size_label(134_515_008), "135M");
        assert_eq!(size_label(1_234_567_890), "1.2B");
        assert_eq!(size_label(7_241_732_096), "7.2B");
        assert_eq!(size_label(12_500_000_000), "12B");
    }

    #[test]
    fn patterns() {
        for s in ["v1", "1.2", "iter3", "V0.2.1"] {
            assert!(is_version(s), "{s}");
        }
        for s in ["v", "1.", "v1a"] {
            assert!(!is_version(s), "{s}");
        }
        for s in ["Q4_K_M", "q8_0", "iq4_x", "bf16", "F32", "fp16"] {
            assert!(is_quant_type(s), "{s}");
        }
        // `(_\w)*` takes one character per underscore, as Python's regex does.
        assert!(!is_quant_type("iq4_nl"));
        for s in [
            "7B", "135M", "8x7B", "1.5b", "1_5B", "A3B", "7b1", "xl", "mini",
        ] {
            assert!(is_size(s), "{s}");
        }
        for s in ["7", "B", "Instruct", "8x"] {
            assert!(!is_size(s), "{s}");
        }
    }

    #[test]
    fn front_matter_subset() {
        let card = "---\nlicense: apache-2.0\nlanguage:\n- en\n- fr\ntags: [a, \"b\"]\nbase_model: Org/Base-1B\nmodel-index:\n  - name: x\n---\n# Title\n";
        let m = front_matter(card);
        assert_eq!(m["license"], "apache-2.0");
        assert_eq!(m["language"], serde_json::json!(["en", "fr"]));
        assert_eq!(m["tags"], serde_json::json!(["a", "b"]));
        assert_eq!(m["model-index"], Json::Null);
        let info = general_info(&GeneralSources {
            model_card: Some(card),
            dir_name: "my-model",
            total_params: 1_000_000_000,
            ..Default::default()
        });
        let mut md = Metadata::new();
        write_general(&info, &mut md);
        assert_eq!(md.get_str("general.license"), Some("apache-2.0"));
        assert_eq!(md.get_str("general.name"), Some("My Model"));
        assert_eq!(md.get_str("general.base_model.0.name"), Some("Base 1B"));
        assert_eq!(
            md.get_str("general.base_model.0.repo_url"),
            Some("https://huggingface.co/Org/Base-1B")
        );
        assert_eq!(md.get_u64("general.base_model.count"), Some(1));
    }
}
