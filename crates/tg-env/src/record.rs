//! `*.dist-info/RECORD`: the installer's list of every file it wrote, with hash and size.
//!
//! The format is CSV (PEP 376, the binary distribution format spec): `path,hash,size`, where
//! `hash` is `<algorithm>=<urlsafe base64 digest without padding>` and both `hash` and `size` may
//! be empty (RECORD itself; `.pyc` files compiled at install time). Paths are relative to the
//! site-packages directory holding the `.dist-info` and may climb out of it with `..` (scripts in
//! `bin/`); they are resolved lexically and refused when they leave the installation prefix.

use std::path::{Component, Path, PathBuf};

use base64::Engine;

/// One row of a RECORD.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Entry {
    /// The path as written.
    pub(crate) path: String,
    /// The `algo=digest` field, `None` when empty.
    pub(crate) hash: Option<String>,
    /// The size field, `None` when empty.
    pub(crate) size: Option<String>,
}

/// A decoded RECORD hash.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Hash {
    /// SHA-256, the algorithm every mainstream installer writes.
    Sha256([u8; 32]),
    /// SHA-384 or SHA-512 (allowed by PEP 376, rare): algorithm name and digest.
    OtherSha2(&'static str, Vec<u8>),
}

/// Parse RECORD's CSV (RFC 4180 quoting, `\n` or `\r\n` row ends). Empty rows are skipped.
pub(crate) fn parse(text: &str) -> Vec<Entry> {
    let mut rows = Vec::new();
    let mut fields: Vec<String> = Vec::new();
    let mut field = String::new();
    let mut in_quotes = false;
    let mut chars = text.chars().peekable();
    let mut end_row = |fields: &mut Vec<String>, field: &mut String| {
        fields.push(std::mem::take(field));
        let row = std::mem::take(fields);
        if row.len() == 1 && row[0].is_empty() {
            return;
        }
        let mut it = row.into_iter();
        let path = it.next().unwrap_or_default();
        let nonempty = |s: Option<String>| s.filter(|s| !s.is_empty());
        rows.push(Entry {
            path,
            hash: nonempty(it.next()),
            size: nonempty(it.next()),
        });
    };
    while let Some(c) = chars.next() {
        if in_quotes {
            if c == '"' {
                if chars.peek() == Some(&'"') {
                    chars.next();
                    field.push('"');
                } else {
                    in_quotes = false;
                }
            } else {
                field.push(c);
            }
            continue;
        }
        match c {
            '"' if field.is_empty() => in_quotes = true,
            ',' => fields.push(std::mem::take(&mut field)),
            '\r' if chars.peek() == Some(&'\n') => {}
            '\n' => end_row(&mut fields, &mut field),
            _ => field.push(c),
        }
    }
    if !field.is_empty() || !fields.is_empty() {
        end_row(&mut fields, &mut field);
    }
    rows
}

/// Decode `sha256=<b64>` (or Debian's hex). Padding is tolerated; the digest length must match the algorithm.
pub(crate) fn parse_hash(field: &str) -> Result<Hash, String> {
    let (algo, b64) = field
        .split_once('=')
        .ok_or_else(|| format!("hash field {field:?} has no algorithm"))?;
    let want = match algo {
        "sha256" => 32,
        "sha384" => 48,
        "sha512" => 64,
        other => {
            return Err(format!(
                "hash algorithm {other:?} is not sha256, sha384 or sha512"
            ));
        }
    };
    // Debian's dh-python writes hex digests; the lengths cannot be confused (sha256 is 64 hex
    // characters, 43 base64 characters).
    let digest = if b64.len() == want * 2 && b64.bytes().all(|b| b.is_ascii_hexdigit()) {
        hex::decode(b64).map_err(|e| format!("hash field {field:?} is not hex: {e}"))?
    } else {
        base64::engine::general_purpose::URL_SAFE_NO_PAD
            .decode(b64.trim_end_matches('='))
            .map_err(|e| format!("hash field {field:?} is not urlsafe base64: {e}"))?
    };
    if digest.len() != want {
        return Err(format!(
            "{algo} digest has {} bytes, expected {want}",
            digest.len()
        ));
    }
    Ok(match algo {
        "sha256" => {
            let mut d = [0u8; 32];
            d.copy_from_slice(&digest);
            Hash::Sha256(d)
        }
        "sha384" => Hash::OtherSha2("sha384", digest),
        _ => Hash::OtherSha2("sha512", digest),
    })
}

/// Encode a digest the way RECORD writes it (urlsafe base64, no padding).
pub(crate) fn encode_digest(digest: &[u8]) -> String {
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(digest)
}

/// Resolve a RECORD path against `site` lexically (without following symlinks) and return it
/// only if it stays inside `root`. Absolute paths are accepted under the same rule.
pub(crate) fn resolve(site: &Path, root: &Path, rel: &str) -> Option<PathBuf> {
    if rel.is_empty() || rel.contains('\0') {
        return None;
    }
    let joined = site.join(rel);
    let mut out = PathBuf::new();
    for comp in joined.components() {
        match comp {
            Component::Prefix(_) | Component::RootDir => out.push(comp.as_os_str()),
            Component::CurDir => {}
            Component::ParentDir => {
                if !out.pop() || out.as_os_str().is_empty() {
                    return None;
                }
            }
            Component::Normal(part) => out.push(part),
        }
    }
    (out.starts_with(root) && out != root).then_some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_quoted_and_empty_fields() {
        let text =
            "a/b.py,sha256=AAAA,12\r\n\"we,ird \"\"name\"\".py\",,\nx.dist-info/RECORD,,\n\n";
        let rows = parse(text);
        assert_eq!(rows.len(), 3);
        assert_eq!(rows[0].path, "a/b.py");
        assert_eq!(rows[0].hash.as_deref(), Some("sha256=AAAA"));
        assert_eq!(rows[0].size.as_deref(), Some("12"));
        assert_eq!(rows[1].path, "we,ird \"name\".py");
        assert_eq!(rows[1].hash, None);
        assert_eq!(rows[2].path, "x.dist-info/RECORD");
        assert_eq!(rows[2].size, None);
    }

    #[test]
    fn last_row_without_newline_is_kept() {
        let rows = parse("a.py,sha256=x,1");
        assert_eq!(rows.len(), 1);
        assert_eq!(rows[0].size.as_deref(), Some("1"));
    }

    #[test]
    fn hash_roundtrip_and_rejections() {
        use sha2::Digest;
        let d: [u8; 32] = sha2::Sha256::digest(b"hello").into();
        let field = format!("sha256={}", encode_digest(&d));
        assert!(!field.ends_with('='));
        assert_eq!(parse_hash(&field), Ok(Hash::Sha256(d)));
        // Padded form (some tools write it) decodes to the same digest.
        assert_eq!(parse_hash(&format!("{field}=")), Ok(Hash::Sha256(d)));
        // Debian's hex form.
        assert_eq!(
            parse_hash(&format!("sha256={}", hex::encode(d))),
            Ok(Hash::Sha256(d))
        );
        assert!(parse_hash("md5=XUFAKrxLKna5cZ2REBfFkg").is_err());
        assert!(parse_hash("sha256=AAAA").is_err());
        assert!(parse_hash("sha256").is_err());
    }

    #[test]
    fn resolves_scripts_and_refuses_escapes() {
        let root = Path::new("/venv");
        let site = Path::new("/venv/lib/python3.11/site-packages");
        assert_eq!(
            resolve(site, root, "../../../bin/pip"),
            Some(PathBuf::from("/venv/bin/pip"))
        );
        assert_eq!(
            resolve(site, root, "./pkg/./a.py"),
            Some(PathBuf::from("/venv/lib/python3.11/site-packages/pkg/a.py"))
        );
        assert_eq!(resolve(site, root, "../../../../etc/passwd"), None);
        assert_eq!(resolve(site, root, "../../../../venv2/x"), None);
        assert_eq!(resolve(site, root, "/etc/passwd"), None);
        assert_eq!(resolve(site, root, "../../.."), None);
        assert_eq!(
            resolve(site, root, "/venv/bin/tool"),
            Some(PathBuf::from("/venv/bin/tool"))
        );
    }
}
