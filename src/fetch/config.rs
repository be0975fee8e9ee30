//! Where the Hub is, where its cache lives, which token to send: read from
//! the environment with `huggingface_hub`'s names and precedence, so qforge
//! and the Python tools agree on every machine.

use std::path::{Path, PathBuf};
use std::time::Duration;

use super::error::{FetchErrorKind, Result};

/// The public Hub.
pub const DEFAULT_ENDPOINT: &str = "https://huggingface.co";

/// Everything about the Hub that does not depend on the repo.
#[derive(Clone)]
pub struct HubConfig {
    /// Base URL of the Hub (`HF_ENDPOINT`), no trailing `/`.
    pub endpoint: String,
    /// The hub cache folder: `HF_HUB_CACHE`, else `HF_HOME/hub`, else
    /// `$XDG_CACHE_HOME/huggingface/hub`, else `~/.cache/huggingface/hub`.
    pub cache_dir: PathBuf,
    /// The token (`HF_TOKEN`, else the token file).
    pub token: Option<String>,
    /// Where `hf auth login` keeps the token (`HF_TOKEN_PATH`, else
    /// `HF_HOME/token`): named in messages about gated repos.
    pub token_path: PathBuf,
    /// `HF_HUB_OFFLINE`: serve from the cache, never touch the network.
    pub offline: bool,
    /// Connect timeout of every request.
    pub connect_timeout: Duration,
    /// The longest a response may stay silent before the request counts as
    /// failed (and is retried).
    pub read_timeout: Duration,
}

impl std::fmt::Debug for HubConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HubConfig")
            .field("endpoint", &self.endpoint)
            .field("cache_dir", &self.cache_dir)
            .field("token", &self.token.as_ref().map(|_| "<set>"))
            .field("token_path", &self.token_path)
            .field("offline", &self.offline)
            .finish()
    }
}

impl HubConfig {
    /// Reads the process environment.
    pub fn from_env() -> Result<HubConfig> {
        HubConfig::from_vars(|k| std::env::var(k).ok().filter(|v| !v.is_empty()))
    }

    /// Reads the variables through `var` (tests pass a map).
    pub fn from_vars(var: impl Fn(&str) -> Option<String>) -> Result<HubConfig> {
        let home = || var("HOME").map(PathBuf::from);
        let hf_home = match var("HF_HOME") {
            Some(h) => expand_tilde(&h, home()),
            None => {
                let xdg = var("XDG_CACHE_HOME")
                    .map(|x| expand_tilde(&x, home()))
                    .or_else(|| home().map(|h| h.join(".cache")))
                    .ok_or_else(|| FetchErrorKind::BadEnv {
                        var: "HOME",
                        value: String::new(),
                        why: "neither HF_HOME, HF_HUB_CACHE, XDG_CACHE_HOME nor HOME is set, \
                              so there is no Hugging Face cache folder"
                            .into(),
                    })?;
                xdg.join("huggingface")
            }
        };
        let cache_dir = var("HF_HUB_CACHE")
            .or_else(|| var("HUGGINGFACE_HUB_CACHE"))
            .map(|c| expand_tilde(&c, home()))
            .unwrap_or_else(|| hf_home.join("hub"));
        let token_path = var("HF_TOKEN_PATH")
            .map(|p| expand_tilde(&p, home()))
            .unwrap_or_else(|| hf_home.join("token"));
        let token = var("HF_TOKEN")
            .or_else(|| var("HUGGING_FACE_HUB_TOKEN"))
            .and_then(clean_token)
            .or_else(|| read_token_file(&token_path));
        let endpoint = var("HF_ENDPOINT").unwrap_or_else(|| DEFAULT_ENDPOINT.to_string());
        let endpoint = endpoint.trim_end_matches('/').to_string();
        match url::Url::parse(&endpoint) {
            Ok(u) if matches!(u.scheme(), "http" | "https") && u.host().is_some() => {}
            _ => {
                return Err(FetchErrorKind::BadEnv {
                    var: "HF_ENDPOINT",
                    value: endpoint,
                    why: "expected an http(s) URL such as https://huggingface.co".into(),
                }
                .into())
            }
        }
        let offline = var("HF_HUB_OFFLINE")
            .or_else(|| var("TRANSFORMERS_OFFLINE"))
            .is_some_and(|v| is_true(&v));
        Ok(HubConfig {
            endpoint,
            cache_dir,
            token,
            token_path,
            offline,
            connect_timeout: Duration::from_secs(10),
            read_timeout: Duration::from_secs(30),
        })
    }
}

/// `huggingface_hub`'s truthy values.
fn is_true(v: &str) -> bool {
    matches!(v.to_ascii_uppercase().as_str(), "1" | "ON" | "YES" | "TRUE")
}

fn clean_token(t: String) -> Option<String> {
    let t = t.replace(['\r', '\n'], "");
    let t = t.trim();
    (!t.is_empty()).then(|| t.to_string())
}

fn read_token_file(path: &Path) -> Option<String> {
    std::fs::read_to_string(path).ok().and_then(clean_token)
}

fn expand_tilde(p: &str, home: Option<PathBuf>) -> PathBuf {
    match (p, home) {
        ("~", Some(h)) => h,
        (_, Some(h)) if p.starts_with("~/") => h.join(&p[2..]),
        _ => PathBuf::from(p),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    fn cfg(vars: &[(&str, &str)]) -> HubConfig {
        let map: HashMap<String, String> = vars
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        HubConfig::from_vars(|k| map.get(k).cloned()).unwrap()
    }

    #[test]
    fn precedence_matches_huggingface_hub() {
        let c = cfg(&[("HOME", "/home/u")]);
        assert_eq!(c.cache_dir, Path::new("/home/u/.cache/huggingface/hub"));
        assert_eq!(c.token_path, Path::new("/home/u/.cache/huggingface/token"));
        assert_eq!(c.endpoint, DEFAULT_ENDPOINT);
        assert!(!c.offline);

        let c = cfg(&[("HOME", "/home/u"), ("XDG_CACHE_HOME", "/x")]);
        assert_eq!(c.cache_dir, Path::new("/x/huggingface/hub"));

        let c = cfg(&[("HF_HOME", "~/hf"), ("HOME", "/home/u")]);
        assert_eq!(c.cache_dir, Path::new("/home/u/hf/hub"));
        assert_eq!(c.token_path, Path::new("/home/u/hf/token"));

        let c = cfg(&[("HF_HOME", "/hf"), ("HF_HUB_CACHE", "/cache")]);
        assert_eq!(c.cache_dir, Path::new("/cache"));
        assert_eq!(
            c.token_path,
            Path::new("/hf/token"),
            "token stays in HF_HOME"
        );

        let c = cfg(&[
            ("HF_HOME", "/hf"),
            ("HF_ENDPOINT", "http://127.0.0.1:8080/"),
            ("HF_HUB_OFFLINE", "yes"),
            ("HF_TOKEN", " hf_abc\n"),
        ]);
        assert_eq!(c.endpoint, "http://127.0.0.1:8080");
        assert!(c.offline);
        assert_eq!(c.token.as_deref(), Some("hf_abc"));
    }

    #[test]
    fn token_file_is_read_when_no_env_token() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("token"), "hf_from_file\n").unwrap();
        let home = dir.path().to_str().unwrap();
        let c = cfg(&[("HF_HOME", home)]);
        assert_eq!(c.token.as_deref(), Some("hf_from_file"));
        let c = cfg(&[("HF_HOME", home), ("HF_TOKEN", "hf_env")]);
        assert_eq!(c.token.as_deref(), Some("hf_env"));
    }

    #[test]
    fn bad_endpoint_is_named() {
        let err = HubConfig::from_vars(|k| match k {
            "HF_HOME" => Some("/hf".into()),
            "HF_ENDPOINT" => Some("huggingface.co".into()),
            _ => None,
        })
        .unwrap_err();
        assert!(err.to_string().contains("HF_ENDPOINT"), "{err}");
    }
}
