//! `trainguard ledger verify|show|prove|check-proof|head|append|public-key`
//!
//! Exit codes: `0` valid (or done), `1` the ledger or a proof is tampered, `2` an error.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::{Context as _, bail};
use serde_json::json;
use tg_ledger::{
    ConsistencyProof, InclusionProof, Ledger, Reader, SignedTreeHead, StoredEntry, VerifiedLedger,
    VerifyingKey,
};

use crate::{Context, output, record};

/// Verify, show and prove the append-only ledger of what trainguard did.
///
/// The ledger is an append-only log of what trainguard did (who, on which host, which verb, on
/// which path with which digests, which verdict, when): a SQLite file named by the global
/// `--ledger PATH` (or `TRAINGUARD_LEDGER`). Every append signs a new tree head (RFC 9162
/// Merkle tree) with a P-256 key kept outside the database, so rewriting, removing, inserting
/// or reordering an entry is named by `trainguard ledger verify`.
#[derive(Debug, clap::Args)]
pub(crate) struct Args {
    #[command(subcommand)]
    command: Command,

    /// The signing key (PKCS#8 PEM); default: the ledger path with `.key` appended, created
    /// with mode 0600 on the first append. Verifying also accepts the public key
    /// (`trainguard ledger public-key`), so auditors never need the private one.
    #[arg(long, global = true, env = record::KEY_ENV, value_name = "PATH")]
    key: Option<PathBuf>,
}

#[derive(Debug, clap::Subcommand)]
enum Command {
    /// Recompute every entry, rebuild the tree, check every signed tree head; name each
    /// rewritten, removed, inserted or reordered entry. Exit 0 valid, 1 tampered, 2 error.
    Verify(VerifyArgs),
    /// Print the entries as stored (not verified: run `verify` for that).
    Show(ShowArgs),
    /// Print an inclusion proof for one entry, or a consistency proof from an older tree head,
    /// against the newest signed tree head, as JSON (after verifying the whole ledger).
    Prove(ProveArgs),
    /// Check a proof printed by `prove` with the public key alone. Exit 0 valid, 1 invalid.
    CheckProof(CheckProofArgs),
    /// Print the newest signed tree head as JSON (after verifying the ledger). Keep it somewhere
    /// the ledger's writers cannot reach, and later pass it to `verify --trusted-head` to prove
    /// nothing was cut off the end.
    Head,
    /// Record an entry by hand, e.g. from a job prolog; prints the receipt as JSON.
    Append(AppendArgs),
    /// Print the public key that verifies this ledger's tree heads (SPKI PEM).
    PublicKey,
}

/// How to print.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
enum Format {
    /// One line per item, for people.
    Text,
    /// JSON (JSON Lines for `show`), for programs.
    Json,
}

#[derive(Debug, clap::Args)]
struct VerifyArgs {
    /// A tree head kept elsewhere (from `trainguard ledger head`): also check that the ledger
    /// still contains it, which catches entries cut off the end together with their heads.
    #[arg(long, value_name = "FILE")]
    trusted_head: Option<PathBuf>,
    /// Output format.
    #[arg(long, value_enum, default_value_t = Format::Text)]
    format: Format,
}

#[derive(Debug, clap::Args)]
struct ShowArgs {
    /// Output format.
    #[arg(long, value_enum, default_value_t = Format::Text)]
    format: Format,
    /// Show only the newest N entries.
    #[arg(long, value_name = "N")]
    limit: Option<u64>,
}

#[derive(Debug, clap::Args)]
#[group(required = true, multiple = false)]
struct ProveArgs {
    /// Prove that entry N (0-based, as `show` numbers them) is in the newest tree.
    #[arg(long, value_name = "N")]
    entry: Option<u64>,
    /// Prove that the tree head of size OLD_SIZE is a prefix of the newest tree.
    #[arg(long, value_name = "OLD_SIZE")]
    consistency: Option<u64>,
}

#[derive(Debug, clap::Args)]
struct CheckProofArgs {
    /// A proof document printed by `trainguard ledger prove`.
    proof: PathBuf,
}

#[derive(Debug, clap::Args)]
struct AppendArgs {
    /// The verb to record (e.g. `job-start`).
    #[arg(long)]
    verb: String,
    /// The path the verb acted on.
    #[arg(long)]
    path: PathBuf,
    /// The verdict to record (e.g. `clean`, `valid`, `started`).
    #[arg(long)]
    verdict: String,
    /// A digest as NAME=HEX (an algorithm or a file name, then the hex digest); repeatable.
    #[arg(long = "digest", value_name = "NAME=HEX", value_parser = parse_digest)]
    digests: Vec<(String, String)>,
}

fn parse_digest(s: &str) -> Result<(String, String), String> {
    let (name, hex) = s
        .split_once('=')
        .ok_or_else(|| format!("`{s}` is not NAME=HEX"))?;
    if name.is_empty() || hex.is_empty() || !hex.bytes().all(|b| b.is_ascii_hexdigit()) {
        return Err(format!("`{s}` is not NAME=HEX with a hex digest"));
    }
    Ok((name.to_owned(), hex.to_ascii_lowercase()))
}

pub(crate) fn run(args: Args, ctx: &Context) -> anyhow::Result<ExitCode> {
    let ledger = || {
        ctx.ledger
            .as_deref()
            .context("no ledger given: pass --ledger PATH or set TRAINGUARD_LEDGER")
    };
    let key = |ledger: &Path| record::key_path(ledger, args.key.as_deref());
    match &args.command {
        Command::Verify(a) => verify(ledger()?, &key(ledger()?), a),
        Command::Show(a) => show(ledger()?, a),
        Command::Prove(a) => prove(ledger()?, &key(ledger()?), a),
        Command::Head => head(ledger()?, &key(ledger()?)),
        Command::CheckProof(a) => {
            let key = match (&args.key, ctx.ledger.as_deref()) {
                (Some(k), _) => k.clone(),
                (None, Some(l)) => key(l),
                (None, None) => bail!("no key to check the proof with: pass --key or --ledger"),
            };
            check_proof(&a.proof, &key)
        }
        Command::Append(a) => {
            let l = ledger()?;
            let receipt = record::append(l, &key(l), &a.verb, &a.path, &a.digests, &a.verdict)?;
            let doc = json!({
                "index": receipt.index,
                "leaf_hash": hex(&receipt.leaf_hash),
                "tree_head": receipt.tree_head,
            });
            output::data(&doc.to_string())?;
            Ok(ExitCode::SUCCESS)
        }
        Command::PublicKey => {
            let key = load_key(&key(ledger()?))?;
            output::data(tg_ledger::public_key_pem(&key).trim_end())?;
            Ok(ExitCode::SUCCESS)
        }
    }
}

fn load_key(key: &Path) -> anyhow::Result<VerifyingKey> {
    tg_ledger::load_verifying_key(key).with_context(|| {
        format!(
            "cannot read the ledger key {} (pass --key PATH or set {})",
            key.display(),
            record::KEY_ENV
        )
    })
}

fn open(ledger: &Path, key: &Path) -> anyhow::Result<Ledger<Reader>> {
    let key = load_key(key)?;
    Ok(Ledger::<Reader>::open(ledger, key)?)
}

/// Verify, printing the problems and returning exit code 1 when tampered.
fn verified(ledger: &Path, key: &Path) -> anyhow::Result<Result<VerifiedLedger, ExitCode>> {
    match open(ledger, key)?.verify()? {
        Ok(v) => Ok(Ok(v)),
        Err(report) => {
            for p in &report.problems {
                output::error(&format!("ledger {} is tampered: {p}", ledger.display()));
            }
            Ok(Err(ExitCode::from(1)))
        }
    }
}

fn verify(ledger: &Path, key: &Path, args: &VerifyArgs) -> anyhow::Result<ExitCode> {
    let trusted: Option<SignedTreeHead> = match &args.trusted_head {
        None => None,
        Some(path) => {
            let text = fs_err::read_to_string(path)?;
            Some(
                serde_json::from_str(&text)
                    .with_context(|| format!("{} is not a signed tree head", path.display()))?,
            )
        }
    };
    let (problems, verified) = match open(ledger, key)?.verify()? {
        Ok(v) => {
            let problems = trusted
                .as_ref()
                .and_then(|t| v.check_trusted_head(t).err())
                .into_iter()
                .collect::<Vec<_>>();
            (problems, Some(v))
        }
        Err(report) => (report.problems, None),
    };
    let newest = verified.as_ref().and_then(|v| v.newest_head());
    match args.format {
        Format::Json => {
            let doc = json!({
                "ledger": ledger.display().to_string(),
                "valid": problems.is_empty(),
                "entries": verified.as_ref().map(VerifiedLedger::size),
                "tree_head": newest,
                "problems": problems.iter().map(ToString::to_string).collect::<Vec<_>>(),
            });
            output::data(&doc.to_string())?;
        }
        Format::Text => {
            for p in &problems {
                output::data(&format!("tampered: {p}"))?;
            }
            if problems.is_empty() {
                let (size, root) = match newest {
                    Some(h) => (h.tree_size, hex(&h.root_hash)),
                    None => (0, hex(&tg_ledger::merkle::empty_root())),
                };
                output::data(&format!(
                    "valid: {size} entries, every one signed; root {root}"
                ))?;
            }
        }
    }
    Ok(if problems.is_empty() {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    })
}

fn show(ledger: &Path, args: &ShowArgs) -> anyhow::Result<ExitCode> {
    for row in tg_ledger::read_entries(ledger, args.limit)? {
        let line = match args.format {
            Format::Json => show_json(&row).to_string(),
            Format::Text => show_text(&row),
        };
        output::data(&line)?;
    }
    Ok(ExitCode::SUCCESS)
}

fn show_json(row: &StoredEntry) -> serde_json::Value {
    match &row.entry {
        Ok(e) => json!({
            "index": row.index,
            "time": rfc3339(e.time_ms),
            "time_ms": e.time_ms,
            "user": e.user,
            "uid": e.uid,
            "host": e.host,
            "verb": e.verb,
            "path": e.path,
            "digests": e.digests,
            "verdict": e.verdict,
        }),
        Err(why) => json!({ "index": row.index, "malformed": why }),
    }
}

fn show_text(row: &StoredEntry) -> String {
    match &row.entry {
        Ok(e) => {
            let uid = e.uid.map(|u| format!("({u})")).unwrap_or_default();
            let digests = e
                .digests
                .iter()
                .map(|d| format!(" {}={}", printable(&d.name), printable(&d.hex)))
                .collect::<String>();
            format!(
                "{}  {}  {}{uid}@{}  {}  {}  {}{digests}",
                row.index,
                rfc3339(e.time_ms),
                printable(&e.user),
                printable(&e.host),
                printable(&e.verb),
                printable(&e.verdict),
                printable(&e.path)
            )
        }
        Err(why) => format!("{}  malformed row: {}", row.index, printable(why)),
    }
}

/// Whoever wrote an entry chose its text: escape control characters so a newline or a terminal
/// escape in a path cannot forge or hide lines of `show` output.
fn printable(s: &str) -> String {
    s.chars()
        .map(|c| {
            if c.is_control() {
                c.escape_default().to_string()
            } else {
                c.to_string()
            }
        })
        .collect()
}

fn prove(ledger: &Path, key: &Path, args: &ProveArgs) -> anyhow::Result<ExitCode> {
    let v = match verified(ledger, key)? {
        Ok(v) => v,
        Err(code) => return Ok(code),
    };
    let doc = match (args.entry, args.consistency) {
        (Some(index), _) => serde_json::to_string_pretty(&v.inclusion_proof(index)?)?,
        (None, Some(old)) => serde_json::to_string_pretty(&v.consistency_proof(old)?)?,
        (None, None) => bail!("pass --entry N or --consistency OLD_SIZE"),
    };
    output::data(&doc)?;
    Ok(ExitCode::SUCCESS)
}

fn check_proof(proof: &Path, key: &Path) -> anyhow::Result<ExitCode> {
    let key = load_key(key)?;
    let bytes = fs_err::read(proof)?;
    // Tell the two documents apart by shape: only a consistency proof has `old_head`.
    let is_consistency = serde_json::from_slice::<serde_json::Value>(&bytes)
        .ok()
        .is_some_and(|v| v.get("old_head").is_some());
    let (what, result) = if is_consistency {
        let p = ConsistencyProof::from_json(&bytes)?;
        let what = format!(
            "tree head {} is a prefix of tree head {}",
            p.old_head.tree_size, p.new_head.tree_size
        );
        (what, p.verify(&key))
    } else {
        let p = InclusionProof::from_json(&bytes)?;
        let what = format!(
            "entry {} is in tree head {}",
            p.leaf_index, p.tree_head.tree_size
        );
        (what, p.verify(&key))
    };
    match result {
        Ok(()) => {
            output::data(&format!("valid: {what}"))?;
            Ok(ExitCode::SUCCESS)
        }
        Err(e) => {
            output::data(&format!("invalid: {e}"))?;
            Ok(ExitCode::from(1))
        }
    }
}

fn head(ledger: &Path, key: &Path) -> anyhow::Result<ExitCode> {
    let v = match verified(ledger, key)? {
        Ok(v) => v,
        Err(code) => return Ok(code),
    };
    let Some(head) = v.newest_head() else {
        bail!(
            "ledger {} is empty: it has no signed tree head",
            ledger.display()
        );
    };
    output::data(&serde_json::to_string(head)?)?;
    Ok(ExitCode::SUCCESS)
}

fn hex(h: &[u8]) -> String {
    h.iter().map(|b| format!("{b:02x}")).collect()
}

/// `YYYY-MM-DDTHH:MM:SS.mmmZ` from milliseconds since the epoch (proleptic Gregorian, UTC).
fn rfc3339(ms: u64) -> String {
    let secs = ms / 1000;
    let days = i64::try_from(secs / 86_400).unwrap_or(i64::MAX / 2);
    let rem = secs % 86_400;
    // Howard Hinnant's civil_from_days.
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}.{:03}Z",
        rem / 3600,
        rem / 60 % 60,
        rem % 60,
        ms % 1000
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn timestamps_render_as_rfc3339_utc() {
        assert_eq!(rfc3339(0), "1970-01-01T00:00:00.000Z");
        assert_eq!(rfc3339(951_782_400_000), "2000-02-29T00:00:00.000Z");
        assert_eq!(rfc3339(1_798_761_599_999), "2026-12-31T23:59:59.999Z");
        assert_eq!(rfc3339(4_107_542_400_123), "2100-03-01T00:00:00.123Z");
    }

    #[test]
    fn control_characters_in_entries_cannot_forge_show_lines() {
        let row = StoredEntry {
            index: 0,
            entry: Ok(tg_ledger::Entry {
                time_ms: 0,
                user: "eve".into(),
                uid: None,
                host: "h".into(),
                verb: "scan".into(),
                path: "/x\n1  1970-01-01T00:00:00.000Z  root(0)@h  scan  clean  /y\u{1b}[2K".into(),
                digests: vec![],
                verdict: "clean".into(),
            }),
        };
        let line = show_text(&row);
        assert_eq!(line.lines().count(), 1);
        assert!(!line.contains('\u{1b}'));
        assert!(
            line.ends_with(
                "/x\\n1  1970-01-01T00:00:00.000Z  root(0)@h  scan  clean  /y\\u{1b}[2K"
            )
        );
    }

    #[test]
    fn digests_parse_as_name_equals_hex() {
        assert_eq!(
            parse_digest("sha256=ABcd"),
            Ok(("sha256".into(), "abcd".into()))
        );
        assert!(parse_digest("sha256").is_err());
        assert!(parse_digest("=ab").is_err());
        assert!(parse_digest("sha256=xyz").is_err());
    }
}
