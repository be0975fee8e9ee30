//! Hyperparameters as convert_hf_to_gguf.py sees them.
//!
//! The script does not read config.json directly: it loads it through
//! transformers' `AutoConfig(...).to_dict()`, which fills in each
//! architecture's defaults (`head_dim`, `num_key_value_heads`, ...) and, in
//! transformers 5, moves `rope_theta`/`rope_scaling` into `rope_parameters`.
//! [`HParams`] reproduces that view from config.json alone: the
//! architecture's file supplies the defaults, this file the rope
//! normalisation and the script's own `find_hparam` lookup.

use serde_json::{Map, Value as Json};

/// A config.json object.
pub type JsonMap = Map<String, Json>;

/// The hyperparameters of a model: config.json after transformers'
/// normalisation, with the script's lookup rules.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct HParams {
    map: JsonMap,
}

impl HParams {
    /// Wraps an already normalised map.
    pub fn from_map(map: JsonMap) -> HParams {
        HParams { map }
    }

    /// The underlying map.
    pub fn map(&self) -> &JsonMap {
        &self.map
    }

    /// The value under `key` (which may be JSON null).
    pub fn get(&self, key: &str) -> Option<&Json> {
        self.map.get(key)
    }

    /// The script's `find_hparam(keys, optional=True)`: the value of the
    /// first key that is *present*, even when it is null.
    pub fn find(&self, keys: &[&str]) -> Option<&Json> {
        keys.iter().find_map(|k| self.map.get(*k))
    }

    /// [`HParams::find`] that skips a null value, as the script's
    /// `if (x := find_hparam(...)) is not None` does.
    pub fn find_some(&self, keys: &[&str]) -> Option<&Json> {
        self.find(keys).filter(|v| !v.is_null())
    }

    /// An unsigned integer under `key`.
    pub fn u64(&self, key: &str) -> Option<u64> {
        self.map.get(key).and_then(Json::as_u64)
    }

    /// A number under `key`.
    pub fn f64(&self, key: &str) -> Option<f64> {
        self.map.get(key).and_then(Json::as_f64)
    }

    /// A string under `key`.
    pub fn str(&self, key: &str) -> Option<&str> {
        self.map.get(key).and_then(Json::as_str)
    }

    /// A bool under `key`.
    pub fn bool(&self, key: &str) -> Option<bool> {
        self.map.get(key).and_then(Json::as_bool)
    }

    /// `rope_parameters` as the script's `TextModel.__init__` completes it:
    /// `rope_parameters` (or `rope_scaling`), with the top-level rope theta,
    /// local theta, type, partial rotary factor and original context copied
    /// in when the map is not split into full/sliding attention.
    pub fn rope_parameters(&self) -> JsonMap {
        let mut rp = match self
            .map
            .get("rope_parameters")
            .filter(|v| !v.is_null())
            .or_else(|| self.map.get("rope_scaling"))
        {
            Some(Json::Object(m)) => m.clone(),
            _ => JsonMap::new(),
        };
        let rope_theta = self.find_some(&[
            "global_rope_theta",
            "rope_global_theta",
            "rope_theta_global",
            "rope_theta",
            "rotary_emb_base",
        ]);
        let local_theta = self.find_some(&[
            "local_rope_theta",
            "rope_local_theta",
            "rope_theta_local",
            "swa_rope_theta",
            "rope_local_base_freq",
        ]);
        let partial = self.find_some(&["partial_rotary_factor", "rope_pct", "rope_percent"]);
        let orig_ctx = self.find_some(&["original_max_position_embeddings"]);
        if !rp.contains_key("full_attention") && !rp.contains_key("sliding_attention") {
            if let Some(t) = local_theta {
                let mut m = JsonMap::new();
                m.insert("rope_theta".into(), t.clone());
                rp.insert("sliding_attention".into(), Json::Object(m));
            }
            if let (false, Some(t)) = (rp.contains_key("rope_theta"), rope_theta) {
                rp.insert("rope_theta".into(), t.clone());
            }
            if !rp.contains_key("rope_type") {
                if let Some(t) = rp.get("type").filter(|t| !t.is_null()).cloned() {
                    rp.insert("rope_type".into(), t);
                }
            }
            if let (false, Some(p)) = (rp.contains_key("partial_rotary_factor"), partial) {
                rp.insert("partial_rotary_factor".into(), p.clone());
            }
            if let (false, Some(o)) = (
                rp.contains_key("original_max_position_embeddings"),
                orig_ctx,
            ) {
                rp.insert("original_max_position_embeddings".into(), o.clone());
            }
        }
        rp
    }

    /// The rope parameters of full-attention layers: the
    /// `full_attention` entry when the map is split, else the map itself.
    pub fn full_attention_rope(&self) -> JsonMap {
        let rp = self.rope_parameters();
        match rp.get("full_attention") {
            Some(Json::Object(m)) => m.clone(),
            _ => rp,
        }
    }
}

/// Moves `text_config` to the top level (the script's TextModel does this
/// for multimodal configs) and applies transformers 5's rope
/// normalisation: a config without `rope_parameters` gets one built from
/// `rope_scaling`, the top-level `rope_theta` (or `default_theta`) and
/// `partial_rotary_factor`.
pub fn normalize_config(raw: &JsonMap, default_theta: f64) -> JsonMap {
    let mut map = raw.clone();
    if let Some(Json::Object(text)) = raw.get("text_config") {
        for (k, v) in text {
            map.insert(k.clone(), v.clone());
        }
    }
    let has_rp = map.get("rope_parameters").is_some_and(|v| !v.is_null());
    if !has_rp {
        let mut rp = match map.get("rope_scaling") {
            Some(Json::Object(m)) => m.clone(),
            _ => JsonMap::new(),
        };
        if !rp.contains_key("rope_type") {
            let t = rp
                .get("type")
                .cloned()
                .unwrap_or_else(|| Json::String("default".into()));
            rp.insert("rope_type".into(), t);
        }
        rp.remove("type");
        let theta = map
            .get("rope_theta")
            .filter(|v| !v.is_null())
            .cloned()
            .unwrap_or_else(|| json_f64(default_theta));
        rp.entry("rope_theta").or_insert(theta);
        if let Some(p) = map.get("partial_rotary_factor").filter(|v| !v.is_null()) {
            rp.entry("partial_rotary_factor").or_insert(p.clone());
        }
        map.insert("rope_parameters".into(), Json::Object(rp));
        // transformers 5 keeps these only inside rope_parameters.
        map.insert("rope_theta".into(), Json::Null);
        map.insert("rope_scaling".into(), Json::Null);
    }
    map
}

/// Inserts `key: value` when `key` is absent.
pub fn default_key(map: &mut JsonMap, key: &str, value: Json) {
    if !map.contains_key(key) {
        map.insert(key.to_string(), value);
    }
}

/// A JSON number from an f64 (NaN and infinities become null).
pub fn json_f64(x: f64) -> Json {
    serde_json::Number::from_f64(x)
        .map(Json::Number)
        .unwrap_or(Json::Null)
}

/// The JSON number that prints an f32 the way Python prints it after a
/// round trip through a GGUF file: the shortest decimal that reads back as
/// the same f32 (`1e-05`, not `9.999999747378752e-06`).
pub fn json_f32(x: f32) -> Json {
    let shortest: f64 = format!("{x}").parse().unwrap_or(f64::from(x));
    json_f64(shortest)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn map(v: Json) -> JsonMap {
        v.as_object().unwrap().clone()
    }

    #[test]
    fn find_returns_first_present_key_even_when_null() {
        let h = HParams::from_map(map(json!({"a": null, "b": 2})));
        assert_eq!(h.find(&["a", "b"]), Some(&Json::Null));
        assert_eq!(h.find_some(&["a", "b"]), None);
        assert_eq!(h.find(&["b", "a"]), Some(&json!(2)));
    }

    #[test]
    fn old_style_rope_theta_moves_into_rope_parameters() {
        let m = normalize_config(&map(json!({"rope_theta": 500000.0})), 10000.0);
        assert_eq!(
            m["rope_parameters"],
            json!({"rope_type": "default", "rope_theta": 500000.0})
        );
        let m = normalize_config(&map(json!({})), 10000.0);
        assert_eq!(m["rope_parameters"]["rope_theta"], json!(10000.0));
        let m = normalize_config(
            &map(json!({"rope_scaling": {"type": "linear", "factor": 2.0}, "rope_theta": 1e4})),
            1.0,
        );
        assert_eq!(
            m["rope_parameters"],
            json!({"rope_type": "linear", "factor": 2.0, "rope_theta": 1e4})
        );
    }

    #[test]
    fn split_rope_parameters_pick_full_attention() {
        let h = HParams::from_map(map(json!({"rope_parameters": {
            "full_attention": {"rope_theta": 1e6}, "sliding_attention": {"rope_theta": 1e4}}})));
        assert_eq!(h.full_attention_rope()["rope_theta"], json!(1e6));
    }

    #[test]
    fn f32_values_print_short() {
        assert_eq!(json_f32(1e-5).as_f64(), Some(1e-5));
        assert_eq!(json_f32(500000.0).as_f64(), Some(500000.0));
        assert_eq!(json_f32(1e-6).as_f64(), Some(1e-6));
    }
}
