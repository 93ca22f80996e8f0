//! skops (`skops.io`): a zip whose `schema.json` describes every object as a node with a
//! `__module__`, a `__class__` and a `__loader__` (the node kind that rebuilds it).
//!
//! skops refuses to rebuild types outside its trusted defaults unless the caller passes them
//! in `trusted`, so an unknown type alone is a note (the loader itself asks the user). What
//! this module flags is what gets past that check or runs code once trusted: the node kinds
//! behind CVE-2025-54412 (`OperatorFuncNode`, an `operator.attrgetter`/`methodcaller` built
//! from the file) and CVE-2025-54413 (`MethodNode`, attribute access on trusted types) are
//! malicious, and so is any type or function from a known-dangerous module (`os.system`,
//! `builtins.eval`), which users who pass `trusted=get_untrusted_types(...)` would run.

use tg_archive::{ReadAt, ZipArchive};
use tg_report::{Finding, Location, Verdict};

use crate::formats::Outcome;
use crate::json::{Json, obj_get};

/// Rule ids.
pub mod rules {
    /// A node kind that bypasses skops's trust check (CVE-2025-54412, CVE-2025-54413).
    pub const UNSAFE_NODE: &str = "TG-SKOPS-001";
    /// A type or function from a known-dangerous module.
    pub const DANGEROUS_TYPE: &str = "TG-SKOPS-002";
    /// A `schema.json` that cannot be read.
    pub const MALFORMED: &str = "TG-SKOPS-003";
}

/// Largest `schema.json` read.
const MAX_SCHEMA: u64 = 64 << 20;

/// Types skops trusts by default, by module (the whole of scikit-learn, numpy and scipy, and
/// the plain builtin and collections containers).
fn trusted(module: &str, class: &str) -> bool {
    let root = module.split('.').next().unwrap_or(module);
    match root {
        "sklearn" | "numpy" | "scipy" => true,
        "builtins" => matches!(
            class,
            "dict"
                | "list"
                | "tuple"
                | "set"
                | "frozenset"
                | "int"
                | "float"
                | "complex"
                | "str"
                | "bool"
                | "bytes"
                | "bytearray"
                | "slice"
                | "NoneType"
                | "type"
        ),
        "collections" => matches!(class, "OrderedDict" | "defaultdict" | "Counter"),
        _ => false,
    }
}

/// Whether `zip` is a skops archive (`schema.json` at the top level) and what its schema holds.
pub(crate) fn scan_zip<R: ReadAt>(zip: &ZipArchive<R>) -> Option<Outcome> {
    // Python's zipfile keeps the last entry of a repeated name.
    let schema = zip
        .entries()
        .iter()
        .rev()
        .find(|e| e.name == "schema.json")?;
    let mut out = Outcome {
        format: "skops",
        ..Outcome::default()
    };
    let loc = Location::default().within("schema.json");
    let bytes = if schema.uncompressed_size > MAX_SCHEMA {
        Err(format!("schema.json is larger than {MAX_SCHEMA} bytes"))
    } else {
        zip.read(schema).map_err(|e| e.to_string())
    };
    let parsed = bytes
        .as_ref()
        .map_err(Clone::clone)
        .and_then(|b| serde_json::from_slice::<Json<'_>>(b).map_err(|e| e.to_string()));
    match parsed {
        Ok(v) => {
            let mut untrusted = std::collections::BTreeSet::new();
            judge(&v, &loc, &mut out.findings, &mut untrusted);
            if !untrusted.is_empty() {
                let list: Vec<String> = untrusted.into_iter().collect();
                out.notes.push(format!(
                    "skops refuses these types unless the caller trusts them: {}",
                    list.join(", ")
                ));
            }
        }
        Err(e) => out.findings.push(Finding::new(
            rules::MALFORMED,
            Verdict::Inconclusive,
            format!("cannot read the skops schema: {e}"),
            loc,
        )),
    }
    Some(out)
}

fn judge(
    v: &Json<'_>,
    loc: &Location,
    out: &mut Vec<Finding>,
    untrusted: &mut std::collections::BTreeSet<String>,
) {
    match v {
        Json::Obj(map) => {
            let s = |k: &str| obj_get(map, k).and_then(Json::as_str);
            if let (Some(module), Some(class)) = (s("__module__"), s("__class__")) {
                let loader = s("__loader__").unwrap_or("");
                let evidence = || format!("{loader} {module}.{class}");
                let already = |out: &[Finding], evidence: &str| {
                    out.iter().any(|f| f.evidence.as_deref() == Some(evidence))
                };
                if matches!(loader, "OperatorFuncNode" | "MethodNode") {
                    let cve = if loader == "MethodNode" {
                        "CVE-2025-54413"
                    } else {
                        "CVE-2025-54412"
                    };
                    let evidence = evidence();
                    if !already(out, &evidence) {
                        out.push(
                            Finding::new(
                                rules::UNSAFE_NODE,
                                Verdict::Malicious,
                                format!("skops {loader} rebuilds '{module}.{class}', a node kind that gets past skops's trust check ({cve})"),
                                loc.clone(),
                            )
                            .with_evidence(evidence),
                        );
                    }
                } else if let Some(why) = crate::danger::classify(module, class) {
                    let evidence = evidence();
                    if !already(out, &evidence) {
                        out.push(
                            Finding::new(
                                rules::DANGEROUS_TYPE,
                                Verdict::Malicious,
                                format!("skops schema rebuilds '{module}.{class}' ({why})"),
                                loc.clone(),
                            )
                            .with_evidence(evidence),
                        );
                    }
                } else if !trusted(module, class) {
                    untrusted.insert(format!("{module}.{class}"));
                }
            }
            for (_, child) in map {
                judge(child, loc, out, untrusted);
            }
        }
        Json::Arr(items) => {
            for c in items {
                judge(c, loc, out, untrusted);
            }
        }
        _ => {}
    }
}
