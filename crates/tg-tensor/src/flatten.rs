//! Flattens an evaluated value tree into named tensors (`a.b.c`, list items by index, the way
//! the hub's `state_dict` names read) and JSON values for everything else.

use std::fmt::Write as _;

use crate::rebuild::{Key, Node, TensorSpec};

/// Something in the checkpoint that cannot be carried into safetensors.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Dropped {
    /// The flattened name of the value.
    pub name: String,
    /// What it is and why it cannot be carried.
    pub why: String,
}

#[derive(Debug, Default)]
pub(crate) struct Flat {
    pub(crate) tensors: Vec<(String, TensorSpec)>,
    /// Non-tensor values as JSON text (Python's `json` reads it back; NaN and infinities are
    /// written as Python writes them).
    pub(crate) values: Vec<(String, String)>,
    pub(crate) dropped: Vec<Dropped>,
}

/// The name a root that is a single tensor gets.
pub const ROOT_TENSOR_NAME: &str = "tensor";

pub(crate) fn flatten(root: Node) -> Flat {
    let mut flat = Flat::default();
    match root {
        Node::Tensor(t) => tensor(&mut flat, ROOT_TENSOR_NAME.into(), t),
        // The root's entries are named one by one even without tensors (a trainer state of
        // scalars becomes one metadata entry per key, not one blob).
        Node::Dict { items, attrs } => {
            dict_children(&mut flat, "", items, attrs);
        }
        other => walk(&mut flat, String::new(), other),
    }
    flat
}

fn join(path: &str, key: &str) -> String {
    if path.is_empty() {
        key.to_string()
    } else {
        format!("{path}.{key}")
    }
}

fn has_tensor(n: &Node) -> bool {
    match n {
        Node::Tensor(_) => true,
        Node::List(l) => l.iter().any(has_tensor),
        Node::Dict { items, attrs } => {
            items.iter().any(|(_, v)| has_tensor(v)) || attrs.iter().any(|(_, v)| has_tensor(v))
        }
        _ => false,
    }
}

fn dict_children(flat: &mut Flat, path: &str, items: Vec<(Key, Node)>, attrs: Vec<(String, Node)>) {
    for (k, v) in items {
        match k {
            Key::Str(s) => walk(flat, join(path, &s), v),
            Key::Int(i) => walk(flat, join(path, &i.to_string()), v),
            Key::Opaque(r) => flat.dropped.push(Dropped {
                name: join(path, &r),
                why: format!("a dict key that is neither a string nor an integer: {r}"),
            }),
        }
    }
    for (k, v) in attrs {
        walk(flat, join(path, &k), v);
    }
}

fn walk(flat: &mut Flat, path: String, node: Node) {
    match node {
        Node::Tensor(t) => tensor(flat, path, t),
        Node::Opaque(why) => flat.dropped.push(Dropped { name: path, why }),
        Node::Dict { items, attrs } if has_tensor_dict(&items, &attrs) => {
            dict_children(flat, &path, items, attrs);
        }
        Node::List(items) if items.iter().any(has_tensor) => {
            for (i, v) in items.into_iter().enumerate() {
                walk(flat, join(&path, &i.to_string()), v);
            }
        }
        other => {
            let mut s = String::new();
            json(&other, &path, &mut s, &mut flat.dropped);
            flat.values.push((path, s));
        }
    }
}

fn tensor(flat: &mut Flat, path: String, mut t: TensorSpec) {
    if let Some(why) = t.note.take() {
        flat.dropped.push(Dropped {
            name: path.clone(),
            why,
        });
    }
    flat.tensors.push((path, t));
}

fn has_tensor_dict(items: &[(Key, Node)], attrs: &[(String, Node)]) -> bool {
    items.iter().any(|(_, v)| has_tensor(v)) || attrs.iter().any(|(_, v)| has_tensor(v))
}

/// Writes `n` as JSON; opaque parts become `null` and are reported in `dropped`.
fn json(n: &Node, path: &str, out: &mut String, dropped: &mut Vec<Dropped>) {
    match n {
        Node::None => out.push_str("null"),
        Node::Bool(b) => out.push_str(if *b { "true" } else { "false" }),
        Node::Int(i) => {
            let _ = write!(out, "{i}");
        }
        Node::Float(f) => {
            if f.is_nan() {
                out.push_str("NaN");
            } else if f.is_infinite() {
                out.push_str(if *f > 0.0 { "Infinity" } else { "-Infinity" });
            } else {
                let _ = write!(out, "{f:?}");
            }
        }
        Node::Str(s) => out.push_str(&string(s)),
        Node::List(l) => {
            out.push('[');
            for (i, v) in l.iter().enumerate() {
                if i > 0 {
                    out.push_str(", ");
                }
                json(v, &join(path, &i.to_string()), out, dropped);
            }
            out.push(']');
        }
        Node::Dict { items, attrs } => {
            out.push('{');
            let mut first = true;
            for (k, v) in items {
                let key = match k {
                    Key::Str(s) => s.clone(),
                    Key::Int(i) => i.to_string(),
                    Key::Opaque(r) => {
                        dropped.push(Dropped {
                            name: join(path, r),
                            why: format!("a dict key that is neither a string nor an integer: {r}"),
                        });
                        continue;
                    }
                };
                if !first {
                    out.push_str(", ");
                }
                first = false;
                out.push_str(&string(&key));
                out.push_str(": ");
                json(v, &join(path, &key), out, dropped);
            }
            out.push('}');
            for (k, v) in attrs {
                // Attributes of a dict have no JSON place: name them separately.
                let mut s = String::new();
                json(v, &join(path, k), &mut s, dropped);
                dropped.push(Dropped {
                    name: join(path, k),
                    why: format!("an attribute of a dict with no tensors ({s})"),
                });
            }
        }
        Node::Tensor(_) => out.push_str("null"),
        Node::Opaque(why) => {
            out.push_str("null");
            dropped.push(Dropped {
                name: path.to_string(),
                why: why.clone(),
            });
        }
    }
}

fn string(s: &str) -> String {
    serde_json::to_string(s).unwrap_or_else(|_| "\"\"".into())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn values_become_python_json() {
        let root = Node::Dict {
            items: vec![
                (Key::Str("epoch".into()), Node::Int(3)),
                (
                    Key::Str("args".into()),
                    Node::Dict {
                        items: vec![
                            (Key::Str("lr".into()), Node::Float(0.5)),
                            (Key::Int(7), Node::Float(f64::NAN)),
                            (Key::Str("name".into()), Node::Str("a\"b".into())),
                            (Key::Str("fn".into()), Node::Opaque("os.system".into())),
                        ],
                        attrs: vec![],
                    },
                ),
            ],
            attrs: vec![],
        };
        let f = flatten(root);
        assert_eq!(
            f.values,
            vec![
                ("epoch".to_string(), "3".to_string()),
                (
                    "args".to_string(),
                    r#"{"lr": 0.5, "7": NaN, "name": "a\"b", "fn": null}"#.to_string()
                )
            ]
        );
        assert_eq!(
            f.dropped,
            vec![Dropped {
                name: "args.fn".into(),
                why: "os.system".into()
            }]
        );
    }
}
