//! YAML configs that loaders turn into objects.
//!
//! Two loaders run code named in a YAML file:
//! - **PyYAML's unsafe loaders** (`yaml.unsafe_load`, `yaml.load(..., Loader=yaml.Loader)`, and
//!   `yaml.full_load` before PyYAML 5.4) build objects from Python tags:
//!   `!!python/object/apply:os.system [id]` calls `os.system`, `python/object/new` calls a
//!   class, `python/object` rebuilds an instance (running its `__setstate__`), and
//!   `python/name` and `python/module` import. `yaml.safe_load` refuses every one of them, so
//!   a file that carries one was written for an unsafe loader. PyTorch Lightning's
//!   `hparams.yaml` carries such tags when the hyperparameters held objects.
//! - **Hydra's `instantiate`** imports the dotted path in every `_target_` key and calls it
//!   with the mapping's other keys. NeMo restores a `.nemo` model (a tar with
//!   `model_config.yaml`) through it, which made `_target_: builtins.exec` code execution
//!   (CVE-2025-23304).
//!
//! YAML has no magic bytes. A file is read as YAML only after the pickle check found no
//! pickle in it, and only when its text holds what either loader acts on (`_target_`, a
//! secondary `!!` tag, a verbatim `!<...>` tag, a `%TAG` directive, or escapes that may spell
//! one); anything else is inert for both. Inside archives, members named `*.yaml`/`*.yml` are
//! read (NeMo finds `model_config.yaml` by name).
//!
//! The parser is `yaml-rust2`, a YAML 1.2 parser: it resolves `%TAG` handles and `%XX` escapes
//! in tags the way PyYAML does. Text it cannot parse is not a config: PyYAML composes a whole
//! document before it builds any object, so it builds nothing from a document it cannot
//! compose either. Tags met before the parse error are judged all the same. Where the two
//! grammars differ (YAML 1.1 against 1.2), PyYAML could read on past a point where this parser
//! stops: that difference is the limit of this check.

use tg_report::{Finding, Location, Verdict};
use yaml_rust2::parser::{Event, Parser, Tag};

use crate::formats::Outcome;

/// Rule ids.
pub mod rules {
    /// A PyYAML Python tag: an object built, called or imported by `yaml.unsafe_load`.
    pub const PYTHON_TAG: &str = "TG-YAML-001";
    /// A Hydra `_target_`: a callable that `instantiate` imports and calls.
    pub const HYDRA_TARGET: &str = "TG-YAML-002";
}

/// Largest text read as YAML; configs are kilobytes.
pub(crate) const MAX_YAML: u64 = 16 << 20;

/// The tag prefix PyYAML's `!!` stands for.
const CORE: &str = "tag:yaml.org,2002:";

/// Python tags that only build plain data (`yaml.full_load` accepts them too).
const DATA_KINDS: &[&str] = &[
    "none", "bool", "str", "unicode", "bytes", "int", "long", "float", "complex", "list", "tuple",
    "dict",
];

/// Hydra functions that import and call whatever name they are given: as a `_target_`,
/// each is a way to any callable, like `pkgutil.resolve_name` in a pickle.
const RESOLVERS: &[&str] = &[
    "hydra.utils.instantiate",
    "hydra.utils.call",
    "hydra.utils.get_method",
    "hydra.utils.get_class",
    "hydra.utils.get_object",
    "hydra._internal.utils._locate",
    "hydra._internal.instantiate._instantiate2.instantiate",
];

/// Packages whose classes NeMo, Lightning and Hydra configs instantiate. A `_target_` in one
/// of them is clean unless it is a known gadget (checked first); anything else is suspicious:
/// a call into code this scan cannot judge.
const KNOWN_ROOTS: &[&str] = &[
    "nemo",
    "nemo_text_processing",
    "megatron",
    "apex",
    "torch",
    "torchaudio",
    "torchvision",
    "torchmetrics",
    "lightning",
    "lightning_fabric",
    "pytorch_lightning",
    "omegaconf",
    "transformers",
    "lhotse",
];

/// The last parts of a target that load another model or checkpoint (a pickle, or remote
/// code with `trust_remote_code`): safe classes, unsafe calls.
const LOADERS: &[&str] = &[
    "from_pretrained",
    "restore_from",
    "load_from_checkpoint",
    "load",
];

/// Whether an archive member's name says YAML.
pub(crate) fn is_yaml_name(name: &str) -> bool {
    let ext = name.rsplit_once('.').map_or("", |(_, ext)| ext);
    ext.eq_ignore_ascii_case("yaml") || ext.eq_ignore_ascii_case("yml")
}

/// Whether `text` is worth parsing as YAML: it holds something a loader acts on, or escapes
/// (a double-quoted `"\x5ftarget_"` is a `_target_` key once parsed) in a file small enough
/// to parse whatever it is.
fn triggers(text: &str) -> bool {
    text.contains("_target_")
        || text.contains("!!")
        || text.contains("!<")
        || text.contains("%TAG")
        || (text.len() <= MAX_ESCAPED && text.contains('\\'))
}

/// Largest text parsed only because it has escapes (a tokenizer's JSON is full of them).
const MAX_ESCAPED: usize = 1 << 20;

/// The text of a YAML file as PyYAML decodes bytes: UTF-8 (a BOM dropped) or UTF-16 with a BOM.
fn decode(bytes: &[u8]) -> Option<std::borrow::Cow<'_, str>> {
    let utf16 = |big: bool| {
        let units = bytes[2..].chunks_exact(2).map(|c| {
            let pair = [c[0], c[1]];
            if big {
                u16::from_be_bytes(pair)
            } else {
                u16::from_le_bytes(pair)
            }
        });
        char::decode_utf16(units)
            .collect::<Result<String, _>>()
            .ok()
            .map(std::borrow::Cow::Owned)
    };
    match bytes {
        [0xff, 0xfe, ..] => utf16(false),
        [0xfe, 0xff, ..] => utf16(true),
        [0xef, 0xbb, 0xbf, rest @ ..] => std::str::from_utf8(rest).ok().map(Into::into),
        _ => std::str::from_utf8(bytes).ok().map(Into::into),
    }
}

/// The findings for `bytes` read as YAML, or `None` when they are not YAML text that either
/// loader would act on.
pub(crate) fn scan(bytes: &[u8]) -> Option<Outcome> {
    let text = decode(bytes)?;
    if text.contains('\0') || !triggers(&text) {
        return None;
    }
    let mut walk = Walk::default();
    let mut parser = Parser::new_from_str(&text);
    let parsed = loop {
        match parser.next_token() {
            Ok((Event::StreamEnd, _)) => break Ok(()),
            Ok((event, mark)) => walk.event(event, mark.line()),
            Err(e) => break Err(e),
        }
    };
    let mut out = Outcome {
        format: "yaml",
        ..Outcome::default()
    };
    if let Err(e) = parsed {
        // Not YAML here. PyYAML composes a whole document before it builds any object, so a
        // document that does not parse builds nothing; tags met before the error are judged
        // all the same, in case PyYAML reads on where this parser stops.
        if walk.findings.is_empty() {
            return None;
        }
        out.notes.push(format!(
            "does not parse as YAML past this point ({e}); the tags before it are judged"
        ));
    } else if walk.targets == 0 && walk.python_tags == 0 {
        // YAML (or text that reads as a YAML scalar) with nothing either loader acts on.
        return None;
    }
    if walk.targets > 0 {
        out.notes.push(format!(
            "{} Hydra `_target_` key(s): each is imported and called by `hydra.utils.instantiate`",
            walk.targets
        ));
    }
    out.findings.append(&mut walk.findings);
    Some(out)
}

/// What a mapping or sequence being walked expects next.
enum Frame {
    /// A mapping: whether the next node is a key, and whether the value being waited for
    /// belongs to a `_target_` key.
    Map {
        key_next: bool,
        target_value: bool,
    },
    Seq,
}

#[derive(Default)]
struct Walk {
    frames: Vec<Frame>,
    /// Scalars with an anchor, so that `_target_: *name` and `*name: ...` are judged too.
    anchored: std::collections::HashMap<usize, String>,
    findings: Vec<Finding>,
    targets: usize,
    /// Python tags of any kind, plain data included.
    python_tags: usize,
}

impl Walk {
    fn event(&mut self, event: Event, line: usize) {
        match event {
            Event::Scalar(value, _, anchor, tag) => {
                self.tag(tag.as_ref(), line);
                if anchor > 0 {
                    self.anchored.insert(anchor, value.clone());
                }
                self.node(Some(&value), line);
            }
            Event::Alias(anchor) => {
                let value = self.anchored.get(&anchor).cloned();
                self.node(value.as_deref(), line);
            }
            Event::SequenceStart(_, tag) => {
                self.tag(tag.as_ref(), line);
                self.open(line);
                self.frames.push(Frame::Seq);
            }
            Event::MappingStart(_, tag) => {
                self.tag(tag.as_ref(), line);
                self.open(line);
                self.frames.push(Frame::Map {
                    key_next: true,
                    target_value: false,
                });
            }
            Event::SequenceEnd | Event::MappingEnd => {
                self.frames.pop();
                self.done();
            }
            _ => {}
        }
    }

    /// A scalar or alias (`value`, when known) in the current container.
    fn node(&mut self, value: Option<&str>, line: usize) {
        if self.is_target_value(value) {
            match value {
                Some(v) => self.target(v, line),
                None => self.target_not_string(line),
            }
        }
        self.done();
    }

    /// A mapping or sequence starts in the current container.
    fn open(&mut self, line: usize) {
        if self.is_target_value(None) {
            self.target_not_string(line);
        }
    }

    /// Whether the node that starts now is the value of a `_target_` key; a key node
    /// (`value` is its text when it is a scalar) says whether the next value is one.
    fn is_target_value(&mut self, value: Option<&str>) -> bool {
        let Some(Frame::Map {
            key_next,
            target_value,
        }) = self.frames.last_mut()
        else {
            return false;
        };
        if *key_next {
            *target_value = value == Some("_target_");
            return false;
        }
        let is = std::mem::take(target_value);
        self.targets += usize::from(is);
        is
    }

    /// A node of the current container is complete: a mapping's key is followed by its value.
    fn done(&mut self) {
        if let Some(Frame::Map { key_next, .. }) = self.frames.last_mut() {
            *key_next = !*key_next;
        }
    }

    fn target(&mut self, value: &str, line: usize) {
        let value = value.trim();
        let (module, name) = value.rsplit_once('.').unwrap_or((value, ""));
        let root = value.split('.').next().unwrap_or(value);
        let (verdict, why): (Verdict, std::borrow::Cow<'_, str>) = if value.contains("${") {
            (
                Verdict::Suspicious,
                "an interpolation chooses the callable when the config is resolved".into(),
            )
        } else if RESOLVERS.contains(&value) {
            (
                Verdict::Malicious,
                "it imports and calls whatever name it is given".into(),
            )
        } else if let Some(reason) = crate::danger::classify(module, name) {
            (Verdict::Malicious, format!("it {reason}").into())
        } else if LOADERS.contains(&name) {
            (
                Verdict::Suspicious,
                "it loads another model or checkpoint, which may run code of its own".into(),
            )
        } else if KNOWN_ROOTS.contains(&root) && !name.is_empty() {
            return;
        } else {
            (
                Verdict::Suspicious,
                "it is outside the packages model configs instantiate, so the call runs code this scan does not judge".into(),
            )
        };
        self.findings.push(
            Finding::new(
                rules::HYDRA_TARGET,
                verdict,
                format!(
                    "line {line}: `_target_: {value}` is imported and called by Hydra's instantiate (NeMo restores models through it, CVE-2025-23304): {why}"
                ),
                Location::default(),
            )
            .with_evidence(format!("_target_: {value}")),
        );
    }

    fn target_not_string(&mut self, line: usize) {
        self.findings.push(Finding::new(
            rules::HYDRA_TARGET,
            Verdict::Suspicious,
            format!("line {line}: a `_target_` whose value is not a plain string: what Hydra calls cannot be judged"),
            Location::default(),
        ));
    }

    fn tag(&mut self, tag: Option<&Tag>, line: usize) {
        let Some(tag) = tag else { return };
        let full = format!("{}{}", tag.handle, tag.suffix);
        let Some(kind) = full
            .strip_prefix(CORE)
            .and_then(|t| t.strip_prefix("python/"))
        else {
            return;
        };
        self.python_tags += 1;
        if DATA_KINDS.contains(&kind) {
            return;
        }
        let (action, name) = match kind.split_once(':') {
            Some(("object/apply", name)) => ("calls", name),
            Some(("object/new", name)) => ("creates an instance of (calling its __new__)", name),
            Some(("object", name)) => ("rebuilds an instance of (running its __setstate__)", name),
            Some(("name", name)) => ("imports", name),
            Some(("module", name)) => ("imports the module", name),
            _ => ("builds an unknown Python kind", kind),
        };
        let (module, attr) = name.rsplit_once('.').unwrap_or((name, ""));
        let (verdict, why) = match crate::danger::classify(module, attr) {
            Some(reason) => (Verdict::Malicious, format!(": it {reason}")),
            None => (Verdict::Suspicious, String::new()),
        };
        self.findings.push(
            Finding::new(
                rules::PYTHON_TAG,
                verdict,
                format!(
                    "line {line}: `!!python/{kind}`: yaml.unsafe_load {action} `{name}`{why} (yaml.safe_load refuses the file)"
                ),
                Location::default(),
            )
            .with_evidence(format!("!!python/{kind}")),
        );
    }
}

/// Fuzzing entry point: the YAML reader on arbitrary bytes.
#[doc(hidden)]
pub fn fuzz_yaml(data: &[u8]) {
    let _ = scan(data);
}

#[cfg(test)]
mod tests {
    use super::*;

    fn verdicts(text: &str) -> Vec<(String, Verdict)> {
        scan(text.as_bytes())
            .map(|o| {
                o.findings
                    .iter()
                    .map(|f| (f.rule.to_string(), f.verdict))
                    .collect()
            })
            .unwrap_or_default()
    }

    #[test]
    fn python_tags_are_judged_by_what_they_name() {
        assert_eq!(
            verdicts("a: !!python/object/apply:os.system [id]\n"),
            [(rules::PYTHON_TAG.into(), Verdict::Malicious)]
        );
        assert_eq!(
            verdicts("a: !!python/object:argparse.Namespace {lr: 0.1}\n"),
            [(rules::PYTHON_TAG.into(), Verdict::Suspicious)]
        );
        assert!(verdicts("a: !!python/tuple [1, 2]\nb: !!str x\n").is_empty());
    }

    /// The verdict of the first finding for each text.
    fn first_verdicts(cases: &[(&str, Verdict)]) {
        for (text, verdict) in cases {
            assert_eq!(verdicts(text)[0].1, *verdict, "{text}");
        }
    }

    #[test]
    fn tag_handles_and_escapes_resolve_like_pyyaml() {
        first_verdicts(&[
            (
                "%TAG !p! tag:yaml.org,2002:python/\n---\na: !p!object/apply:os.system [id]\n",
                Verdict::Malicious,
            ),
            (
                "a: !!pyth%6Fn/object/apply:subprocess.check_output [[id]]\n",
                Verdict::Malicious,
            ),
            (
                "a: !<tag:yaml.org,2002:python/name:builtins.eval> x\n",
                Verdict::Malicious,
            ),
        ]);
    }

    #[test]
    fn hydra_targets_are_judged_wherever_they_are() {
        let benign = "model:\n  encoder:\n    _target_: nemo.collections.asr.modules.ConformerEncoder\n  optim:\n    _target_: torch.optim.AdamW\n";
        assert!(verdicts(benign).is_empty());
        let exec = "model:\n  _target_: builtins.exec\n  _args_: [\"import os\"]\n";
        assert_eq!(
            verdicts(exec),
            [(rules::HYDRA_TARGET.into(), Verdict::Malicious)]
        );
        first_verdicts(&[
            // an escaped key, an alias, a resolver
            (
                "m: {\"\\x5ftarget_\": os.system, command: id}\n",
                Verdict::Malicious,
            ),
            (
                "x: &t subprocess.Popen\nm:\n  _target_: *t\n",
                Verdict::Malicious,
            ),
            (
                "m:\n  _target_: hydra.utils.get_method\n  path: os.system\n",
                Verdict::Malicious,
            ),
            // a loader, an unknown package, a target that is not a string
            (
                "m:\n  _target_: transformers.AutoModel.from_pretrained\n  trust_remote_code: true\n",
                Verdict::Suspicious,
            ),
            ("m:\n  _target_: mylab.models.Net\n", Verdict::Suspicious),
            ("m:\n  _target_: {a: b}\n", Verdict::Suspicious),
        ]);
        // A value that merely says `_target_` is not a key.
        assert!(verdicts("note: _target_\nlist: [_target_, os.system]\n").is_empty());
    }

    #[test]
    fn text_that_no_loader_acts_on_is_left_alone() {
        assert!(scan(b"lr: 0.1\nname: x\n").is_none());
        assert!(scan(b"# README\nHello!! world\n\x00").is_none());
        assert!(scan(b"Hello!! a README that reads as one YAML scalar\n").is_none());
        assert!(scan(&[0xff, 0xfe, 0x00, 0xd8]).is_none());
        // Text that is not YAML is not a config, even when it mentions a tag...
        assert!(
            scan(b"\"\"\"Writes `!!python/object/apply:os.system`.\"\"\"\nimport yaml\n").is_none()
        );
        // ...but a tag before the point where parsing stops is judged.
        let broken = verdicts("a: !!python/object/apply:os.system [id]\nb: - : : [\n");
        assert_eq!(broken, [(rules::PYTHON_TAG.into(), Verdict::Malicious)]);
    }

    #[test]
    fn utf16_with_a_bom_is_read_like_pyyaml_reads_it() {
        let text = "a: !!python/object/apply:os.system [id]\n";
        let mut bytes = vec![0xff, 0xfe];
        for u in text.encode_utf16() {
            bytes.extend_from_slice(&u.to_le_bytes());
        }
        assert_eq!(
            scan(&bytes).unwrap().findings[0].verdict,
            Verdict::Malicious
        );
    }
}
