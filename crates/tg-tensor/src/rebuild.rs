//! Evaluates the allowlisted rebuild functions on the symbolic machine's value tree.
//!
//! This is the whole of what a converter needs from `torch.load(weights_only=True)`: the value
//! tree of `data.pkl` is walked once, and only `torch._utils._rebuild_tensor{,_v2,_v3}`,
//! `_rebuild_parameter{,_with_state}`, `torch.nn.parameter.Parameter`,
//! `torch._tensor._rebuild_from_type_v2`, `collections.OrderedDict` and `torch.Size` are given a
//! meaning. Every other call stays an opaque symbol that is reported, never run.

use std::collections::{BTreeMap, HashMap};
use std::path::Path;

use tg_pickle::{Arena, Call, Id, Value};

use crate::dtype::{self, TorchType};
use crate::error::Error;

/// Deepest container nesting evaluated.
const MAX_DEPTH: usize = 256;
/// Most nodes built (a memo-shared structure is expanded, so this bounds the expansion).
const MAX_NODES: usize = 20_000_000;

/// An evaluated value.
#[derive(Debug, Clone)]
pub(crate) enum Node {
    None,
    Bool(bool),
    Int(i64),
    Float(f64),
    Str(String),
    /// A list, tuple or `torch.Size`.
    List(Vec<Node>),
    /// A dict or `OrderedDict`, with the attributes `BUILD` set on it.
    Dict {
        items: Vec<(Key, Node)>,
        attrs: Vec<(String, Node)>,
    },
    Tensor(TensorSpec),
    /// Something that cannot be carried into safetensors, and why.
    Opaque(String),
}

/// A dict key.
#[derive(Debug, Clone)]
pub(crate) enum Key {
    Str(String),
    Int(i64),
    Opaque(String),
}

/// A tensor before its storage is located.
#[derive(Debug, Clone)]
pub(crate) struct TensorSpec {
    pub(crate) storage: String,
    pub(crate) dtype: dtype::DType,
    pub(crate) shape: Vec<u64>,
    pub(crate) stride: Vec<u64>,
    pub(crate) offset: u64,
    /// Something about the tensor that is not carried (its Python attributes).
    pub(crate) note: Option<String>,
}

/// A storage as its persistent id declares it (the first declaration of a key wins, as in
/// torch's `loaded_storages` cache).
#[derive(Debug, Clone, Copy)]
pub(crate) struct StorageDecl {
    pub(crate) dtype: TorchType,
    pub(crate) numel: u64,
}

pub(crate) struct Rebuilt {
    pub(crate) root: Node,
    pub(crate) storages: BTreeMap<String, StorageDecl>,
}

/// Evaluates `root` of a `data.pkl` (`legacy`: the 6-field persistent ids of the pre-zip format).
pub(crate) fn rebuild(
    arena: &Arena,
    input: &[u8],
    root: Id,
    path: &Path,
    legacy: bool,
) -> Result<Rebuilt, Error> {
    rebuild_limited(arena, input, root, path, legacy, MAX_NODES)
}

fn rebuild_limited(
    arena: &Arena,
    input: &[u8],
    root: Id,
    path: &Path,
    legacy: bool,
    max_nodes: usize,
) -> Result<Rebuilt, Error> {
    let mut ev = Eval {
        max_nodes,
        arena,
        input,
        path,
        legacy,
        storages: BTreeMap::new(),
        nodes: 0,
        cache: HashMap::new(),
    };
    let root = ev.eval(root, 0)?;
    Ok(Rebuilt {
        root,
        storages: ev.storages,
    })
}

struct Eval<'a> {
    max_nodes: usize,
    arena: &'a Arena,
    input: &'a [u8],
    path: &'a Path,
    legacy: bool,
    storages: BTreeMap<String, StorageDecl>,
    nodes: usize,
    cache: HashMap<Id, Node>,
}

impl Eval<'_> {
    fn opaque(&self, id: Id, what: &str) -> Node {
        Node::Opaque(format!("{what} {}", self.arena.render(id, self.input)))
    }

    fn invalid(&self, id: Id, why: impl Into<String>) -> Error {
        Error::invalid(self.path, self.arena.render(id, self.input), why)
    }

    fn eval(&mut self, id: Id, depth: usize) -> Result<Node, Error> {
        if depth > MAX_DEPTH {
            return Err(self.invalid(id, format!("nested deeper than {MAX_DEPTH}")));
        }
        self.nodes += 1;
        if self.nodes > self.max_nodes {
            return Err(self.invalid(id, format!("more than {} values", self.max_nodes)));
        }
        if let Some(n) = self.cache.get(&id) {
            return Ok(n.clone());
        }
        let node = match self.arena.get(id) {
            Value::None => Node::None,
            Value::Bool(b) => Node::Bool(*b),
            Value::Int(i) => Node::Int(*i),
            Value::Float(f) => Node::Float(*f),
            Value::Str(s) => Node::Str(s.clone()),
            Value::BigInt(_) => Node::Opaque("an integer wider than 64 bits".into()),
            // Only when the caller set `Options::elide_floats`, which conversion never does.
            Value::ElidedFloat => Node::Opaque("a float whose value was not kept".into()),
            Value::Bytes { .. } => self.opaque(id, "bytes"),
            Value::Tuple(items) | Value::List(items) => {
                let mut out = Vec::with_capacity(items.len());
                for &it in items {
                    out.push(self.eval(it, depth + 1)?);
                }
                Node::List(out)
            }
            Value::Dict(pairs) => {
                let items = self.pairs(pairs, depth)?;
                Node::Dict {
                    items,
                    attrs: Vec::new(),
                }
            }
            Value::Set(_) | Value::FrozenSet(_) => self.opaque(id, "a set"),
            Value::Global { .. } | Value::UnknownGlobal { .. } => self.opaque(id, "the object"),
            Value::Persistent(_) => self.opaque(id, "a bare storage"),
            Value::Buffer => Node::Opaque("an out-of-band buffer".into()),
            Value::Call(c) => {
                let (callee, args, state, items) = (c.callee, c.args, c.state, c.items.clone());
                self.call(id, callee, args, state, &items, depth)?
            }
        };
        // Only cache what is cheap to clone; tensors and small values are.
        if matches!(node, Node::Tensor(_)) {
            self.cache.insert(id, node.clone());
        }
        Ok(node)
    }

    fn pairs(&mut self, pairs: &[(Id, Id)], depth: usize) -> Result<Vec<(Key, Node)>, Error> {
        let mut out = Vec::with_capacity(pairs.len());
        for &(k, v) in pairs {
            let key = match self.arena.get(k) {
                Value::Str(s) => Key::Str(s.clone()),
                Value::Int(i) => Key::Int(*i),
                _ => Key::Opaque(self.arena.render(k, self.input)),
            };
            out.push((key, self.eval(v, depth + 1)?));
        }
        Ok(out)
    }

    fn args(&self, args: Id) -> Vec<Id> {
        self.arena
            .as_tuple(args)
            .map(<[Id]>::to_vec)
            .unwrap_or_default()
    }

    fn call(
        &mut self,
        id: Id,
        callee: Id,
        args: Id,
        state: Option<Id>,
        items: &[(Id, Id)],
        depth: usize,
    ) -> Result<Node, Error> {
        let Some((module, name)) = self.arena.global_name(callee) else {
            return Ok(self.opaque(id, "a call of a computed callable:"));
        };
        let a = self.args(args);
        match (module, name) {
            ("collections", "OrderedDict") | ("builtins", "dict") | ("__builtin__", "dict") => {
                let mut pairs = Vec::new();
                if let Some(&src) = a.first() {
                    match self.arena.get(src) {
                        Value::Dict(p) => pairs.extend(p.iter().copied()),
                        Value::List(l) | Value::Tuple(l) => {
                            // dict() takes any two-element items: old torch.save wrote
                            // OrderedDict([[name, tensor], ...]) with lists, not tuples.
                            for &p in l {
                                match self.arena.get(p) {
                                    Value::Tuple(kv) | Value::List(kv) if kv.len() == 2 => {
                                        pairs.push((kv[0], kv[1]));
                                    }
                                    _ => return Ok(self.opaque(id, "a dict built from")),
                                }
                            }
                        }
                        _ => return Ok(self.opaque(id, "a dict built from")),
                    }
                }
                pairs.extend(items.iter().copied());
                let items = self.pairs(&pairs, depth)?;
                let mut attrs = Vec::new();
                if let Some(st) = state {
                    match self.arena.get(st) {
                        Value::None => {}
                        Value::Dict(p) => {
                            for (k, v) in self.pairs(&p.clone(), depth)? {
                                let k = match k {
                                    Key::Str(s) => s,
                                    Key::Int(i) => i.to_string(),
                                    Key::Opaque(s) => s,
                                };
                                attrs.push((k, v));
                            }
                        }
                        _ => attrs
                            .push(("__state__".into(), self.opaque(st, "an OrderedDict state"))),
                    }
                }
                Ok(Node::Dict { items, attrs })
            }
            ("torch._utils", "_rebuild_tensor") => self.tensor(id, &a, None, depth),
            ("torch._utils", "_rebuild_tensor_v2") => {
                if let Some(&meta) = a.get(6)
                    && !self.is_empty_container(meta)
                {
                    return Ok(self.opaque(meta, "a tensor with backend metadata"));
                }
                self.tensor(id, &a, None, depth)
            }
            ("torch._utils", "_rebuild_tensor_v3") => {
                let Some(&dt) = a.get(6) else {
                    return Err(self.invalid(id, "_rebuild_tensor_v3 needs a dtype"));
                };
                let dtype = match self.arena.global_name(dt) {
                    Some(("torch", n)) => dtype::from_dtype_name(n),
                    _ => None,
                };
                let Some(dtype) = dtype else {
                    return Err(self.invalid(dt, "not a torch dtype"));
                };
                if let Some(&meta) = a.get(7)
                    && !self.is_empty_container(meta)
                {
                    return Ok(self.opaque(meta, "a tensor with backend metadata"));
                }
                self.tensor(id, &a, Some(dtype), depth)
            }
            ("torch._utils", "_rebuild_parameter")
            | ("torch._utils", "_rebuild_parameter_with_state")
            | ("torch.nn.parameter", "Parameter") => match a.first() {
                Some(&data) => self.eval(data, depth + 1),
                None => Ok(self.opaque(id, "a parameter without data:")),
            },
            ("torch._tensor", "_rebuild_from_type_v2") => {
                // (func, new_type, args, state): the tensor is func(*args); a subclass type is
                // not carried, Python attributes in `state` are reported.
                let (Some(&func), Some(&ty), Some(&inner)) = (a.first(), a.get(1), a.get(2)) else {
                    return Err(self.invalid(id, "_rebuild_from_type_v2 needs 4 arguments"));
                };
                match self.arena.global_name(ty) {
                    Some(("torch", "Tensor")) | Some(("torch.nn.parameter", "Parameter")) => {}
                    _ => return Ok(self.opaque(id, "a tensor subclass:")),
                }
                let mut node = self.call(id, func, inner, None, &[], depth + 1)?;
                if let Some(&st) = a.get(3)
                    && !self.is_empty_container(st)
                    && let Node::Tensor(t) = &mut node
                {
                    // The data is carried; the attributes are reported.
                    t.note = Some(format!(
                        "Python attributes of the tensor: {}",
                        self.arena.render(st, self.input)
                    ));
                }
                Ok(node)
            }
            ("torch", "Size") => match a.first() {
                Some(&l) => self.eval(l, depth + 1),
                None => Ok(Node::List(Vec::new())),
            },
            _ => Ok(self.opaque(id, "the result of")),
        }
    }

    fn is_empty_container(&self, id: Id) -> bool {
        match self.arena.get(id) {
            Value::None => true,
            Value::Dict(d) => d.is_empty(),
            Value::Call(call) => {
                let Call {
                    callee,
                    args,
                    items,
                    state,
                    ..
                } = &**call;
                matches!(
                    self.arena.global_name(*callee),
                    Some(("collections", "OrderedDict"))
                ) && self.arena.as_tuple(*args).is_some_and(<[Id]>::is_empty)
                    && items.is_empty()
                    && state.is_none_or(|s| self.is_empty_container(s))
            }
            _ => false,
        }
    }

    fn uint(&self, id: Id, what: &str) -> Result<u64, Error> {
        self.arena
            .as_int(id)
            .and_then(|i| u64::try_from(i).ok())
            .ok_or_else(|| self.invalid(id, format!("{what} is not a non-negative integer")))
    }

    fn uints(&self, id: Id, what: &str) -> Result<Vec<u64>, Error> {
        let items = match self.arena.get(id) {
            Value::Tuple(t) | Value::List(t) => t.clone(),
            Value::Call(call) if self.arena.global_name(call.callee) == Some(("torch", "Size")) => {
                match self.args(call.args).first().map(|&l| self.arena.get(l)) {
                    Some(Value::Tuple(t) | Value::List(t)) => t.clone(),
                    _ => return Err(self.invalid(id, format!("{what} is not a tuple"))),
                }
            }
            _ => return Err(self.invalid(id, format!("{what} is not a tuple"))),
        };
        items.iter().map(|&i| self.uint(i, what)).collect()
    }

    /// `_rebuild_tensor*(storage, storage_offset, size, stride, ...)`.
    fn tensor(
        &mut self,
        id: Id,
        a: &[Id],
        dtype: Option<TorchType>,
        _depth: usize,
    ) -> Result<Node, Error> {
        let [storage, offset, size, stride, ..] = a else {
            return Err(self.invalid(id, "a tensor rebuild needs 4 arguments"));
        };
        let (key, decl) = self.storage(*storage)?;
        let dtype = dtype.unwrap_or(decl.dtype);
        let offset = self.uint(*offset, "storage_offset")?;
        let shape = self.uints(*size, "size")?;
        let stride = self.uints(*stride, "stride")?;
        match dtype {
            TorchType::Known(d) => Ok(Node::Tensor(TensorSpec {
                storage: key,
                dtype: d,
                shape,
                stride,
                offset,
                note: None,
            })),
            TorchType::Other(name, _) => Ok(Node::Opaque(format!(
                "a {name} tensor of shape {shape:?}: safetensors has no {name} dtype"
            ))),
        }
    }

    /// A `Persistent(('storage', torch.<T>Storage, key, location, numel[, view]))`.
    fn storage(&mut self, id: Id) -> Result<(String, StorageDecl), Error> {
        let Value::Persistent(pid) = self.arena.get(id) else {
            return Err(self.invalid(id, "the storage is not a persistent id"));
        };
        let fields = self
            .arena
            .as_tuple(*pid)
            .ok_or_else(|| self.invalid(*pid, "the persistent id is not a tuple"))?;
        let want = if self.legacy { 6 } else { 5 };
        if fields.len() != want || self.arena.as_str(fields[0]) != Some("storage") {
            return Err(self.invalid(
                *pid,
                format!(
                    "expected ('storage', type, key, location, numel{})",
                    if self.legacy { ", view" } else { "" }
                ),
            ));
        }
        if self.legacy
            && self.arena.global_name(fields[1]) == Some(("torch.storage", "UntypedStorage"))
        {
            // `_legacy_load` asks the storage type for `.dtype`, which `UntypedStorage` lacks:
            // torch cannot load this file, so neither do we.
            return Err(self.invalid(
                fields[1],
                "the legacy loader cannot load an untyped storage",
            ));
        }
        let dtype = match self.arena.global_name(fields[1]) {
            Some(("torch", n)) | Some(("torch.storage", n)) => dtype::from_storage_class(n),
            _ => None,
        }
        .ok_or_else(|| self.invalid(fields[1], "not a torch storage type"))?;
        let key = match self.arena.get(fields[2]) {
            Value::Str(s) => s.clone(),
            Value::Int(i) => i.to_string(),
            _ => return Err(self.invalid(fields[2], "the storage key is not a string")),
        };
        if key.is_empty() || key.contains(['/', '\\', '\0']) || key.contains("..") {
            return Err(self.invalid(fields[2], "the storage key is not a plain name"));
        }
        let numel = self.uint(fields[4], "the storage size")?;
        if self.legacy && !matches!(self.arena.get(fields[5]), Value::None) {
            return Err(self.invalid(*pid, "storage views (torch < 0.4) are not supported"));
        }
        // torch caches a loaded storage by key only when it is not empty, so a later
        // reference to an empty storage gets the type it declares itself.
        let decl = match self.storages.get(&key) {
            Some(d) if d.numel > 0 => *d,
            _ => {
                let d = StorageDecl { dtype, numel };
                self.storages.insert(key.clone(), d);
                d
            }
        };
        Ok((key, decl))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Protocol-2 pickle builder for the shapes `torch.save` writes.
    struct P(Vec<u8>);

    impl P {
        fn new() -> P {
            P(vec![0x80, 2])
        }
        fn op(mut self, b: &[u8]) -> P {
            self.0.extend_from_slice(b);
            self
        }
        fn s(self, s: &str) -> P {
            let mut b = vec![b'X'];
            b.extend_from_slice(&(s.len() as u32).to_le_bytes());
            b.extend_from_slice(s.as_bytes());
            self.op(&b)
        }
        fn g(self, module: &str, name: &str) -> P {
            self.op(format!("c{module}\n{name}\n").as_bytes())
        }
        fn k(self, i: u8) -> P {
            self.op(&[b'K', i])
        }
        /// `_rebuild_tensor_v2(('storage', FloatStorage, key, 'cpu', numel), 0, (n,), (1,), False, OrderedDict())`.
        fn tensor(self, key: &str, numel: u8, n: u8) -> P {
            self.g("torch._utils", "_rebuild_tensor_v2")
                .op(b"((")
                .s("storage")
                .g("torch", "FloatStorage")
                .s(key)
                .s("cpu")
                .k(numel)
                .op(b"tQ")
                .k(0)
                .k(n)
                .op(b"\x85")
                .k(1)
                .op(b"\x85\x89")
                .g("collections", "OrderedDict")
                .op(b")Rt")
                .op(b"R")
        }
    }

    fn run(p: P) -> Result<Rebuilt, Error> {
        run_limited(p, MAX_NODES)
    }

    fn run_limited(p: P, max_nodes: usize) -> Result<Rebuilt, Error> {
        let opts = tg_pickle::Options {
            complete: true,
            ..Default::default()
        };
        let a = tg_pickle::analyze(&p.0, 0, &opts, &mut tg_pickle::NoHook);
        let tg_pickle::End::Stop { value, .. } = a.end else {
            panic!("pickle did not stop: {:?}", a.end);
        };
        rebuild_limited(&a.arena, &p.0, value, Path::new("t.pt"), false, max_nodes)
    }

    #[test]
    fn state_dicts_rebuild_and_other_calls_stay_symbols() {
        let p = P::new()
            .g("collections", "OrderedDict")
            .op(b")R(")
            .s("w")
            .tensor("0", 4, 4)
            .s("evil")
            .g("posix", "system")
            .s("id")
            .op(b"\x85R")
            .op(b"u.");
        let r = run(p).unwrap();
        let Node::Dict { items, .. } = r.root else {
            panic!("not a dict");
        };
        assert!(matches!(&items[0].1, Node::Tensor(t) if t.shape == [4] && t.storage == "0"));
        let Node::Opaque(why) = &items[1].1 else {
            panic!("the call was evaluated");
        };
        assert_eq!(why, "the result of posix.system('id')");
        assert_eq!(r.storages["0"].numel, 4);
    }

    #[test]
    fn storage_keys_that_are_paths_are_refused() {
        let p = P::new().tensor("../../etc/passwd", 4, 4).op(b".");
        let err = run(p).err().expect("refused").to_string();
        assert!(err.contains("the storage key is not a plain name"), "{err}");
    }

    #[test]
    fn memo_expansion_is_bounded() {
        // l0 = [t]; l(i+1) = [l(i), l(i)]: 2^40 leaves after 40 levels of a few bytes each.
        let mut p = P::new()
            .op(b"]")
            .op(b"q\x00")
            .op(b"(")
            .tensor("0", 1, 1)
            .op(b"e");
        for i in 0u8..40 {
            p = p
                .op(&[b'h', i])
                .op(&[b'h', i])
                .op(b"\x86")
                .op(&[b'q', i + 1]);
        }
        let err = run_limited(p.op(b"."), 100_000)
            .err()
            .expect("bounded")
            .to_string();
        assert!(err.contains("more than 100000 values"), "{err}");
    }
}
