//! Which files of a repo to fetch: `--include`/`--exclude` globs with the
//! meaning `huggingface_hub` gives them (`fnmatch.fnmatchcase`: `*` crosses
//! `/`, a pattern ending in `/` means the folder's contents), and the default
//! set that conversion needs when no `--include` is given.

use super::error::{FetchErrorKind, Result};

/// Include and exclude globs. An empty include list means the default set
/// ([`default_selection`]); excludes apply on top of either.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct FileFilter {
    /// Globs a file must match one of (empty: the default set).
    pub include: Vec<String>,
    /// Globs a file must match none of.
    pub exclude: Vec<String>,
}

impl FileFilter {
    /// The default set, no excludes.
    pub fn conversion_defaults() -> FileFilter {
        FileFilter::default()
    }

    /// Checks every glob parses; called before any network traffic.
    pub fn validate(&self) -> Result<()> {
        for p in self.include.iter().chain(&self.exclude) {
            parse(p)?;
        }
        Ok(())
    }

    /// The paths of `all` (repo-relative, `/`-separated) this filter keeps,
    /// in the order given.
    pub fn select<'a>(&self, all: &[&'a str]) -> Result<Vec<&'a str>> {
        let include: Vec<Vec<Token>> = self
            .include
            .iter()
            .map(|p| parse(&with_dir_wildcard(p)))
            .collect::<Result<_>>()?;
        let exclude: Vec<Vec<Token>> = self
            .exclude
            .iter()
            .map(|p| parse(&with_dir_wildcard(p)))
            .collect::<Result<_>>()?;
        let base: Vec<&str> = if include.is_empty() {
            default_selection(all)
        } else {
            all.iter()
                .copied()
                .filter(|f| include.iter().any(|t| matches(t, f.as_bytes())))
                .collect()
        };
        Ok(base
            .into_iter()
            .filter(|f| !exclude.iter().any(|t| matches(t, f.as_bytes())))
            .collect())
    }

    /// The patterns in words, for messages.
    pub fn describe(&self) -> String {
        let mut parts = Vec::new();
        if self.include.is_empty() {
            parts
                .push("the default set (config, tokenizer, safetensors or GGUF files)".to_string());
        } else {
            parts.push(format!("--include {}", self.include.join(" ")));
        }
        if !self.exclude.is_empty() {
            parts.push(format!("--exclude {}", self.exclude.join(" ")));
        }
        parts.join(" and ")
    }
}

/// Small files conversion reads: model config, generation defaults, the
/// tokenizer in each of its shapes, and the chat template.
pub const DEFAULT_SIDE_FILES: &[&str] = &[
    "config.json",
    "generation_config.json",
    "tokenizer.json",
    "tokenizer_config.json",
    "tokenizer.model",
    "special_tokens_map.json",
    "added_tokens.json",
    "vocab.json",
    "merges.txt",
    "chat_template.jinja",
    "chat_template.json",
];

/// What conversion needs from a repo listing `all`:
/// - a safetensors repo (top-level `*.safetensors`): the side files, the
///   weights and their `*.safetensors.index.json`. Mistral-style repos that
///   carry both `consolidated*.safetensors` and the transformers shards get
///   the shards only (the consolidated copy doubles the download).
/// - otherwise a GGUF repo: every `*.gguf` in any folder (all
///   quantizations; pick one with `--include '*Q4_K_M*'`).
///
/// Files in subfolders (other pipelines, `original/`, `onnx/`) are left out.
pub fn default_selection<'a>(all: &[&'a str]) -> Vec<&'a str> {
    let top = |f: &&str| !f.contains('/');
    let is_st = |f: &str| f.ends_with(".safetensors");
    let top_st: Vec<&str> = all
        .iter()
        .copied()
        .filter(top)
        .filter(|f| is_st(f))
        .collect();
    if !top_st.is_empty() {
        let has_shards = top_st.iter().any(|f| !f.starts_with("consolidated"));
        return all
            .iter()
            .copied()
            .filter(top)
            .filter(|f| {
                DEFAULT_SIDE_FILES.contains(f)
                    || f.ends_with(".safetensors.index.json")
                    || (is_st(f) && !(has_shards && f.starts_with("consolidated")))
            })
            .collect();
    }
    all.iter()
        .copied()
        .filter(|f| f.ends_with(".gguf"))
        .collect()
}

fn with_dir_wildcard(p: &str) -> String {
    let p = p.replace('\\', "/");
    if p.ends_with('/') {
        format!("{p}*")
    } else {
        p
    }
}

#[derive(Debug, Clone, PartialEq)]
enum Token {
    Byte(u8),
    Any,
    One,
    Class {
        negated: bool,
        ranges: Vec<(u8, u8)>,
    },
}

/// Parses a glob into tokens, as Python's `fnmatch.translate` reads it:
/// `*`, `?`, `[seq]`, `[!seq]`; a `[` with no closing `]` is a literal.
fn parse(pattern: &str) -> Result<Vec<Token>> {
    let b = pattern.as_bytes();
    if b.is_empty() {
        return Err(FetchErrorKind::BadPattern {
            pattern: pattern.to_string(),
            why: "it is empty",
        }
        .into());
    }
    let mut out = Vec::new();
    let mut i = 0;
    while i < b.len() {
        match b[i] {
            b'*' => {
                if out.last() != Some(&Token::Any) {
                    out.push(Token::Any);
                }
                i += 1;
            }
            b'?' => {
                out.push(Token::One);
                i += 1;
            }
            b'[' => {
                let mut j = i + 1;
                let negated = j < b.len() && b[j] == b'!';
                if negated {
                    j += 1;
                }
                // A `]` right after `[` or `[!` is a member, not the end.
                if j < b.len() && b[j] == b']' {
                    j += 1;
                }
                while j < b.len() && b[j] != b']' {
                    j += 1;
                }
                if j >= b.len() {
                    out.push(Token::Byte(b'['));
                    i += 1;
                    continue;
                }
                let body = &b[i + 1 + usize::from(negated)..j];
                let mut ranges = Vec::new();
                let mut k = 0;
                while k < body.len() {
                    if k + 2 < body.len() && body[k + 1] == b'-' {
                        if body[k] <= body[k + 2] {
                            ranges.push((body[k], body[k + 2]));
                        }
                        k += 3;
                    } else {
                        ranges.push((body[k], body[k]));
                        k += 1;
                    }
                }
                out.push(Token::Class { negated, ranges });
                i = j + 1;
            }
            c => {
                out.push(Token::Byte(c));
                i += 1;
            }
        }
    }
    Ok(out)
}

/// Glob match over bytes (`*` matches any run, `/` included), with the
/// classic backtrack-to-last-star loop: linear in practice, no recursion.
fn matches(pat: &[Token], s: &[u8]) -> bool {
    let (mut p, mut i) = (0usize, 0usize);
    let mut star: Option<(usize, usize)> = None;
    while i < s.len() {
        let step = match pat.get(p) {
            Some(Token::Any) => {
                star = Some((p, i));
                p += 1;
                continue;
            }
            Some(Token::One) => true,
            Some(Token::Byte(c)) => *c == s[i],
            Some(Token::Class { negated, ranges }) => {
                ranges.iter().any(|&(lo, hi)| lo <= s[i] && s[i] <= hi) != *negated
            }
            None => false,
        };
        if step {
            p += 1;
            i += 1;
        } else if let Some((sp, si)) = star {
            p = sp + 1;
            i = si + 1;
            star = Some((sp, si + 1));
        } else {
            return false;
        }
    }
    pat[p..].iter().all(|t| *t == Token::Any)
}

/// Whether `path` matches glob `pattern` (fnmatchcase semantics).
pub fn glob_matches(pattern: &str, path: &str) -> Result<bool> {
    Ok(matches(
        &parse(&with_dir_wildcard(pattern))?,
        path.as_bytes(),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn m(p: &str, s: &str) -> bool {
        glob_matches(p, s).unwrap()
    }

    #[test]
    fn fnmatch_semantics() {
        assert!(m("*.json", "config.json"));
        assert!(
            m("*.json", "sub/dir/config.json"),
            "* crosses / as in fnmatch"
        );
        assert!(!m("*.json", "config.json.bak"));
        assert!(m(
            "model-?????-of-*.safetensors",
            "model-00001-of-00002.safetensors"
        ));
        assert!(m("*Q4_K_M*", "smol-Q4_K_M.gguf"));
        assert!(!m("*Q4_K_M*", "smol-Q4_K_S.gguf"));
        assert!(m("[abc]x", "bx"));
        assert!(!m("[!abc]x", "bx"));
        assert!(m("[a-c]x", "cx"));
        assert!(m("[]]", "]"));
        assert!(m("a[", "a["), "unclosed [ is literal");
        assert!(m("original/", "original/params.json"));
        assert!(m("*", ""));
        assert!(!m("?", ""));
        assert!(m("a*b*c", "a_b_b_c"));
        assert!(!m("a*b*c", "a_b_b_"));
        assert!(m("Config.json", "Config.json"));
        assert!(!m("config.json", "Config.json"), "case-sensitive");
    }

    #[test]
    fn empty_pattern_is_an_error() {
        assert!(FileFilter {
            include: vec![String::new()],
            exclude: vec![]
        }
        .validate()
        .is_err());
    }

    #[test]
    fn defaults_for_a_safetensors_repo() {
        let all = [
            ".gitattributes",
            "README.md",
            "config.json",
            "generation_config.json",
            "model-00001-of-00002.safetensors",
            "model-00002-of-00002.safetensors",
            "model.safetensors.index.json",
            "consolidated.safetensors",
            "params.json",
            "tokenizer.json",
            "tokenizer_config.json",
            "tokenizer.model",
            "special_tokens_map.json",
            "chat_template.jinja",
            "original/consolidated.00.pth",
            "onnx/model.safetensors",
            "pytorch_model.bin",
        ];
        let got = default_selection(&all);
        assert_eq!(
            got,
            vec![
                "config.json",
                "generation_config.json",
                "model-00001-of-00002.safetensors",
                "model-00002-of-00002.safetensors",
                "model.safetensors.index.json",
                "tokenizer.json",
                "tokenizer_config.json",
                "tokenizer.model",
                "special_tokens_map.json",
                "chat_template.jinja",
            ]
        );
    }

    #[test]
    fn consolidated_only_repo_keeps_it() {
        let all = ["params.json", "consolidated.safetensors", "tokenizer.json"];
        assert_eq!(
            default_selection(&all),
            vec!["consolidated.safetensors", "tokenizer.json"]
        );
    }

    #[test]
    fn defaults_for_a_gguf_repo_and_choosing_one() {
        let all = [
            "README.md",
            "smol-Q4_K_M.gguf",
            "smol-Q8_0.gguf",
            "big/big-Q4_K_M-00001-of-00002.gguf",
            "big/big-Q4_K_M-00002-of-00002.gguf",
        ];
        assert_eq!(
            FileFilter::default().select(&all).unwrap(),
            vec![
                "smol-Q4_K_M.gguf",
                "smol-Q8_0.gguf",
                "big/big-Q4_K_M-00001-of-00002.gguf",
                "big/big-Q4_K_M-00002-of-00002.gguf",
            ]
        );
        let pick = FileFilter {
            include: vec!["*Q4_K_M*".into()],
            exclude: vec!["big/".into()],
        };
        assert_eq!(pick.select(&all).unwrap(), vec!["smol-Q4_K_M.gguf"]);
    }
}
