//! `trainguard convert` and `trainguard diff` on real checkpoints written by `torch.save` in a
//! Python subprocess, checked bit for bit against `torch.load(weights_only=True)`.
//!
//! One Python run writes every fixture (a few KB each) into a shared folder under the target
//! dir; each test then runs the real binary into its own temp dir and, where it compares
//! tensors, one Python run loads the output with `safetensors.torch.load_file`.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::OnceLock;

use serde_json::Value;

/// The interpreter the tests run: `TRAINGUARD_TEST_PYTHON`, else the workspace `.venv`.
fn python() -> PathBuf {
    if let Some(p) = std::env::var_os("TRAINGUARD_TEST_PYTHON") {
        return PathBuf::from(p);
    }
    let venv = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../.venv/bin/python");
    assert!(
        venv.exists(),
        "no Python for the tests: set TRAINGUARD_TEST_PYTHON or run scripts/test (it creates .venv \
         with torch, safetensors and numpy from requirements-test.txt)"
    );
    venv
}

fn py(script: &str, args: &[&Path]) -> String {
    let out = Command::new(python())
        .arg("-c")
        .arg(script)
        .args(args)
        .env("PYTHONWARNINGS", "ignore")
        .output()
        .expect("run python");
    assert!(
        out.status.success(),
        "python failed:\n{}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).expect("utf-8")
}

fn trainguard(args: &[&std::ffi::OsStr]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_trainguard"))
        .args(args)
        .env_remove("TRAINGUARD_LEDGER")
        .output()
        .expect("run trainguard")
}

macro_rules! tg {
    ($($a:expr),* $(,)?) => { trainguard(&[$(std::ffi::OsStr::new($a)),*]) };
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

fn code(o: &Output) -> i32 {
    o.status.code().expect("exit code")
}

/// Writes every fixture once per test run.
const GEN: &str = r#"
import io, json, os, sys, zipfile
import numpy as np
import torch

out = sys.argv[1]
torch.manual_seed(0)
p = lambda name: os.path.join(out, name)

base = torch.randn(4, 6)
full = {
    "model": {
        "f32": torch.randn(3, 4),
        "f64": torch.randn(2, 2).double(),
        "f16": torch.randn(3).half(),
        "bf16": torch.randn(5).to(torch.bfloat16),
        "i64": torch.arange(-2, 3),
        "i32": torch.arange(4, dtype=torch.int32) - 2,
        "i16": torch.tensor([-300, 7], dtype=torch.int16),
        "i8": torch.tensor([-3, 4], dtype=torch.int8),
        "u8": torch.tensor([200, 1], dtype=torch.uint8),
        "bool": torch.tensor([True, False, True]),
        "f8_e4m3": torch.randn(4).to(torch.float8_e4m3fn),
        "f8_e5m2": torch.randn(4).to(torch.float8_e5m2),
        "scalar": torch.tensor(2.5),
        "empty": torch.zeros(0, 3),
        "transposed": base.t(),
        "stepped": base[::2, 1::3],
        "shared_all": base,
        "shared_row": base[1],
        "param": torch.nn.Parameter(torch.randn(2, 2)),
        "blocks": [torch.ones(2), {"inner": torch.zeros(1, 1)}],
        "complex": torch.zeros(2, dtype=torch.complex64),
    },
    "optimizer": {
        "state": {0: {"step": torch.tensor(3.0), "exp_avg": torch.randn(2, 2)}},
        "param_groups": [{"lr": 0.001, "betas": (0.9, 0.999), "params": [0], "nesterov": False}],
    },
    "epoch": 7,
    "best": float("inf"),
    "name": "run-1",
}
torch.save(full, p("full.pt"))

legacy = {k: v for k, v in full["model"].items() if k not in ("f8_e4m3", "f8_e5m2", "complex", "blocks")}
legacy["epoch"] = 7
torch.save(legacy, p("legacy.pt"), _use_new_zipfile_serialization=False)

# A tensor with a Python attribute (torch writes _rebuild_from_type_v2), and a bare tensor.
noted = torch.randn(3)
noted.note = "x"
torch.save({"plain": torch.ones(1), "noted": noted}, p("attrs.pt"))
torch.save(torch.arange(3), p("bare.pt"))

# A big-endian archive: the same zip with byteorder "big" and every storage byte-swapped.
be = {"f32": torch.randn(3, 2), "f64": torch.randn(4).double(), "f16": torch.randn(5).half()}
buf = io.BytesIO(); torch.save(be, buf)
zin = zipfile.ZipFile(io.BytesIO(buf.getvalue()))
sizes = {"0": 4, "1": 8, "2": 2}
with zipfile.ZipFile(p("big_endian.pt"), "w", zipfile.ZIP_STORED) as zout:
    for info in zin.infolist():
        data = zin.read(info.filename)
        rest = info.filename.partition("/")[2]
        if rest == "byteorder":
            data = b"big"
        elif rest.startswith("data/"):
            data = np.frombuffer(data, dtype="<u%d" % sizes[rest[5:]]).byteswap().tobytes()
        zout.writestr(info.filename, data)

# The same kind of archive with deflated members (torch stores them; miniz reads both).
with zipfile.ZipFile(p("big_endian.pt")) as zin, zipfile.ZipFile(p("deflated.pt"), "w", zipfile.ZIP_DEFLATED) as zout:
    for info in zin.infolist():
        data = zin.read(info.filename)
        if info.filename.endswith("/byteorder"):
            data = b"little"
        elif "/data/" in info.filename:
            data = np.frombuffer(data, dtype="<u%d" % sizes[info.filename.rsplit("/", 1)[1]]).byteswap().tobytes()
        zout.writestr(info.filename, data)

# A sharded checkpoint as transformers writes it.
os.makedirs(p("sharded"))
shards = [
    {"embed.weight": torch.randn(8, 4), "layer.0.weight": torch.randn(4, 4).to(torch.bfloat16)},
    {"layer.1.weight": torch.randn(4, 4), "head.weight": torch.randn(2, 4).half()},
]
weight_map = {}
for i, sd in enumerate(shards):
    name = "pytorch_model-%05d-of-%05d.bin" % (i + 1, len(shards))
    torch.save(sd, os.path.join(p("sharded"), name))
    weight_map.update({k: name for k in sd})
with open(os.path.join(p("sharded"), "pytorch_model.bin.index.json"), "w") as f:
    json.dump({"metadata": {"total_size": 0}, "weight_map": weight_map}, f)

# Diff fixtures.
w = torch.randn(64, 32)
torch.save({"w": w, "b": torch.randn(32), "step": 10}, p("base.pt"))
torch.save({"w": w.clone(), "b": torch.load(p("base.pt"))["b"].clone(), "step": 10}, p("same.pt"))
b = torch.load(p("base.pt"))["b"]
torch.save({"w": -w, "b": b, "step": 10}, p("flipped.pt"))
torch.save({"w": w * 2, "b": b, "step": 10}, p("scaled.pt"))
w2 = w.clone(); w2[0, 0] = float("nan"); w2[0, 1] = float("inf")
torch.save({"w": w2, "c": torch.zeros(3), "step": 11}, p("changed.pt"))
torch.save({"w": w.reshape(32, 64), "b": b.double(), "step": 10}, p("reshaped.pt"))
with open(p("expect.json"), "w") as f:
    json.dump({"max_abs_w": w.double().abs().max().item()}, f)
"#;

/// `compare REF OUT [REF OUT ...]`: every tensor of `torch.load(REF, weights_only=True)`,
/// flattened like the converter names them, equals (dtype, shape and every byte) the tensor of
/// the same name in `load_file(OUT)`, and OUT holds nothing else. Prints each OUT's metadata.
const CHECK: &str = r#"
import json, sys
import torch
from safetensors import safe_open
from safetensors.torch import load_file

def flat(o, path=""):
    join = lambda k: f"{path}.{k}" if path else str(k)
    if isinstance(o, torch.Tensor):
        yield (path or "tensor"), o
    elif isinstance(o, dict):
        for k, v in o.items():
            if has_tensor(v):
                yield from flat(v, join(k))
    elif isinstance(o, (list, tuple)):
        for i, v in enumerate(o):
            if has_tensor(v):
                yield from flat(v, join(i))

def has_tensor(o):
    if isinstance(o, torch.Tensor):
        return True
    if isinstance(o, dict):
        return any(has_tensor(v) for v in o.values())
    if isinstance(o, (list, tuple)):
        return any(has_tensor(v) for v in o)
    return False

metas = []
args = sys.argv[1:]
for ref_path, out_path in zip(args[::2], args[1::2]):
    ref = dict(flat(torch.load(ref_path, weights_only=True)))
    got = load_file(out_path)
    carried = {k: v for k, v in ref.items() if not v.is_complex()}
    assert set(got) == set(carried), (sorted(got), sorted(carried))
    for k, v in carried.items():
        g = got[k]
        assert g.dtype == v.dtype, (k, g.dtype, v.dtype)
        assert g.shape == v.shape, (k, g.shape, v.shape)
        assert g.is_contiguous()
        a = v.contiguous().flatten().view(torch.uint8)
        b = g.contiguous().flatten().view(torch.uint8)
        assert torch.equal(a, b), k
    with safe_open(out_path, "pt") as f:
        metas.append(f.metadata())
print(json.dumps(metas))
"#;

fn fixtures() -> &'static Path {
    static DIR: OnceLock<PathBuf> = OnceLock::new();
    DIR.get_or_init(|| {
        let dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join("convert-fixtures");
        if dir.exists() {
            fs_err::remove_dir_all(&dir).expect("clean fixtures");
        }
        fs_err::create_dir_all(&dir).expect("fixture dir");
        py(GEN, &[&dir]);
        dir
    })
}

fn fixture(name: &str) -> PathBuf {
    fixtures().join(name)
}

fn check(pairs: &[(&Path, &Path)]) -> Vec<serde_json::Map<String, Value>> {
    let args: Vec<&Path> = pairs.iter().flat_map(|(a, b)| [*a, *b]).collect();
    let out = py(CHECK, &args);
    let metas: Vec<Value> = serde_json::from_str(out.trim()).expect("metadata json");
    metas
        .into_iter()
        .map(|m| m.as_object().cloned().unwrap_or_default())
        .collect()
}

#[test]
fn convert_is_bit_exact_for_every_dtype_view_and_shared_storage() {
    let tmp = tempfile::tempdir().unwrap();
    let input = fixture("full.pt");
    let output = tmp.path().join("full.safetensors");
    let o = tg!("convert", &input, &output);
    assert_eq!(code(&o), 0, "{}", text(&o.stderr));
    let stdout = text(&o.stdout);
    assert!(stdout.contains("23 tensors"), "{stdout}");
    // The complex tensor cannot be held by safetensors: said on stderr, not silently dropped.
    assert!(
        text(&o.stderr).contains(
            "warning: not carried: model.complex: a complex64 tensor of shape [2]: safetensors has no complex64 dtype"
        ),
        "{}",
        text(&o.stderr)
    );
    let meta = check(&[(&input, &output)]).remove(0);
    assert_eq!(meta["format"], "pt");
    assert_eq!(meta["epoch"], "7");
    assert_eq!(meta["best"], "Infinity");
    assert_eq!(meta["name"], "\"run-1\"");
    let groups: Value = serde_json::from_str(
        meta["optimizer.param_groups"]
            .as_str()
            .unwrap()
            .replace("NaN", "null")
            .as_str(),
    )
    .unwrap();
    assert_eq!(groups[0]["lr"], 0.001);
    assert_eq!(groups[0]["betas"][1], 0.999);
    assert_eq!(groups[0]["params"][0], 0);
    let dropped: Value =
        serde_json::from_str(meta["trainguard.dropped"].as_str().unwrap()).unwrap();
    assert_eq!(dropped[0]["name"], "model.complex");
    // The conversion is faithful as far as trainguard's own diff can tell too.
    let d = tg!("diff", &input, &output);
    assert_eq!(code(&d), 0, "{}", text(&d.stdout));
}

#[test]
fn convert_reads_legacy_big_endian_and_deflated_checkpoints() {
    let tmp = tempfile::tempdir().unwrap();
    let legacy = fixture("legacy.pt");
    let big = fixture("big_endian.pt");
    let deflated = fixture("deflated.pt");
    let (lo, bo, dout) = (
        tmp.path().join("l.safetensors"),
        tmp.path().join("b.safetensors"),
        tmp.path().join("d.safetensors"),
    );
    for (i, o) in [(&legacy, &lo), (&big, &bo), (&deflated, &dout)] {
        let out = tg!("convert", i, o);
        assert_eq!(code(&out), 0, "{}", text(&out.stderr));
    }
    let metas = check(&[(&legacy, &lo), (&big, &bo), (&deflated, &dout)]);
    assert_eq!(metas[0]["epoch"], "7");
}

#[test]
fn convert_carries_attributed_and_bare_tensors() {
    let tmp = tempfile::tempdir().unwrap();
    let (attrs, bare) = (fixture("attrs.pt"), fixture("bare.pt"));
    let (ao, bo) = (
        tmp.path().join("a.safetensors"),
        tmp.path().join("b.safetensors"),
    );
    let o = tg!("convert", &attrs, &ao);
    assert_eq!(code(&o), 0, "{}", text(&o.stderr));
    // The data is carried, the attribute is reported.
    assert!(
        text(&o.stderr).contains(
            "warning: not carried: noted: Python attributes of the tensor: {'note': 'x'}"
        ),
        "{}",
        text(&o.stderr)
    );
    let o = tg!("convert", &bare, &bo);
    assert_eq!(code(&o), 0, "{}", text(&o.stderr));
    check(&[(&attrs, &ao), (&bare, &bo)]);
}

#[test]
fn convert_refuses_a_malicious_checkpoint_and_writes_nothing() {
    let tmp = tempfile::tempdir().unwrap();
    let fixtures = Path::new(env!("CARGO_MANIFEST_DIR")).join("../tg-scan/tests/fixtures");
    for name in ["torch_zip_malicious.pt", "torch_zip_deflated_malicious.pt"] {
        let output = tmp.path().join("out.safetensors");
        let o = tg!("convert", &fixtures.join(name), &output);
        assert_eq!(code(&o), 1, "{name}: {}", text(&o.stderr));
        assert!(!output.exists(), "{name}: output written");
        assert!(text(&o.stdout).contains("malicious"), "{}", text(&o.stdout));
        assert!(text(&o.stdout).contains("os.system"), "{}", text(&o.stdout));
        assert!(
            text(&o.stderr).contains("refusing to convert"),
            "{}",
            text(&o.stderr)
        );
        // Nothing else appeared in the output folder either (no leftover temp file).
        assert_eq!(fs_err::read_dir(tmp.path()).unwrap().count(), 0);
    }
}

#[test]
fn convert_errors_are_exit_2_and_name_the_file() {
    let tmp = tempfile::tempdir().unwrap();
    let junk = tmp.path().join("notes.txt");
    fs_err::write(&junk, "hello, not a checkpoint\n").unwrap();
    let o = tg!("convert", &junk, &tmp.path().join("x.safetensors"));
    assert_eq!(code(&o), 2);
    assert!(
        text(&o.stderr).contains("notes.txt: not a PyTorch checkpoint or a safetensors file"),
        "{}",
        text(&o.stderr)
    );
    // An existing output is not replaced without --force.
    let existing = tmp.path().join("exists.safetensors");
    fs_err::write(&existing, "keep").unwrap();
    let o = tg!("convert", &fixture("base.pt"), &existing);
    assert_eq!(code(&o), 2);
    assert!(
        text(&o.stderr).contains("pass --force"),
        "{}",
        text(&o.stderr)
    );
    assert_eq!(fs_err::read_to_string(&existing).unwrap(), "keep");
}

#[test]
fn convert_sharded_directory_to_the_transformers_layout() {
    let tmp = tempfile::tempdir().unwrap();
    let input = fixture("sharded");
    let out = tmp.path().join("st");
    let o = tg!("convert", &input, &out);
    assert_eq!(code(&o), 0, "{}", text(&o.stderr));
    let index: Value = serde_json::from_str(
        &fs_err::read_to_string(out.join("model.safetensors.index.json")).unwrap(),
    )
    .unwrap();
    let first = "model-00001-of-00002.safetensors";
    let second = "model-00002-of-00002.safetensors";
    assert_eq!(index["weight_map"]["embed.weight"], first);
    assert_eq!(index["weight_map"]["layer.0.weight"], first);
    assert_eq!(index["weight_map"]["layer.1.weight"], second);
    assert_eq!(index["weight_map"]["head.weight"], second);
    // 8*4*4 + 4*4*2 + 4*4*4 + 2*4*2 bytes.
    assert_eq!(index["metadata"]["total_size"], 128 + 32 + 64 + 16);
    let (s1, s2) = (
        input.join("pytorch_model-00001-of-00002.bin"),
        input.join("pytorch_model-00002-of-00002.bin"),
    );
    check(&[(&s1, &out.join(first)), (&s2, &out.join(second))]);
    let d = tg!("diff", &input, &out);
    assert_eq!(code(&d), 0, "{}", text(&d.stdout));
}

fn diff_json(a: &str, b: &str) -> (i32, Value) {
    let o = tg!("diff", "--format", "json", &fixture(a), &fixture(b));
    assert!(matches!(code(&o), 0 | 1), "{}", text(&o.stderr));
    (code(&o), serde_json::from_str(&text(&o.stdout)).unwrap())
}

fn changed<'a>(report: &'a Value, name: &str) -> &'a Value {
    report["changed"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["name"] == name)
        .unwrap_or_else(|| panic!("{name} not changed in {report}"))
}

#[test]
fn diff_gives_the_expected_numbers() {
    let expect: Value =
        serde_json::from_str(&fs_err::read_to_string(fixture("expect.json")).unwrap()).unwrap();
    let max_abs_w = expect["max_abs_w"].as_f64().unwrap();
    let close = |v: &Value, want: f64| {
        let got = v.as_f64().unwrap_or_else(|| panic!("{v} is not a number"));
        assert!(
            (got - want).abs() <= 1e-9 * want.abs().max(1.0),
            "{got} != {want}"
        );
    };

    let (rc, r) = diff_json("base.pt", "same.pt");
    assert_eq!(rc, 0, "{r}");
    assert_eq!(r["identical"], 2);
    assert_eq!(r["identical_checkpoints"], true);

    let (rc, r) = diff_json("base.pt", "flipped.pt");
    assert_eq!(rc, 1);
    let s = &changed(&r, "w")["stats"];
    close(&s["cosine"], -1.0);
    close(&s["rel_l2"], 2.0);
    close(&s["sign_flip_fraction"], 1.0);
    close(&s["max_abs_diff"], 2.0 * max_abs_w);
    assert_eq!(s["differing"], 64 * 32);
    assert_eq!(r["identical"], 1);
    assert_eq!(r["most_changed"][0], "w");

    let (_, r) = diff_json("base.pt", "scaled.pt");
    let s = &changed(&r, "w")["stats"];
    close(&s["cosine"], 1.0);
    close(&s["rel_l2"], 1.0);
    close(&s["sign_flip_fraction"], 0.0);
    close(&s["max_abs_diff"], max_abs_w);

    let (_, r) = diff_json("base.pt", "changed.pt");
    assert_eq!(r["removed"][0]["name"], "b");
    assert_eq!(r["added"][0]["name"], "c");
    assert_eq!(r["added"][0]["dtype"], "F32");
    let s = &changed(&r, "w")["stats"];
    assert_eq!(s["nan_a"], 0);
    assert_eq!(s["nan_b"], 1);
    assert_eq!(s["inf_b"], 1);
    assert_eq!(s["differing"], 2);
    assert_eq!(r["values"][0]["name"], "step");
    assert_eq!(r["values"][0]["a"], "10");
    assert_eq!(r["values"][0]["b"], "11");

    let (_, r) = diff_json("base.pt", "reshaped.pt");
    let w = changed(&r, "w");
    assert_eq!(w["shape_b"], serde_json::json!([32, 64]));
    assert!(w["stats"].is_null());
    let b = changed(&r, "b");
    assert_eq!(
        (b["dtype_a"].as_str(), b["dtype_b"].as_str()),
        (Some("F32"), Some("F64"))
    );
    // Widening f32 to f64 keeps every value: the numbers say so.
    close(&b["stats"]["max_abs_diff"], 0.0);

    // The human report names the most-changed tensors and exits 1.
    let o = tg!("diff", &fixture("base.pt"), &fixture("flipped.pt"));
    assert_eq!(code(&o), 1);
    let h = text(&o.stdout);
    assert!(h.contains("changed  w: "), "{h}");
    assert!(h.contains("cosine=-1.000000"), "{h}");
    assert!(h.contains("sign_flips=100.0000%"), "{h}");
    assert!(h.contains("most changed: w (rel_l2 2.000000)"), "{h}");
}

#[test]
fn diff_errors_are_exit_2() {
    let tmp = tempfile::tempdir().unwrap();
    let o = tg!(
        "diff",
        &tmp.path().join("missing.pt"),
        &tmp.path().join("b.pt")
    );
    assert_eq!(code(&o), 2);
    assert!(
        text(&o.stderr).contains("missing.pt"),
        "{}",
        text(&o.stderr)
    );
}
