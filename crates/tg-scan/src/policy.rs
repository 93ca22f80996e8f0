//! Allowlist policies: which globals a pickle may import, and how it may use them.
//!
//! The core is `weights-only`, a static mirror of `torch.load(weights_only=True)`
//! (`torch/_weights_only_unpickler.py`, `_get_allowed_globals`): its opcode subset and its exact
//! global names. The default policy adds reviewed entries for what people really pickle. Each
//! entry has a [`Kind`] because *constructing an allowlisted class is not the same as calling an
//! arbitrary function*: a dtype or storage type may only be referenced, a class may be
//! instantiated (which runs only that class's own reviewed `__new__`/`__init__`/`__setstate__`),
//! and only a few reviewed functions may be called with data.
//!
//! A global outside the active policy is never clean: `suspicious`, or `malicious` when it is
//! known to be dangerous ([`crate::danger`]).

use std::borrow::Cow;
use std::collections::HashMap;
use std::fmt;
use std::hash::{BuildHasherDefault, Hasher};

use crate::strset::{FNV_SEED, fnv, fnv_byte};

/// FNV-1a: the keys are the policy's own entries (built-in or the user's), so a fast hash
/// that an input could collide does not matter: lookups of a file's names insert nothing.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Fnv(u64);

impl Default for Fnv {
    fn default() -> Self {
        Fnv(FNV_SEED)
    }
}

impl Hasher for Fnv {
    fn finish(&self) -> u64 {
        self.0
    }

    fn write(&mut self, bytes: &[u8]) {
        self.0 = fnv(self.0, bytes);
    }

    fn write_u8(&mut self, b: u8) {
        self.0 = fnv_byte(self.0, b);
    }
}

/// How an allowlisted global may be used.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Kind {
    /// May only be referenced (dtypes, storage types, quantization schemes, enum members).
    Constant,
    /// A class that may be instantiated and built (`REDUCE`, `NEWOBJ`, `BUILD`).
    Class,
    /// A reviewed data-only function that may be called with any constant arguments.
    Function,
    /// A generic constructor (`copyreg._reconstructor`, `copyreg.__newobj__`,
    /// `numpy…_reconstruct`) whose first argument is the class to build: allowed only when that
    /// class is itself allowlisted as a [`Kind::Class`].
    Constructor,
}

impl fmt::Display for Kind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Kind::Constant => "constant",
            Kind::Class => "class",
            Kind::Function => "function",
            Kind::Constructor => "constructor",
        })
    }
}

/// Which built-in policy to start from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Base {
    /// Exactly what `torch.load(weights_only=True)` accepts.
    WeightsOnly,
    /// weights-only plus reviewed data and trainer-state entries.
    #[default]
    Default,
}

/// An active policy.
#[derive(Debug, Clone)]
pub struct Policy {
    base: Base,
    exact: HashMap<Cow<'static, str>, (Kind, &'static str), BuildHasherDefault<Fnv>>,
    /// Module prefixes whose *classes* (CamelCase names, no dots, no dunders) may be built.
    class_prefixes: Vec<(&'static str, &'static str)>,
}

/// Why a user entry could not be added.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum PolicyError {
    /// The entry is not of the form `module.name` or `module.name:kind`.
    #[error("policy entry '{0}' is not of the form module.name[:class|function|constant]")]
    BadEntry(String),
    /// A policy file line could not be parsed.
    #[error("policy file line {line}: {message}")]
    BadLine {
        /// 1-based line number.
        line: usize,
        /// What is wrong.
        message: String,
    },
}

impl Policy {
    /// The policy named `base`.
    pub fn new(base: Base) -> Self {
        let mut p = Policy {
            base,
            exact: HashMap::with_capacity_and_hasher(256, BuildHasherDefault::default()),
            class_prefixes: Vec::new(),
        };
        p.add_weights_only();
        if base == Base::Default {
            p.add_default();
        }
        p
    }

    /// The policy's name as used on the command line.
    pub fn name(&self) -> &'static str {
        match self.base {
            Base::WeightsOnly => "weights-only",
            Base::Default => "default",
        }
    }

    /// Whether this policy also restricts opcodes to torch's weights-only subset.
    pub fn restricts_opcodes(&self) -> bool {
        self.base == Base::WeightsOnly
    }

    /// Add a user entry `module.name` (or `module.name:kind`; the default kind is `class`).
    pub fn allow(&mut self, entry: &str) -> Result<(), PolicyError> {
        let (name, kind) = match entry.rsplit_once(':') {
            Some((n, "class")) => (n, Kind::Class),
            Some((n, "function")) => (n, Kind::Function),
            Some((n, "constant")) => (n, Kind::Constant),
            Some(_) => return Err(PolicyError::BadEntry(entry.to_owned())),
            None => (entry, Kind::Class),
        };
        if !name.contains('.')
            || name.starts_with('.')
            || name.ends_with('.')
            || name.contains(char::is_whitespace)
        {
            return Err(PolicyError::BadEntry(entry.to_owned()));
        }
        self.exact
            .insert(Cow::Owned(name.to_owned()), (kind, "added by the user"));
        Ok(())
    }

    /// Add every entry of a policy file: one `module.name[:kind]` per line, `#` comments.
    pub fn load_entries(&mut self, text: &str) -> Result<(), PolicyError> {
        for (i, raw) in text.lines().enumerate() {
            let line = raw.split('#').next().unwrap_or("").trim();
            if line.is_empty() {
                continue;
            }
            self.allow(line).map_err(|e| PolicyError::BadLine {
                line: i + 1,
                message: e.to_string(),
            })?;
        }
        Ok(())
    }

    /// How `module.name` may be used, with the reason it is allowed; `None` if it is not.
    pub fn lookup(&self, full: &str) -> Option<(Kind, &'static str)> {
        if let Some(e) = self.exact.get(full) {
            return Some(*e);
        }
        for (prefix, why) in &self.class_prefixes {
            if let Some(rest) = full.strip_prefix(prefix) {
                let last = rest.rsplit('.').next().unwrap_or(rest);
                // A class defined somewhere in the package: CamelCase, no attribute walk from
                // a function (the name is the last component), no dunders anywhere.
                if last.starts_with(|c: char| c.is_ascii_uppercase())
                    && !rest.contains("__")
                    && rest.split('.').all(|part| !part.is_empty())
                {
                    return Some((Kind::Class, why));
                }
            }
        }
        None
    }

    fn put(&mut self, names: &[&'static str], kind: Kind, why: &'static str) {
        for n in names {
            self.exact.insert(Cow::Borrowed(n), (kind, why));
        }
    }

    fn add_weights_only(&mut self) {
        const WO: &str = "accepted by torch.load(weights_only=True)";
        self.put(
            &[
                "collections.OrderedDict",
                "collections.Counter",
                "torch.nn.parameter.Parameter",
                "torch.Tensor",
                "torch.Size",
                "torch.device",
                "builtins.bytearray",
                "builtins.set",
                "builtins.complex",
            ],
            Kind::Class,
            WO,
        );
        self.put(
            &[
                "_codecs.encode",
                "torch.serialization._get_layout",
                "torch._utils._rebuild_parameter",
                "torch._utils._rebuild_parameter_with_state",
                "torch._utils._rebuild_qtensor",
                "torch._utils._rebuild_tensor",
                "torch._utils._rebuild_tensor_v2",
                "torch._utils._rebuild_tensor_v3",
                "torch._utils._rebuild_sparse_tensor",
                "torch._utils._rebuild_meta_tensor_no_storage",
                "torch._utils._rebuild_wrapper_subclass",
                "torch._utils._rebuild_device_tensor_from_numpy",
                "torch._utils._rebuild_device_tensor_from_cpu_tensor",
                "torch._tensor._rebuild_from_type_v2",
            ],
            Kind::Function,
            WO,
        );
        let mut constants: Vec<Cow<'static, str>> = Vec::with_capacity(128);
        for d in [
            "float32",
            "float64",
            "float16",
            "bfloat16",
            "complex32",
            "complex64",
            "complex128",
            "uint8",
            "int8",
            "int16",
            "int32",
            "int64",
            "bool",
            "quint8",
            "qint8",
            "qint32",
            "quint4x2",
            "quint2x4",
            "float8_e5m2",
            "float8_e4m3fn",
            "float8_e5m2fnuz",
            "float8_e4m3fnuz",
            "float8_e8m0fnu",
            "float4_e2m1fn_x2",
            "uint16",
            "uint32",
            "uint64",
            "bits8",
            "bits16",
            "bits1x8",
            "bits2x4",
            "bits4x2",
            "uint1",
            "uint2",
            "uint3",
            "uint4",
            "uint5",
            "uint6",
            "uint7",
            "int1",
            "int2",
            "int3",
            "int4",
            "int5",
            "int6",
            "int7",
        ] {
            constants.push(Cow::Owned(format!("torch.{d}")));
        }
        for t in [
            "Double", "Float", "Half", "BFloat16", "Long", "Int", "Short", "Char", "Byte", "Bool",
        ] {
            // torch._tensor_classes: the legacy typed tensor classes, CPU, CUDA and sparse.
            for m in ["torch", "torch.cuda", "torch.sparse"] {
                constants.push(Cow::Owned(format!("{m}.{t}Tensor")));
            }
        }
        for s in [
            "Double",
            "Float",
            "Half",
            "BFloat16",
            "Long",
            "Int",
            "Short",
            "Char",
            "Byte",
            "Bool",
            "ComplexDouble",
            "ComplexFloat",
            "QUInt8",
            "QInt8",
            "QInt32",
            "QUInt4x2",
            "QUInt2x4",
        ] {
            // torch._storage_classes: replaced by an inert StorageType marker in weights-only.
            constants.push(Cow::Owned(format!("torch.{s}Storage")));
            constants.push(Cow::Owned(format!("torch.cuda.{s}Storage")));
        }
        constants.extend(
            [
                "torch.storage.TypedStorage",
                "torch.storage.UntypedStorage",
                "torch.UntypedStorage",
                "torch.per_tensor_affine",
                "torch.per_tensor_symmetric",
                "torch.per_channel_affine",
                "torch.per_channel_symmetric",
                "torch.per_channel_affine_float_qparams",
            ]
            .map(Cow::Borrowed),
        );
        for c in constants {
            self.exact.insert(c, (Kind::Constant, WO));
        }
    }

    fn add_default(&mut self) {
        self.put(
            &[
                "builtins.frozenset",
                "builtins.bytes",
                "builtins.str",
                "builtins.int",
                "builtins.float",
                "builtins.bool",
                "builtins.tuple",
                "builtins.list",
                "builtins.dict",
                "builtins.slice",
                "builtins.range",
            ],
            Kind::Class,
            "builtin value type: constructing it from constants runs no user code",
        );
        self.put(
            &[
                "builtins.object",
                "builtins.NoneType",
                "builtins.Ellipsis",
                "builtins.NotImplemented",
            ],
            Kind::Constant,
            "builtin singleton or base class, referenced by copyreg reconstruction",
        );
        self.put(
            &["collections.defaultdict", "collections.deque"],
            Kind::Class,
            "stdlib container; a defaultdict factory is itself a global checked by the policy",
        );
        self.put(
            &[
                "copyreg._reconstructor",
                "copyreg.__newobj__",
                "copyreg.__newobj_ex__",
            ],
            Kind::Constructor,
            "pickle's generic object constructor: allowed only for an allowlisted class",
        );
        self.put(
            &[
                "datetime.datetime",
                "datetime.date",
                "datetime.time",
                "datetime.timedelta",
                "datetime.timezone",
                "decimal.Decimal",
                "fractions.Fraction",
                "uuid.UUID",
                "pathlib.Path",
                "pathlib.PosixPath",
                "pathlib.WindowsPath",
                "pathlib.PurePath",
                "pathlib.PurePosixPath",
                "pathlib.PureWindowsPath",
                "argparse.Namespace",
                "types.SimpleNamespace",
            ],
            Kind::Class,
            "stdlib value class; construction does no I/O (trainer state stores timestamps, paths and argparse namespaces)",
        );
        self.put(
            &[
                "numpy.core.multiarray._reconstruct",
                "numpy._core.multiarray._reconstruct",
                "numpy.ma.core._mareconstruct",
            ],
            Kind::Constructor,
            "numpy array reconstruction: builds an empty array of an allowlisted ndarray class",
        );
        self.put(
            &[
                "numpy.ndarray",
                "numpy.dtype",
                "numpy.ma.core.MaskedArray",
                "numpy.random.mtrand.RandomState",
                "numpy.random._generator.Generator",
                "numpy.random._mt19937.MT19937",
                "numpy.random._pcg64.PCG64",
                "numpy.random._pcg64.PCG64DXSM",
                "numpy.random._philox.Philox",
                "numpy.random._sfc64.SFC64",
                "numpy.random.bit_generator.SeedSequence",
            ],
            Kind::Class,
            "numpy array, dtype and RNG state classes: their __setstate__ only copies data (RNG state is in rng_state.pth)",
        );
        self.put(
            &[
                "numpy.core.multiarray.scalar",
                "numpy._core.multiarray.scalar",
                "numpy.core.numeric._frombuffer",
                "numpy._core.numeric._frombuffer",
                "numpy.random._pickle.__randomstate_ctor",
                "numpy.random._pickle.__generator_ctor",
                "numpy.random._pickle.__bit_generator_ctor",
            ],
            Kind::Function,
            "numpy data-only reconstructor: builds a scalar, array or RNG from bytes and a name looked up in a fixed table",
        );
        self.class_prefixes.push((
            "numpy.dtypes.",
            "numpy 2 dtype classes (Float32DType, …): pure data",
        ));
        self.put(
            &[
                "joblib.numpy_pickle.NumpyArrayWrapper",
                "joblib.numpy_pickle.NDArrayWrapper",
                "joblib.numpy_pickle.ZNDArrayWrapper",
            ],
            Kind::Class,
            "joblib's array placeholder: the loader reads raw array bytes after it (parsed, never executed)",
        );
        self.put(
            &[
                "transformers.training_args.TrainingArguments",
                "transformers.training_args_seq2seq.Seq2SeqTrainingArguments",
                "transformers.training_args.OptimizerNames",
                "transformers.training_args.ParallelMode",
                "transformers.trainer_utils.IntervalStrategy",
                "transformers.trainer_utils.SchedulerType",
                "transformers.trainer_utils.HubStrategy",
                "transformers.trainer_utils.SaveStrategy",
                "transformers.trainer_utils.EvaluationStrategy",
                "transformers.trainer_utils.FSDPOption",
                "transformers.debug_utils.DebugOption",
                "transformers.trainer_pt_utils.AcceleratorConfig",
                "transformers.utils.generic.ExplicitEnum",
                "transformers.utils.generic.PaddingStrategy",
                "transformers.utils.generic.TensorType",
            ],
            Kind::Class,
            "transformers Trainer state (training_args.bin): dataclasses and enums rebuilt with NEWOBJ/BUILD or enum lookup, no __init__ side effects",
        );
        self.class_prefixes.push((
            "accelerate.utils.dataclasses.",
            "accelerate's config dataclasses and enums, stored in trainer state",
        ));
        self.class_prefixes.push((
            "sklearn.",
            "scikit-learn estimator classes: rebuilt with __reduce_ex__ + BUILD (BaseEstimator.__setstate__ only updates __dict__); functions are not allowed",
        ));
        self.class_prefixes.push((
            "scipy.sparse.",
            "scipy sparse matrix classes inside scikit-learn estimators: pure data",
        ));
        self.class_prefixes.push((
            "torch.nn.modules.",
            "torch's own nn.Module classes in whole-model pickles: Module.__setstate__ only restores attributes",
        ));
        self.put(
            &["torch._C._nn.gelu"],
            Kind::Constant,
            "referenced as an activation attribute in whole-model pickles",
        );
    }
}

impl Default for Policy {
    fn default() -> Self {
        Policy::new(Base::Default)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn weights_only_has_torch_rebuilds_but_not_numpy() {
        let p = Policy::new(Base::WeightsOnly);
        assert_eq!(
            p.lookup("torch._utils._rebuild_tensor_v2").map(|e| e.0),
            Some(Kind::Function)
        );
        assert_eq!(p.lookup("torch.float32").map(|e| e.0), Some(Kind::Constant));
        assert!(p.lookup("numpy.core.multiarray._reconstruct").is_none());
        assert!(
            p.lookup("torch.float").is_none(),
            "weights-only keys dtypes by str(dtype)"
        );
    }

    #[test]
    fn class_prefixes_admit_classes_only() {
        let p = Policy::default();
        assert!(
            p.lookup("sklearn.linear_model._logistic.LogisticRegression")
                .is_some()
        );
        assert!(
            p.lookup("sklearn.utils._testing.assert_run_python_script")
                .is_none()
        );
        assert!(p.lookup("sklearn.__builtins__").is_none());
        assert!(p.lookup("sklearn.Foo.__class__").is_none());
    }

    #[test]
    fn user_entries_and_files() {
        let mut p = Policy::new(Base::WeightsOnly);
        p.allow("mypkg.Model").unwrap();
        p.load_entries("# comment\nmypkg.build:function  # why\n\n")
            .unwrap();
        assert_eq!(p.lookup("mypkg.Model").map(|e| e.0), Some(Kind::Class));
        assert_eq!(p.lookup("mypkg.build").map(|e| e.0), Some(Kind::Function));
        assert!(p.allow("nodot").is_err());
        assert!(p.load_entries("a.b:weird").is_err());
    }
}
