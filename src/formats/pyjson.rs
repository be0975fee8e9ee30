//! JSON text as Python's `json.dump(value, f, indent=4)` writes it, which is
//! how mlx-lm writes config.json and model.safetensors.index.json: four
//! spaces of indent, `": "` between key and value, non-ASCII characters
//! escaped (`ensure_ascii`), floats in Python's `repr` (`1e-05`, `500000.0`)
//! and no newline at the end. Same values give the same bytes as mlx-lm.

use serde_json::Value;

/// `json.dumps(value, indent=4)`.
pub fn to_string_indent4(value: &Value) -> String {
    let mut out = String::new();
    write_value(&mut out, value, 0);
    out
}

fn write_value(out: &mut String, value: &Value, depth: usize) {
    match value {
        Value::Null => out.push_str("null"),
        Value::Bool(b) => out.push_str(if *b { "true" } else { "false" }),
        Value::Number(n) => match (n.as_i64(), n.as_u64(), n.as_f64()) {
            (Some(i), _, _) => out.push_str(&i.to_string()),
            (None, Some(u), _) => out.push_str(&u.to_string()),
            (None, None, Some(f)) => out.push_str(&float_repr(f)),
            _ => out.push_str(&n.to_string()),
        },
        Value::String(s) => write_string(out, s),
        Value::Array(items) => {
            if items.is_empty() {
                out.push_str("[]");
                return;
            }
            out.push('[');
            for (i, v) in items.iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                newline(out, depth + 1);
                write_value(out, v, depth + 1);
            }
            newline(out, depth);
            out.push(']');
        }
        Value::Object(map) => {
            if map.is_empty() {
                out.push_str("{}");
                return;
            }
            out.push('{');
            for (i, (k, v)) in map.iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                newline(out, depth + 1);
                write_string(out, k);
                out.push_str(": ");
                write_value(out, v, depth + 1);
            }
            newline(out, depth);
            out.push('}');
        }
    }
}

fn newline(out: &mut String, depth: usize) {
    out.push('\n');
    for _ in 0..depth * 4 {
        out.push(' ');
    }
}

/// A string with `ensure_ascii`: everything outside `' '..='~'` escaped,
/// characters past the BMP as surrogate pairs.
fn write_string(out: &mut String, s: &str) {
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            '\u{8}' => out.push_str("\\b"),
            '\u{c}' => out.push_str("\\f"),
            ' '..='~' => out.push(c),
            _ => {
                let mut units = [0u16; 2];
                for u in c.encode_utf16(&mut units) {
                    out.push_str(&format!("\\u{u:04x}"));
                }
            }
        }
    }
    out.push('"');
}

/// Python's `repr(float)`: the shortest digits that read back to the same
/// value, in fixed notation when the decimal exponent is in -4..16 and in
/// exponent notation (`1e-05`, `1.5e+16`) otherwise; a whole number keeps
/// `.0`. Non-finite values, which JSON cannot hold, give Python's
/// `NaN`/`Infinity`.
pub fn float_repr(x: f64) -> String {
    if x.is_nan() {
        return "NaN".into();
    }
    if x.is_infinite() {
        return if x > 0.0 { "Infinity" } else { "-Infinity" }.into();
    }
    // Rust's `{:e}` gives the shortest round-trip digits too: "1.5e16".
    let sci = format!("{:e}", x.abs());
    let (mantissa, exp) = sci.split_once('e').expect("{:e} has an exponent");
    let exp: i32 = exp.parse().expect("{:e} exponent is an integer");
    let digits: String = mantissa.chars().filter(|c| *c != '.').collect();
    let n = digits.len() as i32;
    let decpt = exp + 1;
    let sign = if x.is_sign_negative() { "-" } else { "" };
    let body = if x == 0.0 {
        "0.0".to_string()
    } else if decpt > -4 && decpt <= 16 {
        if decpt <= 0 {
            format!("0.{}{digits}", "0".repeat((-decpt) as usize))
        } else if decpt >= n {
            format!("{digits}{}.0", "0".repeat((decpt - n) as usize))
        } else {
            let (a, b) = digits.split_at(decpt as usize);
            format!("{a}.{b}")
        }
    } else {
        let (first, rest) = digits.split_at(1);
        let mant = if rest.is_empty() {
            first.to_string()
        } else {
            format!("{first}.{rest}")
        };
        let esign = if exp < 0 { '-' } else { '+' };
        format!("{mant}e{esign}{:02}", exp.abs())
    };
    format!("{sign}{body}")
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn floats_as_python_repr() {
        for (x, s) in [
            (1e-5, "1e-05"),
            (1e-6, "1e-06"),
            (0.0001, "0.0001"),
            (500000.0, "500000.0"),
            (1e16, "1e+16"),
            (1.5e16, "1.5e+16"),
            (1e15, "1000000000000000.0"),
            (0.02, "0.02"),
            (-2.5, "-2.5"),
            (0.0, "0.0"),
            (-0.0, "-0.0"),
            (9.999999747378752e-06, "9.999999747378752e-06"),
            (123.456, "123.456"),
            (1.0, "1.0"),
            (1e-7, "1e-07"),
            (1e100, "1e+100"),
        ] {
            assert_eq!(float_repr(x), s, "{x}");
        }
    }

    #[test]
    fn layout_as_json_dump_indent_4() {
        let v =
            json!({"a": [1, 2.0], "b": {}, "c": [], "d": {"e": "x\u{e9}\u{1f600}\"", "f": null}});
        assert_eq!(
            to_string_indent4(&v),
            "{\n    \"a\": [\n        1,\n        2.0\n    ],\n    \"b\": {},\n    \"c\": [],\n    \
             \"d\": {\n        \"e\": \"x\\u00e9\\ud83d\\ude00\\\"\",\n        \"f\": null\n    }\n}"
        );
    }
}
