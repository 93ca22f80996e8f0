//! Known-dangerous globals. This list never decides whether a file is clean — the policy does —
//! it only separates `malicious` (this list) from `suspicious` (everything else outside the
//! policy). It is built from the gadgets of published scanner bypasses
//! (`reference/scanners.md` §2c: GHSA advisories against picklescan, fickling and modelscan).

use crate::strset::{FNV_SEED, StrSet, fnv, fnv_byte};

/// Modules where every attribute is treated as dangerous (matched as the module itself or any
/// submodule: `asyncio` covers `asyncio.unix_events`).
const MODULES: &[&str] = &[
    "os",
    "posix",
    "nt",
    "subprocess",
    "sys",
    "pty",
    "socket",
    "_socket",
    "shutil",
    "ctypes",
    "_ctypes",
    "marshal",
    "importlib",
    "_imp",
    "imp",
    "_frozen_importlib",
    "_frozen_importlib_external",
    "runpy",
    "pip",
    "pkgutil",
    "code",
    "codeop",
    "cProfile",
    "profile",
    "_lsprof",
    "pdb",
    "bdb",
    "trace",
    "timeit",
    "doctest",
    "webbrowser",
    "urllib",
    "http",
    "httplib",
    "urllib2",
    "requests",
    "aiohttp",
    "httpx",
    "smtplib",
    "ftplib",
    "telnetlib",
    "poplib",
    "imaplib",
    "nntplib",
    "ssl",
    "asyncio",
    "multiprocessing",
    "_posixsubprocess",
    "pickle",
    "_pickle",
    "cPickle",
    "dill",
    "cloudpickle",
    "joblib.numpy_pickle_utils",
    "shelve",
    "pydoc",
    "idlelib",
    "lib2to3",
    "venv",
    "ensurepip",
    "distutils",
    "setuptools",
    "_osx_support",
    "_aix_support",
    "_pyrepl",
    "test",
    "tempfile",
    "glob",
    "signal",
    "_signal",
    "threading",
    "_thread",
    "concurrent",
    "_interpreters",
    "_xxsubinterpreters",
    "_interpqueues",
    "gc",
    "platform",
    "pipes",
    "linecache",
    "inspect",
    "zipimport",
    "xmlrpc",
    "socketserver",
    "wsgiref",
    "mailbox",
    "sqlite3",
    "dbm",
    "_io",
    "io",
    "fileinput",
    "tarfile",
    "zipfile",
    "site",
    "sysconfig",
    "builtins.__import__",
    "operator",
    "_operator",
    "functools",
    "numpy.testing",
    "numpy.f2py",
    "numpy.distutils",
    "numpy.ctypeslib",
    "numpy.lib.npyio",
    "numpy.load",
    "torch._inductor",
    "torch.utils.collect_env",
    "torch._dynamo",
    "torch.fx.experimental",
    "torch.utils.bottleneck",
    "torch.jit",
    "torch.hub",
    "torch.serialization",
    "torch.package",
    "torch.utils.cpp_extension",
    "torch.utils._config_module",
    "torch.utils.data.datapipes",
    "torch.load",
    "torch.storage._load_from_bytes",
    "torch.distributed",
    "torch._C._jit",
    "torch.ops",
    "torch.classes",
    "transformers.dynamic_module_utils",
    "transformers.models.auto",
    "huggingface_hub",
    "mlflow",
    "keras",
    "tensorflow",
    "yaml",
    "jinja2",
    "pandas.io",
    "pandas.read_csv",
    "pandas.read_pickle",
    "uuid._get_command_stdout",
    "logging.FileHandler",
    "logging.config",
    "logging.handlers",
    "types.CodeType",
    "types.FunctionType",
    "types.MethodType",
    "types.ModuleType",
    "code.InteractiveInterpreter",
    "nturl2path",
    "msvcrt",
    "winreg",
    "_winapi",
    "commands",
    "popen2",
    "spawn",
    "pexpect",
    "fabric",
    "paramiko",
    "ansible",
];

/// Exact `module.name` callables that run code, open files or reach the network.
const NAMES: &[&str] = &[
    "builtins.eval",
    "builtins.exec",
    "builtins.compile",
    "builtins.open",
    "builtins.getattr",
    "builtins.setattr",
    "builtins.delattr",
    "builtins.globals",
    "builtins.locals",
    "builtins.vars",
    "builtins.input",
    "builtins.breakpoint",
    "builtins.help",
    "builtins.exit",
    "builtins.quit",
    "builtins.memoryview",
    "builtins.type",
    "builtins.super",
    "builtins.classmethod",
    "builtins.staticmethod",
    "builtins.property",
    "builtins.apply",
    "builtins.execfile",
    "builtins.file",
    "builtins.reload",
    "builtins.__build_class__",
    "builtins.__loader__",
    "builtins.__spec__",
    "builtins.map",
    "builtins.filter",
    "builtins.iter",
    "builtins.next",
    "builtins.callable",
    "builtins.dir",
    "builtins.hasattr",
    "builtins.id",
    "builtins.hash",
    "copyreg.add_extension",
    "copyreg.dispatch_table",
    "copyreg._extension_registry",
];

/// Attribute names that reach the interpreter's internals from any object.
const DUNDERS: &[&str] = &[
    "__import__",
    "__builtins__",
    "__globals__",
    "__subclasses__",
    "__class__",
    "__base__",
    "__bases__",
    "__mro__",
    "__dict__",
    "__getattribute__",
    "__getattr__",
    "__code__",
    "__func__",
    "__self__",
    "__closure__",
    "__reduce__",
    "__reduce_ex__",
    "__init_subclass__",
    "__loader__",
    "__spec__",
    "__setattr__",
    "__delattr__",
    "__call__",
    "__new__",
    "__init__",
    "__module__",
    "__qualname__",
    "__wrapped__",
    "__get__",
    "__set__",
];

static MODULE_SET: StrSet<512> = StrSet::new(MODULES);
static NAME_SET: StrSet<128> = StrSet::new(NAMES);
static DUNDER_SET: StrSet<64> = StrSet::new(DUNDERS);

/// Why `module.name` is known to be dangerous, or `None`.
pub(crate) fn classify(module: &str, name: &str) -> Option<&'static str> {
    // Every dunder starts with `__`.
    if name
        .split('.')
        .chain(module.split('.'))
        .any(|part| part.starts_with("__") && DUNDER_SET.contains(part))
    {
        return Some("reaches interpreter internals through a dunder attribute");
    }
    // `find_class` walks dotted names (protocol 4+), so `pathlib` + `os.system` is `os.system`:
    // judge the full path, and every suffix that starts inside the attribute path as if it
    // were the module path. The full path is built once, on the stack when it fits.
    let total = module.len() + 1 + name.len();
    let mut stack = [0u8; 256];
    let heap: Vec<u8>;
    let full: &[u8] = if total <= stack.len() {
        stack[..module.len()].copy_from_slice(module.as_bytes());
        stack[module.len()] = b'.';
        stack[module.len() + 1..total].copy_from_slice(name.as_bytes());
        &stack[..total]
    } else {
        heap = [module.as_bytes(), b".", name.as_bytes()].concat();
        &heap
    };
    let starts = std::iter::once(0).chain(
        full[module.len()..]
            .iter()
            .enumerate()
            .filter(|(_, c)| **c == b'.')
            .map(|(i, _)| module.len() + i + 1),
    );
    for start in starts {
        let tail = &full[start..];
        if NAME_SET.contains_hashed(fnv(FNV_SEED, tail), tail) {
            return Some("runs code, touches files or reaches the network");
        }
        // Each dotted prefix of the tail, then the tail itself, as a module path: one pass,
        // the hash of each prefix taken as the pass reaches its dot.
        let mut h = FNV_SEED;
        for (i, &c) in tail.iter().enumerate() {
            if c == b'.' && i > 0 && MODULE_SET.contains_hashed(h, &tail[..i]) {
                return Some(
                    "belongs to a module that runs commands, code or network and file I/O",
                );
            }
            h = fnv_byte(h, c);
        }
        if MODULE_SET.contains_hashed(h, tail) {
            return Some("belongs to a module that runs commands, code or network and file I/O");
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The old definition, on `HashSet`s and a `String`: the reference for [`classify`].
    fn reference(module: &str, name: &str) -> Option<&'static str> {
        use std::collections::HashSet;
        use std::sync::OnceLock;
        type Sets = (
            HashSet<&'static str>,
            HashSet<&'static str>,
            HashSet<&'static str>,
        );
        static SETS: OnceLock<Sets> = OnceLock::new();
        let (modules, names, dunders) = SETS.get_or_init(|| {
            (
                MODULES.iter().copied().collect(),
                NAMES.iter().copied().collect(),
                DUNDERS.iter().copied().collect(),
            )
        });
        if name
            .split('.')
            .chain(module.split('.'))
            .any(|part| dunders.contains(part))
        {
            return Some("reaches interpreter internals through a dunder attribute");
        }
        let full = format!("{module}.{name}");
        let dots: Vec<usize> = full.match_indices('.').map(|(i, _)| i).collect();
        let module_parts = module.split('.').count();
        let starts = std::iter::once(0).chain(dots.iter().skip(module_parts - 1).map(|d| d + 1));
        for start in starts {
            let tail = &full[start..];
            if names.contains(tail) {
                return Some("runs code, touches files or reaches the network");
            }
            let prefixes = dots
                .iter()
                .filter(|&&d| d > start)
                .map(|&d| &full[start..d])
                .chain(std::iter::once(tail));
            for prefix in prefixes {
                if modules.contains(prefix) {
                    return Some(
                        "belongs to a module that runs commands, code or network and file I/O",
                    );
                }
            }
        }
        None
    }

    #[test]
    fn sets_hold_their_lists() {
        assert!(DUNDERS.iter().all(|d| d.starts_with("__")));
        for (set, list) in [
            (MODULE_SET.keys, MODULES),
            (NAME_SET.keys, NAMES),
            (DUNDER_SET.keys, DUNDERS),
        ] {
            assert_eq!(set.len(), list.len());
        }
        assert!(MODULES.iter().all(|m| MODULE_SET.contains(m)));
        assert!(NAMES.iter().all(|m| NAME_SET.contains(m)));
        assert!(DUNDERS.iter().all(|m| DUNDER_SET.contains(m)));
        assert!(
            !MODULE_SET.contains("o") && !MODULE_SET.contains("oss") && !MODULE_SET.contains("")
        );
    }

    #[test]
    fn same_as_the_reference() {
        let parts = [
            "os",
            "system",
            "posix",
            "builtins",
            "eval",
            "pathlib",
            "Path",
            "torch",
            "_utils",
            "_rebuild_tensor_v2",
            "numpy",
            "testing",
            "__class__",
            "",
            "a",
            "joblib",
            "numpy_pickle_utils",
            "x",
            "ops",
            "load",
            "sklearn",
            "linear_model",
            "asyncio",
            "unix_events",
            "__builtins__",
            "copyreg",
            "add_extension",
            "keras",
            "é",
            "import",
        ];
        let mut modules: Vec<String> = Vec::new();
        let mut names: Vec<String> = Vec::new();
        for (i, a) in parts.iter().enumerate() {
            modules.push((*a).to_owned());
            names.push((*a).to_owned());
            for (j, b) in parts.iter().enumerate() {
                modules.push(format!("{a}.{b}"));
                if i < 8 {
                    names.push(format!("{a}.{b}"));
                }
                if i < 4 && j < 6 {
                    for c in ["os", "eval", "", "x", "load"] {
                        names.push(format!("{a}.{b}.{c}"));
                        modules.push(format!("{a}.{b}.{c}"));
                    }
                }
            }
        }
        for long in [
            "x".repeat(300),
            format!("{}.os", "y".repeat(300)),
            format!("os.{}", "y".repeat(300)),
        ] {
            modules.push(long.clone());
            names.push(long);
        }
        for m in &modules {
            for n in &names {
                assert_eq!(classify(m, n), reference(m, n), "{m} {n}");
            }
        }
    }

    #[test]
    fn direct_and_walked_names() {
        assert!(classify("posix", "system").is_some());
        assert!(classify("os", "system").is_some());
        assert!(classify("builtins", "eval").is_some());
        assert!(classify("pathlib", "os.system").is_some());
        assert!(classify("builtins", "print.__class__.__base__.__subclasses__").is_some());
        assert!(classify("numpy", "__builtins__").is_some());
        assert!(classify("asyncio.unix_events", "_UnixSubprocessTransport._start").is_some());
        assert!(classify("torch._inductor.codecache", "compile_file").is_some());
        assert!(classify("collections", "OrderedDict").is_none());
        assert!(classify("torch._utils", "_rebuild_tensor_v2").is_none());
        assert!(classify("__main__", "MyModel").is_none());
        assert!(
            classify("scipy.io.matlab", "mat_struct").is_none(),
            "io inside a module path is not the io module"
        );
    }
}
