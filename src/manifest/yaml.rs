//! Positions in the manifest's YAML text.
//!
//! The manifest is parsed into a [`serde_yaml_ng::Value`] tree and checked
//! from there, which gives every message our own words but loses where each
//! node was. [`locate`] gets a position back on demand: it parses the text
//! again with a visitor that walks the path to the node and fails there on
//! purpose; serde_yaml_ng stamps that failure with the node's line and
//! column. Manifests are small and errors rare, so a second parse per error
//! costs nothing.

use std::fmt;

use serde::de::{self, DeserializeSeed, IgnoredAny, MapAccess, SeqAccess, Visitor};

/// One step into a YAML tree.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Seg {
    /// A key of a mapping.
    Key(String),
    /// An item of a list.
    Index(usize),
}

/// Where a node sits in the tree: the keys and indices from the root.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct NodePath(pub Vec<Seg>);

impl NodePath {
    /// The root.
    pub fn root() -> NodePath {
        NodePath(Vec::new())
    }

    /// This path and one key further.
    pub fn key(&self, k: &str) -> NodePath {
        let mut p = self.0.clone();
        p.push(Seg::Key(k.to_string()));
        NodePath(p)
    }

    /// This path and one list item further.
    pub fn index(&self, i: usize) -> NodePath {
        let mut p = self.0.clone();
        p.push(Seg::Index(i));
        NodePath(p)
    }

    /// The path one step up (the root stays the root).
    pub fn parent(&self) -> NodePath {
        let mut p = self.0.clone();
        p.pop();
        NodePath(p)
    }
}

impl fmt::Display for NodePath {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, s) in self.0.iter().enumerate() {
            match s {
                Seg::Key(k) if i == 0 => write!(f, "{k}")?,
                Seg::Key(k) => write!(f, ".{k}")?,
                Seg::Index(n) => write!(f, "[{n}]")?,
            }
        }
        Ok(())
    }
}

/// Which part of a mapping entry a position should point at.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum At {
    /// The key itself (for unknown or misplaced keys).
    Key,
    /// The value under the key (for wrong values).
    Value,
}

/// A 1-based line and column.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct Pos {
    /// Line, from 1.
    pub line: usize,
    /// Column, from 1.
    pub column: usize,
}

impl fmt::Display for Pos {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}", self.line, self.column)
    }
}

const HERE: &str = "\u{0}qforge: the node is here";

/// The position of the node at `path` in `src` (its key with [`At::Key`]),
/// or of its nearest ancestor that can be found (a key brought in by a YAML
/// merge has no place of its own); 1:1 when nothing is found.
pub fn locate(src: &str, path: &NodePath, at: At) -> Pos {
    let mut path = path.clone();
    let mut at = at;
    loop {
        if let Some(p) = locate_exact(src, &path.0, at) {
            return p;
        }
        if path.0.is_empty() {
            return Pos { line: 1, column: 1 };
        }
        path = path.parent();
        at = At::Value;
    }
}

/// The position of the `n`th (from 0) occurrence of `key` in the mapping at
/// `map` (YAML forbids a second one; this finds it to say so).
pub fn locate_key(src: &str, map: &NodePath, key: &str, n: usize) -> Option<Pos> {
    let mut path = map.0.clone();
    path.push(Seg::Key(key.to_string()));
    walk(
        src,
        Walk {
            path: &path,
            at: At::Key,
            nth: n,
        },
    )
}

fn locate_exact(src: &str, path: &[Seg], at: At) -> Option<Pos> {
    walk(src, Walk { path, at, nth: 0 })
}

fn walk(src: &str, w: Walk<'_>) -> Option<Pos> {
    let de = serde_yaml_ng::Deserializer::from_str(src);
    let err = w.deserialize(de).err()?;
    // The message carries the node's YAML path in front of ours.
    if !err.to_string().contains(HERE) {
        return None;
    }
    let loc = err.location()?;
    Some(Pos {
        line: loc.line(),
        column: loc.column(),
    })
}

/// Walks to the node at `path` and fails there with [`HERE`]; with
/// [`At::Key`], on the `nth` occurrence of the last key.
struct Walk<'p> {
    path: &'p [Seg],
    at: At,
    nth: usize,
}

impl<'de> DeserializeSeed<'de> for Walk<'_> {
    type Value = ();

    fn deserialize<D: de::Deserializer<'de>>(self, d: D) -> Result<(), D::Error> {
        d.deserialize_any(self)
    }
}

impl Walk<'_> {
    fn scalar<E: de::Error>(self) -> Result<(), E> {
        if self.path.is_empty() {
            Err(E::custom(HERE))
        } else {
            Ok(())
        }
    }
}

macro_rules! scalars {
    ($($name:ident: $ty:ty),*) => {
        $(fn $name<E: de::Error>(self, _: $ty) -> Result<(), E> {
            self.scalar()
        })*
    };
}

impl<'de> Visitor<'de> for Walk<'_> {
    type Value = ();

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("any YAML node")
    }

    scalars!(visit_bool: bool, visit_i64: i64, visit_u64: u64, visit_f64: f64, visit_str: &str);

    fn visit_unit<E: de::Error>(self) -> Result<(), E> {
        self.scalar()
    }

    fn visit_none<E: de::Error>(self) -> Result<(), E> {
        self.scalar()
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<(), A::Error> {
        let Some((first, rest)) = self.path.split_first() else {
            return Err(de::Error::custom(HERE));
        };
        let Seg::Key(want) = first else {
            return Ok(());
        };
        let on_key = rest.is_empty() && self.at == At::Key;
        let mut seen = 0;
        while let Some(hit) = map.next_key_seed(KeySeed {
            want,
            fail: on_key && seen == self.nth,
        })? {
            if hit && !on_key {
                return map.next_value_seed(Walk {
                    path: rest,
                    at: self.at,
                    nth: self.nth,
                });
            }
            seen += usize::from(hit);
            map.next_value::<IgnoredAny>()?;
        }
        Ok(())
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<(), A::Error> {
        let Some((first, rest)) = self.path.split_first() else {
            return Err(de::Error::custom(HERE));
        };
        let Seg::Index(want) = first else {
            return Ok(());
        };
        let mut i = 0;
        loop {
            if i == *want {
                return seq
                    .next_element_seed(Walk {
                        path: rest,
                        at: self.at,
                        nth: self.nth,
                    })
                    .map(|_| ());
            }
            if seq.next_element::<IgnoredAny>()?.is_none() {
                return Ok(());
            }
            i += 1;
        }
    }
}

/// Reads one mapping key: true when it is the one wanted, and a failure
/// right on it when the position asked for is the key's.
struct KeySeed<'w> {
    want: &'w str,
    fail: bool,
}

impl<'de> DeserializeSeed<'de> for KeySeed<'_> {
    type Value = bool;

    fn deserialize<D: de::Deserializer<'de>>(self, d: D) -> Result<bool, D::Error> {
        d.deserialize_any(self)
    }
}

macro_rules! other_keys {
    ($($name:ident: $ty:ty),*) => {
        $(fn $name<E: de::Error>(self, v: $ty) -> Result<bool, E> {
            self.check(&v.to_string())
        })*
    };
}

impl KeySeed<'_> {
    fn check<E: de::Error>(self, key: &str) -> Result<bool, E> {
        match (key == self.want, self.fail) {
            (true, true) => Err(E::custom(HERE)),
            (hit, _) => Ok(hit),
        }
    }
}

impl<'de> Visitor<'de> for KeySeed<'_> {
    type Value = bool;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a mapping key")
    }

    other_keys!(visit_bool: bool, visit_i64: i64, visit_u64: u64, visit_f64: f64);

    fn visit_str<E: de::Error>(self, v: &str) -> Result<bool, E> {
        self.check(v)
    }

    fn visit_unit<E: de::Error>(self) -> Result<bool, E> {
        self.check("null")
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<bool, A::Error> {
        while map.next_entry::<IgnoredAny, IgnoredAny>()?.is_some() {}
        Ok(false)
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<bool, A::Error> {
        while seq.next_element::<IgnoredAny>()?.is_some() {}
        Ok(false)
    }
}

/// Parses serde_yaml_ng's rendering of a node path (`artifacts[0].name`,
/// `.` for the root) back into a [`NodePath`].
pub fn parse_error_path(text: &str) -> NodePath {
    let mut out = Vec::new();
    if text == "." {
        return NodePath(out);
    }
    for part in text.split('.') {
        let (key, mut rest) = match part.find('[') {
            Some(i) => (&part[..i], &part[i..]),
            None => (part, ""),
        };
        if !key.is_empty() {
            out.push(Seg::Key(key.to_string()));
        }
        while let Some(end) = rest.find(']') {
            if let Ok(i) = rest[1..end].parse() {
                out.push(Seg::Index(i));
            }
            rest = &rest[end + 1..];
        }
    }
    NodePath(out)
}

/// A YAML syntax error in our words: libyaml's problem with its position
/// cut out of the text (the position is reported separately).
pub fn syntax_message(err: &serde_yaml_ng::Error) -> String {
    let text = err.to_string();
    let mut out = String::with_capacity(text.len());
    let mut rest = text.as_str();
    while let Some(i) = rest.find(" at line ") {
        out.push_str(&rest[..i]);
        let after = &rest[i + " at line ".len()..];
        // Skip "N column M" (and a following "," stays).
        let skip = after
            .find(|c: char| !(c.is_ascii_digit() || c == ' ' || "column".contains(c)))
            .unwrap_or(after.len());
        rest = &after[skip..];
    }
    out.push_str(rest);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    const DOC: &str = "\
from: ./model
artifacts:
  - name: a
    format: gguf
  - name: b
    quantization:
      bits: 4
list: [1, 2, {x: 3}]
";

    fn at(path: &[Seg], at: At) -> String {
        locate(DOC, &NodePath(path.to_vec()), at).to_string()
    }

    fn k(s: &str) -> Seg {
        Seg::Key(s.into())
    }

    #[test]
    fn finds_keys_and_values() {
        assert_eq!(at(&[k("from")], At::Key), "1:1");
        assert_eq!(at(&[k("from")], At::Value), "1:7");
        assert_eq!(at(&[k("artifacts"), Seg::Index(0)], At::Value), "3:5");
        assert_eq!(
            at(&[k("artifacts"), Seg::Index(1), k("name")], At::Value),
            "5:11"
        );
        assert_eq!(
            at(
                &[k("artifacts"), Seg::Index(1), k("quantization"), k("bits")],
                At::Key
            ),
            "7:7"
        );
        assert_eq!(at(&[k("list"), Seg::Index(2), k("x")], At::Value), "8:18");
    }

    #[test]
    fn missing_nodes_fall_back_to_the_nearest_ancestor() {
        assert_eq!(
            at(&[k("artifacts"), Seg::Index(0), k("nope")], At::Key),
            "3:5"
        );
        assert_eq!(at(&[k("nope")], At::Key), "1:1");
    }

    #[test]
    fn second_occurrences_and_error_paths() {
        let doc = "a: 1\nb:\n  c: 2\n  c: 3\n";
        let p = locate_key(doc, &NodePath(vec![k("b")]), "c", 1).unwrap();
        assert_eq!(p.to_string(), "4:3");
        assert_eq!(
            parse_error_path("artifacts[1].quantization"),
            NodePath(vec![k("artifacts"), Seg::Index(1), k("quantization")])
        );
        assert_eq!(parse_error_path("."), NodePath::root());
    }

    #[test]
    fn syntax_messages_lose_their_positions() {
        let err = serde_yaml_ng::from_str::<serde_yaml_ng::Value>("a: [1, 2\nb: 3\n").unwrap_err();
        let msg = syntax_message(&err);
        assert!(!msg.contains("line"), "{msg}");
    }
}
