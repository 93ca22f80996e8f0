//! Turning one symbolic pickle run into findings under a policy.

use std::collections::{HashMap, HashSet};

use tg_pickle::{Analysis, Call, End, Event, Id, Value, names};
use tg_report::{Finding, Location, Verdict};

use crate::danger;
use crate::policy::{Kind, Policy};

/// Rule identifiers for pickle findings.
pub mod rules {
    /// A known-dangerous global is imported (and usually called).
    pub const DANGEROUS_GLOBAL: &str = "TG-PKL-001";
    /// A global outside the active policy.
    pub const GLOBAL_OUTSIDE_POLICY: &str = "TG-PKL-002";
    /// A global that cannot be resolved statically (`STACK_GLOBAL` on computed values, `EXT*`).
    pub const UNRESOLVED_GLOBAL: &str = "TG-PKL-003";
    /// An allowlisted global used beyond its kind (a constant called, a constructor given a
    /// non-class, the result of a call called again).
    pub const MISUSED_GLOBAL: &str = "TG-PKL-004";
    /// `BUILD`, `SETITEM` or `APPEND` that changes an imported module-level object.
    pub const MUTATED_GLOBAL: &str = "TG-PKL-005";
    /// An opcode `torch.load(weights_only=True)` refuses (weights-only policy).
    pub const OPCODE_OUTSIDE_POLICY: &str = "TG-PKL-006";
    /// An opcode straddles the end of its `FRAME`.
    pub const FRAME_OVERRUN: &str = "TG-PKL-007";
    /// The stream fails after code was imported or called: the loader runs everything before.
    pub const BROKEN_AFTER_CODE: &str = "TG-PKL-010";
    /// A resource cap was reached.
    pub const LIMIT: &str = "TG-PKL-011";
    /// A persistent id that is not a torch storage reference.
    pub const PERSISTENT_ID: &str = "TG-PKL-013";
}

/// What kind of loader reads this stream.
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct Context {
    /// `torch.load`/`torch.jit.load`: persistent ids are storage references.
    pub torch: bool,
    /// TorchScript's unpickler: `__torch__.*` names are compiled TorchScript classes, not Python.
    pub torchscript: bool,
}

/// The result of judging one stream.
#[derive(Debug, Default)]
pub(crate) struct Judged {
    pub findings: Vec<Finding>,
    /// Storage keys referenced through `('storage', type, key, location, numel)` ids.
    pub storage_keys: HashSet<String>,
    /// Notes that do not change the verdict.
    pub notes: Vec<String>,
}

/// Loaders whose bytes argument is itself a pickle: followed, not just denied.
const NESTED_LOADERS: &[&str] = &[
    "pickle.loads",
    "_pickle.loads",
    "cPickle.loads",
    "dill.loads",
    "dill._dill.loads",
    "cloudpickle.loads",
    "numpy.loads",
    "torch.storage._load_from_bytes",
    "joblib.numpy_pickle.loads",
];

pub(crate) fn judge(
    a: &Analysis,
    input: &[u8],
    policy: &Policy,
    ctx: Context,
    depth: u32,
    follow: &dyn Fn(&[u8], u32) -> Vec<Finding>,
) -> Judged {
    let mut out = Judged::default();
    let arena = &a.arena;
    // id of each imported global → (resolved full name, allowlist kind)
    let mut globals: HashMap<Id, (String, Option<Kind>)> = HashMap::new();
    let mut reported: HashSet<String> = HashSet::new();
    let mut opcodes_reported: HashSet<&'static str> = HashSet::new();
    // First call of each callee, for evidence.
    let mut first_call: HashMap<Id, Id> = HashMap::new();
    for e in &a.events {
        if let Event::Call { id, .. } = e
            && let Some(Call { callee, .. }) = arena.as_call(*id)
        {
            first_call.entry(*callee).or_insert(*id);
        }
    }
    let evidence_for = |gid: Id| -> String {
        match first_call.get(&gid) {
            Some(call) => arena.render(*call, input),
            None => format!("{} (imported, not called)", arena.render(gid, input)),
        }
    };

    for e in &a.events {
        match e {
            Event::Import { id, offset, opcode } => {
                let Some((module, name)) = arena.global_name(*id) else { continue };
                let (rm, rn) = names::resolve(module, name, a.proto);
                let full = format!("{rm}.{rn}");
                let danger = danger::classify(module, name).or_else(|| danger::classify(&rm, &rn));
                let kind = if danger.is_some() { None } else { lookup(policy, ctx, &full) };
                globals.insert(*id, (full.clone(), kind));
                if let Some(why) = danger {
                    if reported.insert(full.clone()) {
                        out.findings.push(
                            Finding::new(
                                rules::DANGEROUS_GLOBAL,
                                Verdict::Malicious,
                                format!("{} imports {full}, which {why}", opcode.name()),
                                Location::at(*offset),
                            )
                            .with_evidence(evidence_for(*id)),
                        );
                    }
                } else if kind.is_none() && reported.insert(full.clone()) {
                    out.findings.push(
                        Finding::new(
                            rules::GLOBAL_OUTSIDE_POLICY,
                            Verdict::Suspicious,
                            format!("{} imports {full}, which the {} policy does not allow", opcode.name(), policy.name()),
                            Location::at(*offset),
                        )
                        .with_evidence(evidence_for(*id)),
                    );
                }
            }
            Event::Call { id, offset } => {
                let Some(Call { callee, args, .. }) = arena.as_call(*id) else { continue };
                let args_items = arena.as_tuple(*args).unwrap_or(&[]);
                match arena.get(*callee) {
                    Value::Global { .. } => {
                        let Some((full, kind)) = globals.get(callee) else { continue };
                        match kind {
                            Some(Kind::Constant) => out.findings.push(
                                Finding::new(
                                    rules::MISUSED_GLOBAL,
                                    Verdict::Suspicious,
                                    format!("{full} is allowed only as a constant but is called"),
                                    Location::at(*offset),
                                )
                                .with_evidence(arena.render(*id, input)),
                            ),
                            Some(Kind::Constructor) => {
                                let cls = args_items.first().copied();
                                let cls_kind = cls.and_then(|c| globals.get(&c));
                                let ok = matches!(cls_kind, Some((_, Some(Kind::Class))));
                                let already_flagged = matches!(cls_kind, Some((_, None)));
                                if !ok && !already_flagged {
                                    out.findings.push(
                                        Finding::new(
                                            rules::MISUSED_GLOBAL,
                                            Verdict::Suspicious,
                                            format!("{full} constructs something that is not an allowlisted class"),
                                            Location::at(*offset),
                                        )
                                        .with_evidence(arena.render(*id, input)),
                                    );
                                }
                            }
                            _ => {}
                        }
                        if NESTED_LOADERS.contains(&full.as_str()) && depth < 4
                            && let Some(bytes) = args_items.first().and_then(|b| constant_bytes(a, input, *b)) {
                                for f in follow(&bytes, depth + 1) {
                                    out.findings.push(f.within(&format!("nested pickle passed to {full} at offset {offset}")));
                                }
                            }
                    }
                    Value::Call { .. } | Value::Persistent(_) => out.findings.push(
                        Finding::new(
                            rules::MISUSED_GLOBAL,
                            Verdict::Suspicious,
                            "calls an object that was itself produced at load time",
                            Location::at(*offset),
                        )
                        .with_evidence(arena.render(*id, input)),
                    ),
                    _ => {}
                }
            }
            Event::Build { target, offset, .. } | Event::Mutate { target, offset, .. } => {
                let verb = match e {
                    Event::Build { .. } => "BUILD",
                    Event::Mutate { opcode, .. } => opcode.name(),
                    _ => "",
                };
                match arena.get(*target) {
                    Value::Global { .. } | Value::UnknownGlobal { .. } => out.findings.push(
                        Finding::new(
                            rules::MUTATED_GLOBAL,
                            Verdict::Malicious,
                            format!("{verb} changes the imported object {} itself", arena.render(*target, input)),
                            Location::at(*offset),
                        ),
                    ),
                    Value::Call(call) => {
                        let callee = &call.callee;
                        let kind = globals.get(callee).and_then(|g| g.1);
                        if matches!(e, Event::Mutate { .. }) && !matches!(kind, Some(Kind::Class | Kind::Constructor)) {
                            let flagged = globals.get(callee).is_some_and(|g| g.1.is_none());
                            if !flagged {
                                out.findings.push(Finding::new(
                                    rules::MISUSED_GLOBAL,
                                    Verdict::Suspicious,
                                    format!("{verb} runs a container method of {}", arena.render(*callee, input)),
                                    Location::at(*offset),
                                ));
                            }
                        }
                    }
                    _ => {}
                }
            }
            Event::Persistent { pid, offset } => {
                let key = storage_key(a, *pid);
                match (ctx.torch, key) {
                    (true, Some(k)) => {
                        out.storage_keys.insert(k);
                    }
                    (false, _) => out.notes.push(format!(
                        "persistent id {} at offset {offset}: pickle.load raises here without a persistent_load",
                        arena.render(*pid, input)
                    )),
                    _ => out.findings.push(
                        Finding::new(
                            rules::PERSISTENT_ID,
                            Verdict::Suspicious,
                            "persistent id is not a torch storage reference",
                            Location::at(*offset),
                        )
                        .with_evidence(arena.render(*pid, input)),
                    ),
                }
            }
            Event::Extension { code, offset, .. } => out.findings.push(
                Finding::new(
                    rules::UNRESOLVED_GLOBAL,
                    Verdict::Suspicious,
                    format!("EXT opcode takes global number {code} from the copyreg extension registry"),
                    Location::at(*offset),
                ),
            ),
            Event::DynamicGlobal { offset, .. } => out.findings.push(Finding::new(
                rules::UNRESOLVED_GLOBAL,
                Verdict::Suspicious,
                "STACK_GLOBAL takes its module or name from values computed at load time",
                Location::at(*offset),
            )),
            Event::FrameOverrun { offset, frame_end } => out.findings.push(Finding::new(
                rules::FRAME_OVERRUN,
                Verdict::Suspicious,
                format!("opcode straddles the end of its FRAME at offset {frame_end}: parsers that honour frames read a different stream"),
                Location::at(*offset),
            )),
            Event::Opcode { opcode, offset }
                if opcodes_reported.insert(opcode.name()) => {
                    out.findings.push(Finding::new(
                        rules::OPCODE_OUTSIDE_POLICY,
                        Verdict::Suspicious,
                        format!("opcode {} is refused by torch.load(weights_only=True)", opcode.name()),
                        Location::at(*offset),
                    ));
                }
            _ => {}
        }
    }

    for (at, inner) in &a.nested {
        let j = judge(inner, input, policy, ctx, depth + 1, follow);
        out.findings.extend(j.findings);
        crate::formats::merge_keys(&mut out.storage_keys, j.storage_keys);
        let _ = at;
    }

    match &a.end {
        End::Stop { .. } | End::NeedMore => {}
        End::Error { offset, message } => {
            if a.touched_code() {
                out.findings.push(Finding::new(
                    rules::BROKEN_AFTER_CODE,
                    Verdict::Inconclusive,
                    format!("the pickle stream fails here ({message}) after importing or calling: a loader runs everything before this point"),
                    Location::at(*offset),
                ));
            } else {
                out.notes.push(format!("the pickle stream fails at offset {offset} ({message}) before importing anything"));
            }
        }
        End::Limit { offset, which } => out.findings.push(Finding::new(
            rules::LIMIT,
            Verdict::Inconclusive,
            format!("analysis stopped: the {which} limit was reached"),
            Location::at(*offset),
        )),
    }
    out
}

fn lookup(policy: &Policy, ctx: Context, full: &str) -> Option<Kind> {
    if ctx.torchscript {
        // torch/csrc/jit/serialization/unpickler.cpp resolves these itself: `__torch__.*` are
        // compiled TorchScript classes and `torch.jit._pickle.*` are list/tensor builders.
        if full.starts_with("__torch__.") {
            return Some(Kind::Class);
        }
        if full.starts_with("torch.jit._pickle.") && !full.contains("__") {
            return Some(Kind::Function);
        }
    }
    policy.lookup(full).map(|(k, _)| k)
}

/// `('storage', storage_type, key, location, numel)` → key.
fn storage_key(a: &Analysis, pid: Id) -> Option<String> {
    let items = a.arena.as_tuple(pid)?;
    if a.arena.as_str(*items.first()?)? != "storage" {
        return None;
    }
    match a.arena.get(*items.get(2)?) {
        Value::Str(s) => Some(s.clone()),
        Value::Int(i) => Some(i.to_string()),
        _ => None,
    }
}

/// The bytes of a constant argument: `bytes`, a latin-1 `str`, or `_codecs.encode(str, enc)`.
fn constant_bytes(a: &Analysis, input: &[u8], id: Id) -> Option<Vec<u8>> {
    match a.arena.get(id) {
        Value::Bytes { .. } => a.arena.as_bytes(id, input).map(<[u8]>::to_vec),
        Value::Str(s) => Some(s.chars().map(|c| c as u32 as u8).collect()),
        Value::Call(call) => {
            let Call { callee, args, .. } = &**call;
            let (m, n) = a.arena.global_name(*callee)?;
            let items = a.arena.as_tuple(*args)?;
            let s = a.arena.as_str(*items.first()?)?;
            match (m, n) {
                ("_codecs", "encode") | ("codecs", "encode") => {
                    Some(s.chars().map(|c| c as u32 as u8).collect())
                }
                ("base64", "b64decode") | ("binascii", "a2b_base64") => b64(s),
                ("builtins", "bytes.fromhex")
                | ("binascii", "unhexlify")
                | ("binascii", "a2b_hex") => hex(s),
                _ => None,
            }
        }
        _ => None,
    }
}

fn b64(s: &str) -> Option<Vec<u8>> {
    let mut out = Vec::new();
    let mut acc = 0u32;
    let mut bits = 0;
    for c in s.bytes() {
        let v = match c {
            b'A'..=b'Z' => c - b'A',
            b'a'..=b'z' => c - b'a' + 26,
            b'0'..=b'9' => c - b'0' + 52,
            b'+' | b'-' => 62,
            b'/' | b'_' => 63,
            b'=' | b'\n' | b'\r' | b' ' => continue,
            _ => return None,
        };
        acc = (acc << 6) | u32::from(v);
        bits += 6;
        if bits >= 8 {
            bits -= 8;
            out.push((acc >> bits) as u8);
            acc &= (1 << bits) - 1;
        }
    }
    Some(out)
}

fn hex(s: &str) -> Option<Vec<u8>> {
    let clean: Vec<u8> = s.bytes().filter(|c| !c.is_ascii_whitespace()).collect();
    if !clean.len().is_multiple_of(2) {
        return None;
    }
    clean
        .chunks(2)
        .map(|p| {
            std::str::from_utf8(p)
                .ok()
                .and_then(|h| u8::from_str_radix(h, 16).ok())
        })
        .collect()
}
