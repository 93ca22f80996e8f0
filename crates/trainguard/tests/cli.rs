//! `trainguard scan` run as a user runs it, on fixtures from `tg-scan/tests/fixtures/` copied
//! into a temp dir: exit codes, stdout and stderr, snapshotted inline so every wording change
//! is reviewed. Paths are relative to the temp dir; timings and byte counts are filtered.

use std::path::{Path, PathBuf};
use std::process::Command;

struct Run {
    code: i32,
    stdout: String,
    stderr: String,
}

fn trainguard(cwd: &Path, args: &[&str]) -> Run {
    let out = Command::new(env!("CARGO_BIN_EXE_trainguard"))
        .args(args)
        .current_dir(cwd)
        .env_remove("TRAINGUARD_LEDGER")
        .env("NO_COLOR", "1")
        .output()
        .unwrap();
    Run {
        code: out.status.code().unwrap_or(-1),
        stdout: String::from_utf8(out.stdout).unwrap(),
        stderr: String::from_utf8(out.stderr).unwrap(),
    }
}

fn fixtures_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../tg-scan/tests/fixtures")
}

/// A temp dir holding `files` (fixture names) under `models/`.
fn models(files: &[&str]) -> tempfile::TempDir {
    let tmp = tempfile::tempdir().unwrap();
    fs_err::create_dir_all(tmp.path().join("models")).unwrap();
    for f in files {
        fs_err::copy(fixtures_dir().join(f), tmp.path().join("models").join(f)).unwrap();
    }
    tmp
}

/// The run as one text: exit code, stdout, stderr.
fn shown(run: &Run) -> String {
    format!(
        "exit: {}\n--- stdout\n{}--- stderr\n{}",
        run.code, run.stdout, run.stderr
    )
}

const FILTERS: &[(&str, &str)] = &[
    (r" in \d+\.\d+ s", " in [TIME] s"),
    (r#""bytes_read":\d+"#, r#""bytes_read":[N]"#),
];

macro_rules! snap {
    ($value:expr, @$snapshot:literal) => {
        insta::with_settings!({ filters => FILTERS.to_vec() }, {
            insta::assert_snapshot!($value, @$snapshot);
        })
    };
}

#[test]
fn clean_checkpoint_exits_0_with_a_summary() {
    let tmp = models(&["torch_zip_benign.pt"]);
    let run = trainguard(tmp.path(), &["scan", "models/torch_zip_benign.pt"]);
    assert_eq!(run.code, 0);
    snap!(shown(&run), @r#"
        exit: 0
        --- stdout
        models/torch_zip_benign.pt: clean (pytorch-zip)

        1 files: 1 clean, 0 suspicious, 0 malicious, 0 inconclusive in [TIME] s
        --- stderr
        "#);
}

#[test]
fn malicious_pickle_exits_1_with_rule_location_and_evidence() {
    let tmp = models(&["torch_zip_malicious.pt"]);
    let run = trainguard(tmp.path(), &["scan", "models/torch_zip_malicious.pt"]);
    assert_eq!(run.code, 1);
    snap!(shown(&run), @r#"
        exit: 1
        --- stdout
        models/torch_zip_malicious.pt: malicious (pytorch-zip)
          TG-PKL-001 malicious    [archive/data.pkl@182] GLOBAL imports os.system, which belongs to a module that runs commands, code or network and file I/O
              evidence: os.system('id')

        1 files: 0 clean, 0 suspicious, 1 malicious, 0 inconclusive in [TIME] s
        --- stderr
        "#);
}

#[test]
fn directory_scan_reports_every_file_in_name_order() {
    let tmp = models(&[
        "empty.bin",
        "ext1_reduce.pkl",
        "legacy_payload_in_object.pt",
        "numpy_float.npy",
        "truncated_data_only.pkl",
    ]);
    let run = trainguard(tmp.path(), &["scan", "models"]);
    assert_eq!(run.code, 1);
    snap!(shown(&run), @r#"
        exit: 1
        --- stdout
        models/empty.bin: clean (empty)
          note: empty file: nothing a loader could execute
        models/ext1_reduce.pkl: suspicious (pickle)
          TG-PKL-003 suspicious   [@2] EXT opcode takes global number 1 from the copyreg extension registry
        models/legacy_payload_in_object.pt: malicious (pytorch-legacy)
          TG-PKL-001 malicious    [@172] GLOBAL imports os.system, which belongs to a module that runs commands, code or network and file I/O
              evidence: os.system('id')
        models/numpy_float.npy: clean (npy)
        models/truncated_data_only.pkl: clean (not-a-model)
          note: not a pickle or a known model format (pickle data was truncated): no loader executes it

        format            files  clean inconclusive  suspicious  malicious
        empty                 1      1            0           0          0
        not-a-model           1      1            0           0          0
        npy                   1      1            0           0          0
        pickle                1      0            0           1          0
        pytorch-legacy        1      0            0           0          1

        5 files: 3 clean, 1 suspicious, 1 malicious, 0 inconclusive in [TIME] s
        --- stderr
        "#);
}

#[test]
fn reports_keep_name_order_whatever_the_thread_count() {
    // Every fixture, scanned by one thread and by several: the same lines, in name order.
    let names: Vec<String> = fs_err::read_dir(fixtures_dir())
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    let refs: Vec<&str> = names.iter().map(String::as_str).collect();
    let tmp = models(&refs);
    let one = trainguard(tmp.path(), &["scan", "-j1", "--format", "json", "models"]);
    let many = trainguard(tmp.path(), &["scan", "-j3", "--format", "json", "models"]);
    assert_eq!(one.code, many.code);
    assert!(one.stdout.lines().count() > 40, "{}", one.stdout);
    let strip = |s: &str| -> Vec<serde_json::Value> {
        s.lines()
            .map(|l| {
                let mut v: serde_json::Value = serde_json::from_str(l).unwrap();
                v.as_object_mut().unwrap().remove("duration_ms");
                v
            })
            .collect()
    };
    let (one, many) = (strip(&one.stdout), strip(&many.stdout));
    assert_eq!(one, many);
    let paths: Vec<&str> = one.iter().map(|v| v["path"].as_str().unwrap()).collect();
    let mut sorted = paths.clone();
    sorted.sort_unstable();
    assert_eq!(paths, sorted);
}

#[test]
fn quiet_prints_only_files_that_are_not_clean() {
    let tmp = models(&["empty.bin", "numpy_float.npy", "obj_pop.pkl"]);
    let run = trainguard(tmp.path(), &["scan", "--quiet", "models"]);
    assert_eq!(run.code, 1);
    snap!(shown(&run), @r#"
        exit: 1
        --- stdout
        models/obj_pop.pkl: malicious (pickle)
          TG-PKL-001 malicious    [@3] GLOBAL imports os.system, which belongs to a module that runs commands, code or network and file I/O
              evidence: os.system('id')

        format            files  clean inconclusive  suspicious  malicious
        empty                 1      1            0           0          0
        npy                   1      1            0           0          0
        pickle                1      0            0           0          1

        3 files: 2 clean, 0 suspicious, 1 malicious, 0 inconclusive in [TIME] s
        --- stderr
        "#);
}

#[test]
fn inconclusive_and_nothing_worse_exits_2() {
    let tmp = models(&["broken_after_allowed_global.pkl", "numpy_float.npy"]);
    let run = trainguard(tmp.path(), &["scan", "models"]);
    assert_eq!(run.code, 2);
    snap!(shown(&run), @r#"
        exit: 2
        --- stdout
        models/broken_after_allowed_global.pkl: inconclusive (pickle)
          TG-PKL-010 inconclusive [@29] the pickle stream fails here (invalid load key, '\xff') after importing or calling: a loader runs everything before this point
        models/numpy_float.npy: clean (npy)

        format            files  clean inconclusive  suspicious  malicious
        npy                   1      1            0           0          0
        pickle                1      0            1           0          0

        2 files: 1 clean, 0 suspicious, 0 malicious, 1 inconclusive in [TIME] s
        --- stderr
        "#);
}

#[test]
fn a_suspicious_file_outranks_an_inconclusive_one() {
    let tmp = models(&[
        "broken_after_allowed_global.pkl",
        "unknown_global_mypkg.pkl",
    ]);
    let run = trainguard(tmp.path(), &["scan", "--quiet", "models"]);
    assert_eq!(run.code, 1, "{}", shown(&run));
}

#[test]
fn an_opcode_limit_makes_a_clean_file_inconclusive() {
    let tmp = models(&["plain_dict_protocol4.pkl"]);
    let run = trainguard(
        tmp.path(),
        &[
            "scan",
            "--max-opcodes",
            "4",
            "models/plain_dict_protocol4.pkl",
        ],
    );
    assert_eq!(run.code, 2, "{}", shown(&run));
    assert!(run.stdout.contains("TG-PKL-011"), "{}", shown(&run));
}

#[test]
fn json_lines_one_object_per_file() {
    let tmp = models(&["nested_pickle_loads.pkl", "numpy_float.npy"]);
    let run = trainguard(tmp.path(), &["scan", "--format", "json", "models"]);
    assert_eq!(run.code, 1);
    assert!(run.stderr.is_empty(), "{}", run.stderr);
    let lines: Vec<serde_json::Value> = run
        .stdout
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(lines.len(), 2);
    assert_eq!(lines[0]["verdict"], "malicious");
    assert_eq!(lines[1]["verdict"], "clean");
    snap!(run.stdout, @r#"
        {"path":"models/nested_pickle_loads.pkl","format":"pickle","verdict":"malicious","findings":[{"rule":"TG-PKL-001","verdict":"malicious","message":"GLOBAL imports pickle.loads, which belongs to a module that runs commands, code or network and file I/O","location":{"offset":2},"evidence":"pickle.loads(b'\\x80\\x02cos\\x0asystem\\x0a(X\\x02\\x00\\x00\\x00idtR.')"},{"rule":"TG-PKL-001","verdict":"malicious","message":"GLOBAL imports os.system, which belongs to a module that runs commands, code or network and file I/O","location":{"member":"nested pickle passed to pickle.loads at offset 44","offset":2},"evidence":"os.system('id')"}],"bytes_read":[N],"size":46}
        {"path":"models/numpy_float.npy","format":"npy","verdict":"clean","findings":[],"bytes_read":[N],"size":160}
        "#);
}

#[test]
fn sarif_log_has_one_result_per_finding() {
    let tmp = models(&[
        "torch_zip_malicious.pt",
        "torchscript_custom_op.pt",
        "numpy_float.npy",
    ]);
    let run = trainguard(tmp.path(), &["scan", "--format", "sarif", "models"]);
    assert_eq!(run.code, 1);
    let log: serde_json::Value = serde_json::from_str(&run.stdout).unwrap();
    assert_eq!(log["version"], "2.1.0");
    let sarif_run = &log["runs"][0];
    assert_eq!(sarif_run["tool"]["driver"]["name"], "trainguard");
    assert_eq!(
        sarif_run["tool"]["driver"]["version"],
        env!("CARGO_PKG_VERSION")
    );
    let rules: Vec<&str> = sarif_run["tool"]["driver"]["rules"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["id"].as_str().unwrap())
        .collect();
    assert_eq!(rules, ["TG-PKL-001", "TG-TS-001"]);
    let results = sarif_run["results"].as_array().unwrap();
    assert_eq!(results.len(), 2, "{results:#?}");
    let pkl = &results[0];
    assert_eq!(pkl["ruleId"], "TG-PKL-001");
    assert_eq!(pkl["level"], "error");
    assert_eq!(pkl["properties"]["verdict"], "malicious");
    assert!(
        pkl["message"]["text"]
            .as_str()
            .unwrap()
            .contains("os.system('id')")
    );
    let loc = &pkl["locations"][0];
    assert_eq!(
        loc["physicalLocation"]["artifactLocation"]["uri"],
        "models/torch_zip_malicious.pt"
    );
    assert!(
        loc["physicalLocation"]["region"]["byteOffset"]
            .as_u64()
            .is_some()
    );
    assert_eq!(
        loc["logicalLocations"][0]["fullyQualifiedName"],
        "archive/data.pkl"
    );
    assert_eq!(loc["logicalLocations"][0]["kind"], "member");
    let ts = &results[1];
    assert_eq!(ts["ruleId"], "TG-TS-001");
    assert_eq!(ts["level"], "warning");
    assert_eq!(
        ts["locations"][0]["physicalLocation"]["artifactLocation"]["uri"],
        "models/torchscript_custom_op.pt"
    );
}

#[test]
fn exclude_skips_matching_files() {
    let tmp = models(&["numpy_float.npy", "obj_pop.pkl", "stack_global_binget.pkl"]);
    let run = trainguard(tmp.path(), &["scan", "--exclude", "*.pkl", "models"]);
    assert_eq!(run.code, 0);
    snap!(shown(&run), @r#"
        exit: 0
        --- stdout
        models/numpy_float.npy: clean (npy)

        1 files: 1 clean, 0 suspicious, 0 malicious, 0 inconclusive in [TIME] s
        --- stderr
        "#);
}

#[test]
fn excluding_everything_hints_at_the_globs() {
    let tmp = models(&["obj_pop.pkl"]);
    let run = trainguard(tmp.path(), &["scan", "--exclude", "*.pkl", "models"]);
    assert_eq!(run.code, 0);
    snap!(shown(&run), @r#"
        exit: 0
        --- stdout

        0 files: 0 clean, 0 suspicious, 0 malicious, 0 inconclusive in [TIME] s
        --- stderr
        hint: no files to scan: check the paths and the --include/--exclude globs
        "#);
}

#[test]
fn weights_only_policy_flags_numpy_that_the_default_allows() {
    let tmp = models(&["numpy_array.pkl"]);
    let default = trainguard(tmp.path(), &["scan", "models/numpy_array.pkl"]);
    assert_eq!(default.code, 0);
    snap!(shown(&default), @r#"
        exit: 0
        --- stdout
        models/numpy_array.pkl: clean (pickle)

        1 files: 1 clean, 0 suspicious, 0 malicious, 0 inconclusive in [TIME] s
        --- stderr
        "#);
    let strict = trainguard(
        tmp.path(),
        &["scan", "--policy", "weights-only", "models/numpy_array.pkl"],
    );
    assert_eq!(strict.code, 1);
    snap!(shown(&strict), @r#"
        exit: 1
        --- stdout
        models/numpy_array.pkl: suspicious (pickle)
          TG-PKL-002 suspicious   [@2] GLOBAL imports numpy.core.multiarray._reconstruct, which the weights-only policy does not allow
              evidence: numpy.core.multiarray._reconstruct(numpy.ndarray, (0,), b'b')
          TG-PKL-002 suspicious   [@39] GLOBAL imports numpy.ndarray, which the weights-only policy does not allow
              evidence: numpy.ndarray (imported, not called)
          TG-PKL-006 suspicious   [@57] opcode SHORT_BINBYTES is refused by torch.load(weights_only=True)
          TG-PKL-002 suspicious   [@68] GLOBAL imports numpy.dtype, which the weights-only policy does not allow
              evidence: numpy.dtype('f8', False, True)

        1 files: 0 clean, 1 suspicious, 0 malicious, 0 inconclusive in [TIME] s
        --- stderr
        "#);
}

#[test]
fn allow_adds_a_global_to_the_policy() {
    let tmp = models(&["unknown_global_mypkg.pkl"]);
    let before = trainguard(tmp.path(), &["scan", "models/unknown_global_mypkg.pkl"]);
    assert_eq!(before.code, 1);
    snap!(shown(&before), @r#"
        exit: 1
        --- stdout
        models/unknown_global_mypkg.pkl: suspicious (pickle)
          TG-PKL-002 suspicious   [@2] GLOBAL imports mypkg.helpers.build, which the default policy does not allow
              evidence: mypkg.helpers.build(3)

        1 files: 0 clean, 1 suspicious, 0 malicious, 0 inconclusive in [TIME] s
        --- stderr
        "#);
    let after = trainguard(
        tmp.path(),
        &[
            "scan",
            "--allow",
            "mypkg.helpers.build:function",
            "models/unknown_global_mypkg.pkl",
        ],
    );
    assert_eq!(after.code, 0);
    snap!(shown(&after), @r#"
        exit: 0
        --- stdout
        models/unknown_global_mypkg.pkl: clean (pickle)

        1 files: 1 clean, 0 suspicious, 0 malicious, 0 inconclusive in [TIME] s
        --- stderr
        "#);
}

#[test]
fn allow_never_clears_a_known_dangerous_global() {
    let tmp = models(&["obj_pop.pkl"]);
    let run = trainguard(
        tmp.path(),
        &[
            "scan",
            "--allow",
            "os.system:function",
            "models/obj_pop.pkl",
        ],
    );
    assert_eq!(run.code, 1, "{}", shown(&run));
    assert!(run.stdout.contains("malicious"), "{}", shown(&run));
}

#[test]
fn a_malformed_allow_entry_is_an_error() {
    let tmp = models(&[]);
    let run = trainguard(tmp.path(), &["scan", "--allow", "nodot", "models"]);
    assert_eq!(run.code, 2);
    snap!(shown(&run), @r#"
        exit: 2
        --- stdout
        --- stderr
        error: policy entry 'nodot' is not of the form module.name[:class|function|constant]
        "#);
}

#[test]
fn a_missing_path_is_an_error_and_exits_2() {
    let tmp = models(&["numpy_float.npy"]);
    let run = trainguard(
        tmp.path(),
        &["scan", "models/numpy_float.npy", "models/missing.pt"],
    );
    assert_eq!(run.code, 2);
    snap!(shown(&run), @r#"
        exit: 2
        --- stdout
        models/numpy_float.npy: clean (npy)

        1 files: 1 clean, 0 suspicious, 0 malicious, 0 inconclusive, 1 errors in [TIME] s
        --- stderr
        error: failed to query resolved metadata `models/missing.pt`: No such file or directory (os error 2)
        "#);
}

/// Files are scanned while the walk goes on, and links wait for every name to be known: a link
/// met before its target is reported once, at its place, with the target's scan; a link to a
/// file outside the walk is scanned on its own.
#[test]
fn links_before_their_targets_and_out_of_tree_links_are_scanned_once() {
    let tmp = tempfile::tempdir().unwrap();
    let tree = tmp.path().join("tree");
    let outside = tmp.path().join("outside");
    for dir in ["tree/a", "tree/z", "outside"] {
        fs_err::create_dir_all(tmp.path().join(dir)).unwrap();
    }
    fs_err::copy(
        fixtures_dir().join("torch_zip_benign.pt"),
        tree.join("z/real.pt"),
    )
    .unwrap();
    fs_err::copy(
        fixtures_dir().join("torch_zip_benign.pt"),
        outside.join("far.pt"),
    )
    .unwrap();
    std::os::unix::fs::symlink("../z/real.pt", tree.join("a/link.pt")).unwrap();
    std::os::unix::fs::symlink("../../outside/far.pt", tree.join("a/out.pt")).unwrap();
    for threads in ["-j1", "-j3"] {
        let run = trainguard(tmp.path(), &["scan", threads, "--format", "json", "tree"]);
        assert_eq!(run.code, 0, "{}", shown(&run));
        let rows: Vec<(String, String)> = run
            .stdout
            .lines()
            .map(|l| {
                let v: serde_json::Value = serde_json::from_str(l).unwrap();
                (v["path"].to_string(), v["format"].to_string())
            })
            .collect();
        assert_eq!(
            rows,
            [
                (
                    r#""tree/a/link.pt""#.to_owned(),
                    r#""pytorch-zip""#.to_owned()
                ),
                (
                    r#""tree/a/out.pt""#.to_owned(),
                    r#""pytorch-zip""#.to_owned()
                ),
            ],
            "{}",
            shown(&run)
        );
    }
}

/// A Hugging Face hub cache: `snapshots/<rev>/<name>` links to `blobs/<sha>`. Each real file
/// is scanned once, under its snapshot name; naming a file and its folder scans it once too.
#[test]
fn a_hub_cache_scans_each_blob_once_under_its_snapshot_name() {
    let tmp = tempfile::tempdir().unwrap();
    let repo = tmp.path().join("models--org--net");
    fs_err::create_dir_all(repo.join("blobs")).unwrap();
    fs_err::create_dir_all(repo.join("snapshots/abc123")).unwrap();
    fs_err::copy(
        fixtures_dir().join("torch_zip_benign.pt"),
        repo.join("blobs/0f1e2d"),
    )
    .unwrap();
    std::os::unix::fs::symlink("../../blobs/0f1e2d", repo.join("snapshots/abc123/model.pt"))
        .unwrap();
    let run = trainguard(tmp.path(), &["scan", "--format", "json", "."]);
    assert_eq!(run.code, 0, "{}", shown(&run));
    let paths: Vec<String> = run
        .stdout
        .lines()
        .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap()["path"].to_string())
        .collect();
    assert_eq!(
        paths,
        [r#""./models--org--net/snapshots/abc123/model.pt""#],
        "{}",
        shown(&run)
    );

    let run = trainguard(
        tmp.path(),
        &[
            "scan",
            "--format",
            "json",
            "models--org--net/blobs",
            "models--org--net/blobs/0f1e2d",
        ],
    );
    assert_eq!(run.stdout.lines().count(), 1, "{}", shown(&run));
}

/// Each verb's `--help` is its full text, examples included (the verbs' parsers are built only
/// when run, and their own long help must not be replaced by the one-line summary).
#[test]
fn verb_help_shows_the_long_text_with_examples() {
    let tmp = tempfile::tempdir().unwrap();
    for verb in ["scan", "convert", "diff", "run"] {
        let run = trainguard(tmp.path(), &[verb, "--help"]);
        assert_eq!(run.code, 0, "{}", shown(&run));
        assert!(run.stdout.contains("Examples:"), "{verb}: {}", shown(&run));
        assert!(
            run.stdout.contains(&format!("trainguard {verb} ")),
            "{}",
            shown(&run)
        );
    }
    for verb in ["seal", "verify", "keygen", "ledger", "env", "watch"] {
        let run = trainguard(tmp.path(), &[verb, "--help"]);
        assert_eq!(run.code, 0, "{}", shown(&run));
        assert!(
            !run.stdout.contains("Arguments of"),
            "{verb}: {}",
            shown(&run)
        );
    }
}
