//! Recording to the ledger: the one helper every verb calls once it has a verdict.
//!
//! `record` is a no-op unless `--ledger PATH` (or `TRAINGUARD_LEDGER`) is set. The signing key
//! is `--key` for `trainguard ledger`, else `TRAINGUARD_LEDGER_KEY`, else `PATH.key`, created
//! (mode 0600) on first use. Who and where come from the operating system, not from anything the
//! caller passes: the real uid of the process, its name in `/etc/passwd` (falling back to
//! `$USER`), and the host name from `uname`.

use std::path::{Path, PathBuf};

use anyhow::Context as _;
use tg_ledger::{Digest, Entry, Ledger, Receipt, Writer};

/// The environment variable that names the ledger's signing key.
pub(crate) const KEY_ENV: &str = "TRAINGUARD_LEDGER_KEY";

/// Append what a verb did to the ledger named by `ctx.ledger`; do nothing when none is set.
///
/// `digests` are `(algorithm or file, hex)` pairs.
pub(crate) fn record(
    ctx: &crate::Context,
    verb: &str,
    path: &Path,
    digests: &[(String, String)],
    verdict: &str,
) -> anyhow::Result<()> {
    let Some(ledger) = &ctx.ledger else {
        return Ok(());
    };
    append(
        ledger,
        &key_path(ledger, None),
        verb,
        path,
        digests,
        verdict,
    )?;
    Ok(())
}

/// One thing a verb did, for [`record_many`].
pub(crate) struct Record {
    /// The file or directory acted on.
    pub(crate) path: PathBuf,
    /// `(algorithm or file, hex)` pairs.
    pub(crate) digests: Vec<(String, String)>,
    /// The verdict.
    pub(crate) verdict: String,
}

/// Append many entries in one transaction (one signed head per entry, one fsync for all):
/// `scan` of a directory records every file this way. A no-op when no ledger is set.
pub(crate) fn record_many(
    ctx: &crate::Context,
    verb: &str,
    items: &[Record],
) -> anyhow::Result<()> {
    let Some(ledger) = &ctx.ledger else {
        return Ok(());
    };
    if items.is_empty() {
        return Ok(());
    }
    let (user, uid) = who();
    let host = host();
    let entries: Vec<Entry> = items
        .iter()
        .map(|r| Entry {
            time_ms: tg_ledger::now_ms(),
            user: user.clone(),
            uid,
            host: host.clone(),
            verb: verb.to_owned(),
            path: absolute(&r.path),
            digests: r
                .digests
                .iter()
                .map(|(name, hex)| Digest {
                    name: name.clone(),
                    hex: hex.clone(),
                })
                .collect(),
            verdict: r.verdict.clone(),
        })
        .collect();
    let mut writer = Ledger::<Writer>::open(ledger, &key_path(ledger, None))?;
    writer
        .append_all(&entries)
        .with_context(|| format!("could not record `{verb}` to ledger {}", ledger.display()))?;
    Ok(())
}

/// Append one entry with an explicit key; returns the receipt (used by `ledger append`).
pub(crate) fn append(
    ledger: &Path,
    key: &Path,
    verb: &str,
    path: &Path,
    digests: &[(String, String)],
    verdict: &str,
) -> anyhow::Result<Receipt> {
    let (user, uid) = who();
    let entry = Entry {
        time_ms: tg_ledger::now_ms(),
        user,
        uid,
        host: host(),
        verb: verb.to_owned(),
        path: absolute(path),
        digests: digests
            .iter()
            .map(|(name, hex)| Digest {
                name: name.clone(),
                hex: hex.clone(),
            })
            .collect(),
        verdict: verdict.to_owned(),
    };
    let mut writer = Ledger::<Writer>::open(ledger, key)?;
    let receipt = writer
        .append(&entry)
        .with_context(|| format!("could not record `{verb}` to ledger {}", ledger.display()))?;
    Ok(receipt)
}

/// The path as an absolute path (without touching the file system), so ledger entries from
/// different working directories name the same file the same way.
fn absolute(path: &Path) -> String {
    std::path::absolute(path)
        .unwrap_or_else(|_| path.to_owned())
        .to_string_lossy()
        .into_owned()
}

/// The key file: `explicit` (from `--key`), else `TRAINGUARD_LEDGER_KEY`, else `LEDGER.key`.
pub(crate) fn key_path(ledger: &Path, explicit: Option<&Path>) -> PathBuf {
    if let Some(key) = explicit {
        return key.to_owned();
    }
    match std::env::var_os(KEY_ENV) {
        Some(key) if !key.is_empty() => PathBuf::from(key),
        _ => tg_ledger::default_key_path(ledger),
    }
}

/// The user name and uid of this process.
#[cfg(unix)]
fn who() -> (String, Option<u32>) {
    let uid = rustix::process::getuid().as_raw();
    let name = fs_err::read_to_string("/etc/passwd")
        .ok()
        .and_then(|passwd| passwd_name(&passwd, uid))
        .or_else(env_user)
        .unwrap_or_else(|| format!("uid-{uid}"));
    (name, Some(uid))
}

#[cfg(not(unix))]
fn who() -> (String, Option<u32>) {
    (env_user().unwrap_or_else(|| "unknown".into()), None)
}

fn env_user() -> Option<String> {
    ["USER", "LOGNAME", "USERNAME"]
        .into_iter()
        .find_map(|v| std::env::var(v).ok().filter(|s| !s.is_empty()))
}

/// The name of `uid` in a passwd file (`name:x:uid:gid:...`).
#[cfg(unix)]
fn passwd_name(passwd: &str, uid: u32) -> Option<String> {
    passwd.lines().find_map(|line| {
        let mut fields = line.split(':');
        let name = fields.next()?;
        let id: u32 = fields.nth(1)?.parse().ok()?;
        (id == uid && !name.is_empty()).then(|| name.to_owned())
    })
}

/// The host name.
#[cfg(unix)]
fn host() -> String {
    rustix::system::uname()
        .nodename()
        .to_string_lossy()
        .into_owned()
}

#[cfg(not(unix))]
fn host() -> String {
    std::env::var("COMPUTERNAME").unwrap_or_else(|_| "unknown".into())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[cfg(unix)]
    #[test]
    fn passwd_lines_are_matched_on_the_uid_field() {
        let passwd = "root:x:0:0:root:/root:/bin/bash\n\
                      # comment\n\
                      alice:x:1000:1000::/home/alice:/bin/sh\n\
                      bad:x:notanumber:0::/:/bin/false\n";
        assert_eq!(passwd_name(passwd, 0).as_deref(), Some("root"));
        assert_eq!(passwd_name(passwd, 1000).as_deref(), Some("alice"));
        assert_eq!(passwd_name(passwd, 1001), None);
    }

    #[test]
    fn without_a_ledger_nothing_is_written() {
        let dir = tempfile::tempdir().unwrap();
        let ctx = crate::Context { ledger: None };
        record(&ctx, "scan", dir.path(), &[], "clean").unwrap();
        assert_eq!(fs_err::read_dir(dir.path()).unwrap().count(), 0);
    }

    #[test]
    fn with_a_ledger_the_entry_is_appended_with_who_and_where() {
        let dir = tempfile::tempdir().unwrap();
        let db = dir.path().join("ledger.db");
        let ctx = crate::Context {
            ledger: Some(db.clone()),
        };
        let digests = [("sha256".to_owned(), "ab".repeat(32))];
        record(&ctx, "scan", Path::new("/m/model.pt"), &digests, "clean").unwrap();
        record(&ctx, "verify", Path::new("/m"), &[], "valid").unwrap();
        let key = tg_ledger::load_verifying_key(&key_path(&db, None)).unwrap();
        let verified = Ledger::<tg_ledger::Reader>::open(&db, key)
            .unwrap()
            .verify()
            .unwrap()
            .unwrap();
        let entries = verified.entries();
        assert_eq!(entries.len(), 2);
        assert_eq!(entries[0].verb, "scan");
        assert_eq!(entries[0].path, "/m/model.pt");
        assert_eq!(entries[0].digests[0].hex, "ab".repeat(32));
        assert_eq!(entries[1].verdict, "valid");
        assert!(!entries[0].user.is_empty() && !entries[0].host.is_empty());
        #[cfg(unix)]
        assert_eq!(entries[0].uid, Some(rustix::process::getuid().as_raw()));
    }
}
