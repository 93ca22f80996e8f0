//! `trainguard env verify` and `env snapshot` run as a user would: exit codes, stdout, stderr.
//!
//! Each test gets its own copy of one venv in which pip installed a tiny wheel written here.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;

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

fn run_ok(cmd: &mut Command) {
    let out = cmd.output().unwrap_or_else(|e| panic!("{cmd:?}: {e}"));
    assert!(
        out.status.success(),
        "{cmd:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

const MKWHEEL: &str = r#"
import base64, hashlib, sys, zipfile
files = {
    "tinypkg/__init__.py": "",
    "tinypkg/core.py": "def answer():\n    return 42\n",
    "tinypkg-1.0.dist-info/METADATA": "Metadata-Version: 2.1\nName: tinypkg\nVersion: 1.0\n",
    "tinypkg-1.0.dist-info/WHEEL": "Wheel-Version: 1.0\nGenerator: t\nRoot-Is-Purelib: true\nTag: py3-none-any\n",
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

fn template() -> &'static Path {
    static TEMPLATE: OnceLock<(tempfile::TempDir, PathBuf)> = OnceLock::new();
    &TEMPLATE
        .get_or_init(|| {
            let dir = tempfile::tempdir().unwrap();
            let whl = dir.path().join("tinypkg-1.0-py3-none-any.whl");
            run_ok(Command::new(python()).args(["-c", MKWHEEL]).arg(&whl));
            let root = dir.path().join("venv");
            run_ok(
                Command::new(python())
                    .args(["-m", "venv", "--without-pip"])
                    .arg(&root),
            );
            run_ok(
                Command::new(python())
                    .args(["-m", "pip", "--disable-pip-version-check", "--python"])
                    .arg(root.join("bin/python"))
                    .args(["install", "-q", "--no-index", "--no-deps", "--no-cache-dir"])
                    .arg(&whl),
            );
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

struct Env {
    dir: tempfile::TempDir,
}

struct Run {
    code: i32,
    stdout: String,
    stderr: String,
}

impl Env {
    fn new() -> Self {
        let dir = tempfile::tempdir().unwrap();
        copy_tree(template(), &dir.path().join("venv"));
        fs_err::create_dir_all(dir.path().join("home/.ssh")).unwrap();
        fs_err::create_dir_all(dir.path().join("system/etc")).unwrap();
        Env { dir }
    }

    fn path(&self, rel: &str) -> PathBuf {
        self.dir.path().join(rel)
    }

    fn site(&self) -> PathBuf {
        let lib = self.path("venv/lib");
        let py = fs_err::read_dir(&lib)
            .unwrap()
            .filter_map(Result::ok)
            .find(|e| e.file_name().to_string_lossy().starts_with("python"))
            .unwrap();
        py.path().join("site-packages")
    }

    /// Run `trainguard env <args> --python venv/bin/python --home home --system-root system`
    /// with none of this machine's interpreter or loader variables.
    fn trainguard(&self, args: &[&str]) -> Run {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_trainguard"));
        cmd.arg("env").args(args);
        cmd.arg("--python").arg(self.path("venv/bin/python"));
        cmd.arg("--home").arg(self.path("home"));
        cmd.arg("--system-root").arg(self.path("system"));
        for var in [
            "TRAINGUARD_LEDGER",
            "PYTHONSTARTUP",
            "PYTHONPATH",
            "PYTHONHOME",
            "PYTHONINSPECT",
            "PYTHONUSERBASE",
            "PYTHONWARNINGS",
            "LD_PRELOAD",
            "LD_LIBRARY_PATH",
        ] {
            cmd.env_remove(var);
        }
        let out = cmd.output().unwrap();
        let site = self.site().display().to_string();
        let root = self.dir.path().display().to_string();
        let clean = |b: &[u8]| {
            let text = String::from_utf8_lossy(b)
                .replace(&site, "[SITE]")
                .replace(&root, "[TMP]");
            // Timings and sizes vary from run to run.
            text.lines()
                .map(|l| match l.find(" in ") {
                    Some(i) if l.contains(" hashed (") => format!("{} in [T] s", &l[..i]),
                    _ => l.to_owned(),
                })
                .collect::<Vec<_>>()
                .join("\n")
        };
        Run {
            code: out.status.code().unwrap_or(-1),
            stdout: clean(&out.stdout),
            stderr: clean(&out.stderr),
        }
    }
}

#[test]
fn clean_venv_exits_0_with_nothing_on_stdout() {
    let env = Env::new();
    let run = env.trainguard(&["verify"]);
    assert_eq!(run.code, 0, "{}", run.stderr);
    assert_eq!(run.stdout, "");
    assert_eq!(
        run.stderr,
        "no findings: 1 distribution, 7 files hashed (0.0 MiB) in [T] s"
    );
}

#[test]
fn tampering_is_named_on_stdout_and_exits_1() {
    let env = Env::new();
    let site = env.site();
    fs_err::write(
        site.join("tinypkg/core.py"),
        "def answer():\n    return 4242\n",
    )
    .unwrap();
    fs_err::write(site.join("tinypkg/backdoor.py"), "").unwrap();
    fs_err::write(site.join("zz.pth"), "import os; os.system('id')\n").unwrap();
    let run = env.trainguard(&["verify"]);
    assert_eq!(run.code, 1, "{}", run.stderr);
    assert_eq!(
        run.stdout,
        "[SITE]/tinypkg/__pycache__/core.[TAG].pyc: TG-ENV-006 pyc-mismatch [tinypkg 1.0]: compiled module does not match its source's mtime and size: the source changed after it was compiled
    pyc mtime [PYC] size 28; source mtime [SRC] size 30
[SITE]/tinypkg/backdoor.py: TG-ENV-003 unrecorded-file [tinypkg 1.0]: file in a package directory that no record lists
[SITE]/tinypkg/core.py: TG-ENV-001 modified-file [tinypkg 1.0]: size 30 differs from record size 28
    record sha256=[A] now sha256=[B]
[SITE]/zz.pth: TG-ENV-003 unrecorded-file: path configuration file that no record lists (it extends sys.path)
[SITE]/zz.pth: TG-ENV-009 pth-code: path configuration file runs code at every interpreter start
    import os; os.system('id')"
            .replace("[TAG]", &word_after(&run.stdout, "__pycache__/core.").replace(".pyc:", ""))
            .replace("[PYC]", &pyc_mtime(&run.stdout, "pyc mtime "))
            .replace("[SRC]", &pyc_mtime(&run.stdout, "source mtime "))
            .replace("[A]", &word_after(&run.stdout, "record sha256="))
            .replace("[B]", &word_after(&run.stdout, "now sha256="))
    );
    assert!(
        run.stderr.starts_with("5 findings: 1 distribution,"),
        "{}",
        run.stderr
    );
}

fn word_after(text: &str, marker: &str) -> String {
    let start = text.find(marker).map(|i| i + marker.len()).unwrap_or(0);
    text[start..]
        .split_whitespace()
        .next()
        .unwrap_or_default()
        .to_owned()
}

fn pyc_mtime(text: &str, marker: &str) -> String {
    word_after(text, marker)
}

#[test]
fn json_report_carries_rule_kind_and_distribution() {
    let env = Env::new();
    fs_err::remove_file(env.site().join("tinypkg/core.py")).unwrap();
    let run = env.trainguard(&["verify", "--format", "json"]);
    assert_eq!(run.code, 1, "{}", run.stderr);
    let report: serde_json::Value = serde_json::from_str(&run.stdout).unwrap();
    let findings = report["findings"].as_array().unwrap();
    let missing = findings
        .iter()
        .find(|f| f["kind"] == "missing-file")
        .unwrap_or_else(|| panic!("{findings:#?}"));
    assert_eq!(missing["rule"], "TG-ENV-002");
    assert_eq!(missing["distribution"], "tinypkg 1.0");
    assert_eq!(missing["path"], "[SITE]/tinypkg/core.py");
    // The pyc left behind has no source any more.
    assert!(
        findings.iter().any(|f| f["kind"] == "orphan-pyc"),
        "{findings:#?}"
    );
    assert_eq!(report["distributions"], 1);
}

#[test]
fn snapshot_then_verify_names_the_new_key_and_file() {
    let env = Env::new();
    let keys = env.path("home/.ssh/authorized_keys");
    fs_err::write(&keys, "ssh-ed25519 AAAA alice\n").unwrap();
    let base = env.path("baseline.json");
    let run = env.trainguard(&["snapshot", "--out", base.to_str().unwrap()]);
    assert_eq!(run.code, 0, "{}", run.stderr);
    assert_eq!(run.stdout, "");
    assert!(
        run.stderr.starts_with("wrote [TMP]/baseline.json: "),
        "{}",
        run.stderr
    );

    let run = env.trainguard(&["verify", "--baseline", base.to_str().unwrap()]);
    assert_eq!((run.code, run.stdout.as_str()), (0, ""), "{}", run.stderr);

    fs_err::write(&keys, "ssh-ed25519 AAAA alice\nssh-ed25519 BBBB mallory\n").unwrap();
    fs_err::write(env.site().join("tinypkg/model.txt"), "x").unwrap();
    let run = env.trainguard(&["verify", "--baseline", base.to_str().unwrap()]);
    assert_eq!(run.code, 1, "{}", run.stderr);
    assert_eq!(
        run.stdout,
        "[TMP]/home/.ssh/authorized_keys: TG-ENV-014 baseline-changed: persistence file changed since the baseline
    + ssh-ed25519 BBBB mallory
[SITE]/tinypkg/model.txt: TG-ENV-015 baseline-added: file added since the baseline
    sha256 2d711642b726b04401627ca9fbac32f5c8530fb1903cc4db02258717921a4881 size 1"
    );
}

#[test]
fn errors_exit_2_and_name_the_interpreter() {
    let dir = tempfile::tempdir().unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_trainguard"))
        .args(["env", "verify", "--python", "/nonexistent/python"])
        .current_dir(dir.path())
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert_eq!(String::from_utf8_lossy(&out.stdout), "");
    assert_eq!(
        String::from_utf8_lossy(&out.stderr),
        "error: checking the environment of /nonexistent/python: cannot run python interpreter \
         /nonexistent/python: No such file or directory (os error 2)\n"
    );
    let bad = dir.path().join("bad.json");
    fs_err::write(&bad, "{\"format\": \"something-else\"}").unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_trainguard"))
        .args(["env", "verify", "--baseline"])
        .arg(&bad)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert_eq!(
        String::from_utf8_lossy(&out.stderr),
        format!(
            "error: baseline {} has format \"something-else\", expected \"trainguard-env-baseline/1\"\n",
            bad.display()
        )
    );
}
