//! Asking the interpreter where it looks for code.
//!
//! Design choice: we run the interpreter once, as `PYTHON -I -S -c <script>`, rather than
//! re-deriving its layout from `pyvenv.cfg` and directory names. `-S` means `site` is not run,
//! so no `.pth` file executes during the probe; `-I` ignores `PYTHON*` variables, the user site
//! and the current directory. The interpreter binary and its standard library are the trust root
//! here, as they are for any Python tool. Because `-S` also skips `site.venv()`, the script
//! replays the venv detection itself: `pyvenv.cfg` next to the executable or one directory up,
//! `include-system-site-packages`, and then `site.getsitepackages(prefixes)` on the resulting
//! prefixes, exactly as `site.main()` would compute them.

use std::path::{Path, PathBuf};
use std::process::Command;

use serde::{Deserialize, Serialize};

use crate::Error;

const SCRIPT: &str = r#"
import json, os, site, sys, sysconfig, importlib.util
exe_dir = os.path.dirname(os.path.abspath(sys.executable))
site_prefix = os.path.dirname(exe_dir)
venv = None
system_site = True
for conf in (os.path.join(exe_dir, "pyvenv.cfg"), os.path.join(site_prefix, "pyvenv.cfg")):
    if os.path.isfile(conf):
        venv = site_prefix
        with open(conf, encoding="utf-8") as f:
            for line in f:
                key, sep, value = line.partition("=")
                if sep and key.strip().lower() == "include-system-site-packages":
                    system_site = value.strip().lower() == "true"
        break
prefixes = ([venv] if venv else []) + ([sys.prefix, sys.exec_prefix] if system_site else [])
dirs = list(site.getsitepackages(prefixes))
base = venv or sys.prefix
paths = sysconfig.get_paths(vars={"base": base, "platbase": venv or sys.exec_prefix})
dirs = list(dict.fromkeys(dirs + [paths["purelib"], paths["platlib"]]))
user_enabled = system_site and os.geteuid() == os.getuid() and os.getegid() == os.getgid()
print(json.dumps({
    "executable": sys.executable,
    "version": list(sys.version_info[:3]),
    "cache_tag": sys.implementation.cache_tag,
    "magic": importlib.util.MAGIC_NUMBER.hex(),
    "prefix": sys.prefix,
    "exec_prefix": sys.exec_prefix,
    "venv": venv,
    "include_system_site_packages": system_site,
    "site_packages": dirs,
    "user_base": site.getuserbase(),
    "user_site": site.getusersitepackages() if user_enabled else None,
    "sys_path": [p for p in sys.path if p],
}))
"#;

/// What the interpreter reported about itself.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Interpreter {
    /// `sys.executable`.
    pub executable: PathBuf,
    /// `sys.version_info[:3]`.
    pub version: Vec<u32>,
    /// `sys.implementation.cache_tag`, e.g. `cpython-311`: the tag of the `.pyc` files it loads.
    pub cache_tag: Option<String>,
    /// `importlib.util.MAGIC_NUMBER` in hex: the first 4 bytes of every `.pyc` it writes.
    pub magic: String,
    /// The base `sys.prefix` (the venv, if any, is in [`Interpreter::venv`]).
    pub prefix: PathBuf,
    /// The base `sys.exec_prefix`.
    pub exec_prefix: PathBuf,
    /// The virtual environment root, when `pyvenv.cfg` was found.
    pub venv: Option<PathBuf>,
    /// `include-system-site-packages` of the venv (true outside a venv).
    pub include_system_site_packages: bool,
    /// Every site-packages directory `site` would add, before deduplication.
    pub site_packages: Vec<PathBuf>,
    /// `site.getuserbase()`.
    pub user_base: PathBuf,
    /// The user site-packages, when the real start-up would enable it.
    pub user_site: Option<PathBuf>,
    /// `sys.path` under `-I -S`: the standard library directories.
    pub sys_path: Vec<PathBuf>,
}

impl Interpreter {
    /// Run `python` once and parse its report. `home`, when given, becomes `HOME` for the probe
    /// (it decides the user site-packages).
    pub fn probe(python: &Path, home: Option<&Path>) -> Result<Self, Error> {
        let mut cmd = Command::new(python);
        cmd.args(["-I", "-S", "-c", SCRIPT]);
        if let Some(home) = home {
            cmd.env("HOME", home);
        }
        let out = cmd.output().map_err(|source| Error::Spawn {
            path: python.to_owned(),
            source,
        })?;
        if !out.status.success() {
            let stderr = String::from_utf8_lossy(&out.stderr);
            let tail: String = stderr.trim().chars().rev().take(400).collect();
            return Err(Error::ProbeFailed {
                path: python.to_owned(),
                status: out.status.to_string(),
                stderr: tail.chars().rev().collect(),
            });
        }
        serde_json::from_slice(&out.stdout).map_err(|source| Error::ProbeOutput {
            path: python.to_owned(),
            source,
        })
    }

    /// The magic number as bytes, when it is the usual 4.
    pub(crate) fn magic_bytes(&self) -> Option<[u8; 4]> {
        hex::decode(&self.magic).ok()?.try_into().ok()
    }

    /// The existing site directories (site-packages and, when enabled, the user site), each
    /// once (by canonical path, so `lib64 -> lib` counts once), in search order.
    pub fn site_dirs(&self) -> Vec<PathBuf> {
        let mut seen = Vec::new();
        let mut out = Vec::new();
        for dir in self.site_packages.iter().chain(self.user_site.as_ref()) {
            let Ok(canon) = fs_err::canonicalize(dir) else {
                continue;
            };
            if canon.is_dir() && !seen.contains(&canon) {
                seen.push(canon);
                out.push(dir.clone());
            }
        }
        out
    }

    /// The installation root a site directory belongs to: RECORD paths must stay inside it.
    pub(crate) fn root_of(&self, site: &Path) -> PathBuf {
        [
            self.venv.as_deref(),
            Some(self.prefix.as_path()),
            Some(self.exec_prefix.as_path()),
            Some(self.user_base.as_path()),
        ]
        .into_iter()
        .flatten()
        .filter(|root| site.starts_with(root) && root.parent().is_some())
        .max_by_key(|root| root.components().count())
        .map_or_else(|| site.to_owned(), Path::to_owned)
    }
}
