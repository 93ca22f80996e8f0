//! The non-pickle format fixtures (`tests/format_fixtures/`, written by
//! `make_format_fixtures.py`): every row of `expected.csv` gets exactly its verdict and its
//! format; hostile inputs (truncations, huge counts, overlapping offsets) never pass as clean;
//! and every parser's fuzz entry point survives deterministic mutations of the fixtures (the
//! YAML configs of `tests/yaml_fixtures/` among them).

use std::path::PathBuf;

use tg_report::{FileReport, Verdict};
use tg_scan::Scanner;

fn dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/format_fixtures")
}

/// `file,expected_verdict,note` rows.
fn rows() -> Vec<(String, Verdict, String)> {
    let text = fs_err::read_to_string(dir().join("expected.csv")).unwrap();
    let mut lines = text.lines();
    assert_eq!(lines.next(), Some("file,expected_verdict,note"));
    lines
        .filter(|l| !l.trim().is_empty())
        .map(|l| {
            let f: Vec<&str> = l.splitn(3, ',').collect();
            assert_eq!(f.len(), 3, "bad row {l}");
            let v = match f[1] {
                "clean" => Verdict::Clean,
                "suspicious" => Verdict::Suspicious,
                "malicious" => Verdict::Malicious,
                "inconclusive" => Verdict::Inconclusive,
                other => panic!("unknown verdict {other} in {l}"),
            };
            (f[0].to_owned(), v, f[2].to_owned())
        })
        .collect()
}

fn describe(r: &FileReport) -> String {
    let f: Vec<String> = r
        .findings
        .iter()
        .map(|f| {
            format!(
                "{} {} {}: {} [{}]",
                f.rule,
                f.verdict,
                f.location.offset.unwrap_or(0),
                f.message,
                f.evidence.clone().unwrap_or_default()
            )
        })
        .collect();
    format!("{} as {}: {:?} notes {:?}", r.verdict, r.format, f, r.notes)
}

/// The format name a fixture must be detected as, from its name.
fn expected_format(file: &str) -> &'static str {
    if file.starts_with("st_") {
        "safetensors"
    } else if file.starts_with("gguf_") {
        "gguf"
    } else if file.starts_with("onnx_") {
        "onnx"
    } else if file.ends_with(".keras") {
        "keras"
    } else if file.ends_with(".h5") {
        "keras-h5"
    } else if file.starts_with("skops_") {
        "skops"
    } else {
        panic!("no format for {file}")
    }
}

#[test]
fn every_format_fixture_gets_its_expected_verdict() {
    let scanner = Scanner::default();
    let rows = rows();
    assert!(rows.len() >= 40, "only {} rows", rows.len());
    let mut wrong = Vec::new();
    for (file, verdict, note) in &rows {
        let r = scanner.scan_path(&dir().join(file));
        if r.verdict != *verdict || r.format != expected_format(file) {
            wrong.push(format!(
                "{file} ({note}): expected {verdict} as {}, got {}",
                expected_format(file),
                describe(&r)
            ));
        }
    }
    assert!(
        wrong.is_empty(),
        "{} wrong:\n{}",
        wrong.len(),
        wrong.join("\n")
    );
}

#[test]
fn every_format_has_a_benign_and_a_malicious_fixture() {
    let rows = rows();
    for prefix in ["st_", "gguf_", "onnx_", "keras_", "skops_"] {
        for v in [Verdict::Clean, Verdict::Malicious] {
            assert!(
                rows.iter()
                    .any(|(f, rv, _)| f.starts_with(prefix) && *rv == v),
                "no {v} fixture for {prefix}"
            );
        }
    }
    // every fixture file on disk is listed
    for e in fs_err::read_dir(dir()).unwrap() {
        let name = e.unwrap().file_name().into_string().unwrap();
        if name.ends_with(".py") || name.ends_with(".md") || name.ends_with(".csv") {
            continue;
        }
        assert!(
            rows.iter().any(|(f, _, _)| *f == name),
            "{name} is not in expected.csv"
        );
    }
}

/// Named findings: the rule that a fixture must raise.
#[test]
fn findings_name_their_rule_and_evidence() {
    let scanner = Scanner::default();
    let cases = [
        (
            "st_overlap.safetensors",
            tg_scan::safetensors_rules::AMBIGUOUS,
            "overlaps",
        ),
        (
            "st_polyglot_pickle.safetensors",
            tg_scan::safetensors_rules::POLYGLOT,
            "pickle",
        ),
        (
            "gguf_ssti_cycler.gguf",
            tg_scan::gguf_rules::TEMPLATE_INJECTION,
            "cycler",
        ),
        (
            "gguf_huge_kv_count.gguf",
            tg_scan::gguf_rules::HOSTILE,
            "metadata count",
        ),
        (
            "gguf_overlapping_tensors.gguf",
            tg_scan::gguf_rules::HOSTILE,
            "overlaps",
        ),
        (
            "onnx_external_nested.onnx",
            tg_scan::onnx_rules::EXTERNAL_DATA_TRAVERSAL,
            "id_rsa",
        ),
        (
            "onnx_custom_domain.onnx",
            tg_scan::onnx_rules::CUSTOM_DOMAIN,
            "com.evil.ops",
        ),
        ("keras_lambda.keras", tg_scan::keras_rules::LAMBDA, "Lambda"),
        (
            "keras_torch_wrapper.keras",
            tg_scan::keras_rules::GADGET,
            "TorchModuleWrapper",
        ),
        (
            "keras_custom_layer.keras",
            tg_scan::keras_rules::CUSTOM_OBJECT,
            "Scale",
        ),
        ("keras_lambda.h5", tg_scan::keras_rules::LAMBDA, "Lambda"),
        (
            "skops_operator_func.skops",
            tg_scan::skops_rules::UNSAFE_NODE,
            "OperatorFuncNode",
        ),
        (
            "skops_os_system.skops",
            tg_scan::skops_rules::DANGEROUS_TYPE,
            "os.system",
        ),
    ];
    for (file, rule, word) in cases {
        let r = scanner.scan_path(&dir().join(file));
        assert!(
            r.findings.iter().any(|f| f.rule == rule
                && (f.message.contains(word)
                    || f.evidence.as_deref().is_some_and(|e| e.contains(word)))),
            "{file}: no {rule} finding naming '{word}': {}",
            describe(&r)
        );
    }
    let r = scanner.scan_path(&dir().join("skops_custom_type.skops"));
    assert!(
        r.notes.iter().any(|n| n.contains("mylib.tools.Helper")),
        "{}",
        describe(&r)
    );
    let r = scanner.scan_path(&dir().join("st_metadata_code.safetensors"));
    assert!(
        r.notes.iter().any(|n| n.contains("never executes")),
        "{}",
        describe(&r)
    );
}

#[test]
fn truncated_files_are_never_clean() {
    let scanner = Scanner::default();
    for (file, from) in [
        ("st_benign.safetensors", 9),
        ("gguf_chatml.gguf", 4),
        ("gguf_no_template.gguf", 4),
    ] {
        let bytes = fs_err::read(dir().join(file)).unwrap();
        for len in from..bytes.len() {
            let r = scanner.scan_bytes(file, &bytes[..len]);
            assert!(
                r.verdict > Verdict::Clean,
                "{file} cut to {len} bytes is {}",
                describe(&r)
            );
        }
    }
    // ONNX has no magic: a cut model is either not ONNX (no loader reads it) or flagged.
    for file in ["onnx_external_absolute.onnx", "onnx_external_subgraph.onnx"] {
        let bytes = fs_err::read(dir().join(file)).unwrap();
        for len in 0..bytes.len() {
            let r = scanner.scan_bytes(file, &bytes[..len]);
            assert!(
                r.format != "onnx" || r.verdict > Verdict::Clean,
                "{file} cut to {len}: {}",
                describe(&r)
            );
        }
    }
}

#[test]
fn huge_declared_sizes_do_not_allocate_or_pass() {
    let scanner = Scanner::default();
    let mut gguf = b"GGUF".to_vec();
    gguf.extend(3u32.to_le_bytes());
    gguf.extend(u64::MAX.to_le_bytes()); // tensors
    gguf.extend(0u64.to_le_bytes());
    let r = scanner.scan_bytes("huge.gguf", &gguf);
    assert_eq!(r.verdict, Verdict::Malicious, "{}", describe(&r));

    // a safetensors header length just under the cap, in a tiny file
    let mut st = 99_999_999u64.to_le_bytes().to_vec();
    st.extend(b"{}");
    let r = scanner.scan_bytes("huge.safetensors", &st);
    assert_eq!(r.verdict, Verdict::Suspicious, "{}", describe(&r));

    // ONNX: a graph field claiming 2^62 bytes
    let mut onnx = vec![0x08, 0x08, 0x3a];
    onnx.extend([0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x40]);
    let r = scanner.scan_bytes("huge.onnx", &onnx);
    assert_ne!(r.format, "onnx", "{}", describe(&r));
}

/// A pickle whose first nine bytes pass for a safetensors header length and `{`: the
/// safetensors view is broken (a 272 MB header in a tiny file), the pickle view runs os.system.
#[test]
fn pickle_posing_as_broken_safetensors_is_malicious() {
    let mut b = b"\x80\x02C\x10".to_vec(); // PROTO 2, SHORT_BINBYTES of 16 bytes
    b.extend(b"\0\0\0\0{\"a\":\"bcdefg"); // bytes 4..20: the rest of the length, a `{`
    b.extend(b"cos\nsystem\n(S'id'\ntR.");
    let r = Scanner::default().scan_bytes("posing.safetensors", &b);
    assert_eq!(r.format, "safetensors", "{}", describe(&r));
    assert_eq!(r.verdict, Verdict::Malicious, "{}", describe(&r));
    assert!(
        r.findings
            .iter()
            .any(|f| f.rule == tg_scan::safetensors_rules::POLYGLOT),
        "{}",
        describe(&r)
    );
}

/// `G` is BINFLOAT: its 8-byte argument swallows `GUF` and the version, and a pickle follows.
#[test]
fn gguf_magic_followed_by_a_pickle_is_flagged_as_a_polyglot() {
    let mut b = b"GGUF\x03\x00\x00\x00\x00".to_vec();
    b.extend(b"cos\nsystem\n(S'id'\ntR.");
    let r = Scanner::default().scan_bytes("posing.gguf", &b);
    assert_eq!(r.format, "gguf", "{}", describe(&r));
    assert!(
        r.findings
            .iter()
            .any(|f| f.rule == tg_scan::gguf_rules::POLYGLOT && f.verdict == Verdict::Malicious),
        "{}",
        describe(&r)
    );
}

#[test]
fn chat_templates_are_judged_by_what_they_reach() {
    use tg_scan::gguf_template_verdict as judge;
    let clean = [
        "{% for m in messages %}{{ m['role'] }}: {{ m['content'] }}\n{% endfor %}",
        "{%- set ns = namespace(found=false) -%}{%- if ns.found %}x{% endif %}",
        "{{ bos_token }}{{ raise_exception('roles must alternate') }}",
        "You are helpful. Answer the request with config files. {{ messages[0].content|trim }}",
        "{# self.__class__ in a comment is never rendered #}{{ x }}",
        "{{ message.content.split('</think>')[-1].lstrip('\\n') }}",
        "{{ tool_call.arguments | tojson(indent=2) }}{{ strftime_now('%d %b %Y') }}",
    ];
    for t in clean {
        assert_eq!(judge(t), Verdict::Clean, "{t}");
    }
    let malicious = [
        "{{ cycler.__init__.__globals__.os.popen('id').read() }}",
        "{{ joiner.__init__.__globals__ }}",
        "{{ namespace.__init__.__globals__ }}",
        "{{ self._TemplateReference__context }}",
        "{{ lipsum.__globals__ }}",
        "{{ url_for.__globals__ }}",
        "{{ get_flashed_messages.__globals__ }}",
        "{{ config.items() }}",
        "{{ request.application }}",
        "{{ ''|attr('__class__') }}",
        "{{ x|attr(y) }}",
        "{{ ''['\\x5f\\x5fclass\\x5f\\x5f'] }}",
        "{{ ().__class__.__mro__[1].__subclasses__() }}",
        "{% set s = x.__builtins__ %}",
        "{{ foo.__import__('os') }}",
        "{{ os.popen('id') }}",
        "{{ eval('1') }}",
        "{{ exec }}",
        "{{ range.__init__ }}",
        "{%- if true -%}{{ ''.__class__ }}{%- endif %}",
        "{{ '}}' ~ x.__class__ }}",
    ];
    for t in malicious {
        assert_eq!(judge(t), Verdict::Malicious, "{t}");
    }
    assert_eq!(judge("{% include 'other.j2' %}"), Verdict::Suspicious);
}

fn mutate(rng: &mut fastrand::Rng, seed: &[u8]) -> Vec<u8> {
    let mut data = seed.to_vec();
    for _ in 0..rng.usize(1..=4) {
        if data.is_empty() {
            break;
        }
        let i = rng.usize(..data.len());
        match rng.u8(..5) {
            0 => data[i] = rng.u8(..),
            1 => data.insert(i, rng.u8(..)),
            2 => {
                data.remove(i);
            }
            3 => {
                // a length-sized field set to an extreme value
                let v = [0u8, 0x7f, 0x80, 0xff][rng.usize(..4)];
                for b in data.iter_mut().skip(i).take(8) {
                    *b = v;
                }
            }
            _ => data.truncate(i),
        }
    }
    data
}

#[test]
fn mutated_format_files_never_panic_or_hang() {
    let mut seeds: Vec<(String, Vec<u8>)> = Vec::new();
    for (file, _, _) in rows() {
        seeds.push((file.clone(), fs_err::read(dir().join(&file)).unwrap()));
    }
    // The YAML configs (`tests/yaml_fixtures/`) and the .nemo tars around them.
    let yaml = dir().with_file_name("yaml_fixtures");
    for entry in fs_err::read_dir(&yaml).unwrap() {
        let name = entry.unwrap().file_name().to_string_lossy().into_owned();
        if name.ends_with(".yaml") || name.ends_with(".nemo") {
            seeds.push((name.clone(), fs_err::read(yaml.join(&name)).unwrap()));
        }
    }
    seeds.sort();
    let scanner = Scanner::default();
    let mut rng = fastrand::Rng::with_seed(0x2545_f491_4f6c_dd1d);
    let start = std::time::Instant::now();
    for round in 0..6_000 {
        let (name, seed) = &seeds[round % seeds.len()];
        let data = mutate(&mut rng, seed);
        if name.starts_with("st_") {
            tg_scan::fuzz_safetensors(&data);
        } else if name.starts_with("gguf_") {
            tg_scan::fuzz_gguf(&data);
        } else if name.starts_with("onnx_") {
            tg_scan::fuzz_onnx(&data);
        } else if name.ends_with(".h5") {
            tg_scan::fuzz_keras_h5(&data);
        } else if name.ends_with(".yaml") {
            tg_scan::fuzz_yaml(&data);
        }
        // the whole scanner too (detection, zip routing for .keras)
        if round % 4 == 0 {
            let _ = scanner.scan_bytes(name, &data);
        }
    }
    assert!(
        start.elapsed().as_secs() < 120,
        "mutation run took {:?}",
        start.elapsed()
    );
}

/// A Keras HDF5 file larger than an archive member may be is read in bounded windows, not
/// refused as inconclusive: a Lambda config 100 MiB in, in a sparse 1.1 GiB file, is found.
#[test]
fn a_large_hdf5_file_is_read_in_windows() {
    use std::io::{Seek, SeekFrom, Write};
    let tmp = tempfile::tempdir().unwrap();
    let path = tmp.path().join("big.h5");
    let mut f = fs_err::File::create(&path).unwrap();
    f.write_all(b"\x89HDF\r\n\x1a\n\0\0\0\0").unwrap();
    f.seek(SeekFrom::Start(100 << 20)).unwrap();
    f.write_all(
        br#"{"class_name": "Sequential", "config": {"layers": [{"class_name": "Lambda", "config": {"function": ["4wEAAAAAAAAA", null, null]}}]}}"#,
    )
    .unwrap();
    f.set_len(1100 << 20).unwrap();
    drop(f);
    let r = Scanner::default().scan_path(&path);
    assert_eq!(r.verdict, Verdict::Malicious, "{}", describe(&r));
    assert_eq!(r.format, "keras-h5", "{}", describe(&r));
    // Every byte once (and the sniffed head): overlaps between windows are not counted twice.
    assert!(
        (1100 << 20..(1100 << 20) + 4096).contains(&r.bytes_read),
        "{} bytes read",
        r.bytes_read
    );
    assert!(
        r.findings
            .iter()
            .any(|f| f.location.offset == Some(100 << 20)),
        "{}",
        describe(&r)
    );
}

/// `Scanner::warm_up` runs the real scanner over its built-in checkpoint: it is found clean and
/// read as a PyTorch checkpoint (a sample the scanner stopped reading would warm nothing up).
#[test]
fn warm_up_scans_a_clean_pytorch_checkpoint() {
    let r = Scanner::default().warm_up();
    assert_eq!(r.format, "pytorch-zip", "{}", describe(&r));
    assert_eq!(r.verdict, Verdict::Clean, "{}", describe(&r));
    assert!(r.findings.is_empty(), "{}", describe(&r));
}
