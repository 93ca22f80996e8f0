//! `trainguard seal`, `trainguard verify` and `trainguard keygen`: signed manifests of model and
//! checkpoint directories in the OpenSSF Model Signing format (tg-seal does the work).

use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::Context as _;
use serde_json::json;
use tg_seal::{Bundle, Curve, DEFAULT_SIGNATURE_NAME, Options, SigningKey, VerifyingKey};

use crate::Context;
use crate::output;

/// Output format of `seal` and `verify`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub(crate) enum Format {
    /// Lines for people.
    Human,
    /// One JSON object on stdout.
    Json,
}

/// What `seal` and `verify` share: which files are covered and how they are hashed.
#[derive(Debug, clap::Args)]
pub(crate) struct Common {
    /// The model or checkpoint directory. Every regular file under it is covered; symbolic links
    /// and special files are refused.
    dir: PathBuf,

    /// The signature file (a Sigstore bundle, JSON) [default: DIR/model.sig]. Left out of the
    /// manifest when it lies inside DIR.
    #[arg(long, value_name = "PATH")]
    signature: Option<PathBuf>,

    /// Leave out this path, relative to DIR (a directory leaves out its subtree; no globs).
    /// Recorded in the signature, and left out again by every verifier. Repeatable.
    #[arg(long = "ignore", value_name = "PATH")]
    ignore: Vec<String>,

    /// Cover .git, .gitattributes, .github and .gitignore at the root too (left out by
    /// default, as model_signing does).
    #[arg(long)]
    no_ignore_git_paths: bool,

    /// Reuse digests of files whose size, mtime, ctime, inode and device are unchanged since
    /// the last seal or verify. Stored in $XDG_CACHE_HOME/trainguard/seal-digests.json (else
    /// ~/.cache/...); whoever can write that file can make a changed file pass.
    #[arg(long)]
    cache: bool,

    /// Use this digest cache file (implies --cache).
    #[arg(long, value_name = "PATH")]
    cache_file: Option<PathBuf>,

    /// Output format.
    #[arg(long, value_enum, default_value_t = Format::Human)]
    format: Format,
}

impl Common {
    /// `--signature`, defaulting to DIR/model.sig.
    fn signature_path(&self) -> PathBuf {
        self.signature
            .clone()
            .unwrap_or_else(|| self.dir.join(DEFAULT_SIGNATURE_NAME))
    }

    fn options(&self, signature: &Path) -> anyhow::Result<Options> {
        let mut opts = Options::default();
        opts.ignore_paths = self.ignore.clone();
        opts.ignore_git_paths = !self.no_ignore_git_paths;
        opts.cache = match (&self.cache_file, self.cache) {
            (Some(p), _) => Some(p.clone()),
            (None, true) => Some(
                tg_seal::cache::default_cache_path()
                    .context("--cache needs $XDG_CACHE_HOME or $HOME; pass --cache-file PATH")?,
            ),
            (None, false) => None,
        };
        opts.ignore_signature(&self.dir, signature)?;
        Ok(opts)
    }
}

/// Sign a manifest of every file in a model or checkpoint directory (OpenSSF Model Signing).
///
/// Writes a signed manifest of every file in DIR: an OpenSSF Model Signing v1.0 bundle (Sigstore
/// bundle v0.3, DSSE, in-toto statement, one SHA-256 per file, ECDSA). `model_signing verify key`
/// accepts it. Files are hashed in parallel, one file per thread.
#[derive(Debug, clap::Args)]
pub(crate) struct SealArgs {
    #[command(flatten)]
    common: Common,

    /// EC private key in PEM (PKCS#8 or SEC1; P-256, P-384 or P-521), e.g. from
    /// `trainguard keygen`.
    #[arg(long, value_name = "KEY.pem")]
    private_key: PathBuf,
}

/// Verify a directory against its signed manifest; names every missing, extra, changed file.
///
/// Checks the signature of DIR's manifest, then re-hashes DIR and names every missing, extra and
/// changed file. Exit code 0: valid; 1: invalid (tampered files, bad signature, wrong key);
/// 2: could not check.
#[derive(Debug, clap::Args)]
pub(crate) struct VerifyArgs {
    #[command(flatten)]
    common: Common,

    /// EC public key in PEM (`BEGIN PUBLIC KEY`) of the signer.
    #[arg(long, value_name = "PUB.pem")]
    public_key: PathBuf,
}

/// Create an ECDSA key pair for `seal` and `verify`.
///
/// Writes a new ECDSA key pair for `seal` and `verify`: PREFIX.key.pem (PKCS#8, mode 0600) and
/// PREFIX.pub.pem. Never overwrites an existing file.
#[derive(Debug, clap::Args)]
pub(crate) struct KeygenArgs {
    /// Path prefix of the two files, e.g. `keys/ckpt` gives keys/ckpt.key.pem and
    /// keys/ckpt.pub.pem.
    #[arg(long, value_name = "PREFIX")]
    out: PathBuf,

    /// Curve (the hash follows it: P-256 with SHA-256, P-384 with SHA-384, P-521 with SHA-512).
    #[arg(long, default_value = "p256", value_parser = ["p256", "p384", "p521"])]
    curve: String,
}

fn human_bytes(n: u64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut v = n as f64;
    let mut unit = 0;
    while v >= 1024.0 && unit + 1 < UNITS.len() {
        v /= 1024.0;
        unit += 1;
    }
    if unit == 0 {
        format!("{n} B")
    } else {
        format!("{v:.1} {}", UNITS[unit])
    }
}

/// `trainguard seal`.
pub(crate) fn run_seal(args: SealArgs, ctx: &Context) -> anyhow::Result<ExitCode> {
    let key = SigningKey::read_pem_file(&args.private_key)?;
    let signature = args.common.signature_path();
    let opts = args.common.options(&signature)?;
    let manifest = tg_seal::manifest(&args.common.dir, &opts)?;
    let bundle = tg_seal::sign(&manifest, &key)?;
    bundle.write(&signature)?;
    let root = manifest.root_digest();
    crate::record::record(
        ctx,
        "seal",
        &args.common.dir,
        &[("sha256-root".into(), root.to_string())],
        "sealed",
    )?;
    match args.common.format {
        Format::Human => {
            output::data(&format!(
                "sealed {} files ({}) of {} into {}",
                manifest.stats.files,
                human_bytes(manifest.stats.bytes),
                args.common.dir.display(),
                signature.display()
            ))?;
            output::data(&format!("root sha256:{root}"))?;
        }
        Format::Json => output::data(
            &json!({
                "directory": args.common.dir.display().to_string(),
                "signature": signature.display().to_string(),
                "model_name": manifest.model_name,
                "root_digest": format!("sha256:{root}"),
                "curve": key.curve().to_string(),
                "key_hint": key.verifying_key().hint(),
                "files": manifest.stats.files,
                "bytes": manifest.stats.bytes,
                "cache_hits": manifest.stats.cache_hits,
                "ignore_paths": manifest.ignore_paths,
            })
            .to_string(),
        )?,
    }
    Ok(ExitCode::SUCCESS)
}

/// `trainguard verify`.
pub(crate) fn run_verify(args: VerifyArgs, ctx: &Context) -> anyhow::Result<ExitCode> {
    let key = VerifyingKey::read_pem_file(&args.public_key)?;
    let signature = args.common.signature_path();
    let opts = args.common.options(&signature)?;
    let bundle = Bundle::read(&signature)?;
    let dir = &args.common.dir;
    let report = match tg_seal::verify(dir, &bundle, &key, &opts) {
        Ok(report) => report,
        Err(err) if err.is_verification_failure() => {
            crate::record::record(ctx, "verify", dir, &[], "invalid")?;
            match args.common.format {
                Format::Human => output::data(&format!("invalid: {err}"))?,
                Format::Json => output::data(
                    &json!({
                        "valid": false,
                        "directory": dir.display().to_string(),
                        "signature": signature.display().to_string(),
                        "error": err.to_string(),
                    })
                    .to_string(),
                )?,
            }
            return Ok(ExitCode::from(1));
        }
        Err(err) => return Err(err.into()),
    };
    let valid = report.is_valid();
    crate::record::record(
        ctx,
        "verify",
        dir,
        &[("sha256-root".into(), report.root_digest.to_string())],
        if valid { "valid" } else { "invalid" },
    )?;
    match args.common.format {
        Format::Human => {
            for c in &report.changed {
                output::data(&format!("changed: {}", c.name))?;
            }
            for name in &report.missing {
                output::data(&format!("missing: {name}"))?;
            }
            for name in &report.extra {
                output::data(&format!("extra: {name}"))?;
            }
            if valid {
                output::data(&format!(
                    "valid: {} files of {} match {} (root sha256:{})",
                    report.signed_files,
                    dir.display(),
                    signature.display(),
                    report.root_digest
                ))?;
            } else {
                output::data(&format!(
                    "invalid: {} changed, {} missing, {} extra against {} signed files in {}",
                    report.changed.len(),
                    report.missing.len(),
                    report.extra.len(),
                    report.signed_files,
                    signature.display()
                ))?;
            }
        }
        Format::Json => output::data(
            &json!({
                "valid": valid,
                "directory": dir.display().to_string(),
                "signature": signature.display().to_string(),
                "model_name": report.model_name,
                "root_digest": format!("sha256:{}", report.root_digest),
                "signed_files": report.signed_files,
                "changed": report.changed.iter().map(|c| json!({
                    "name": c.name,
                    "expected": format!("sha256:{}", c.expected),
                    "actual": format!("sha256:{}", c.actual),
                })).collect::<Vec<_>>(),
                "missing": report.missing,
                "extra": report.extra,
                "ignore_paths": report.ignore_paths,
                "bytes_checked": report.stats.bytes,
                "cache_hits": report.stats.cache_hits,
            })
            .to_string(),
        )?,
    }
    Ok(if valid {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    })
}

/// Creates `path` (never replacing a file) with `mode` and writes `text`.
fn write_new(path: &Path, text: &str, mode: u32) -> anyhow::Result<()> {
    let mut opts = fs_err::OpenOptions::new();
    opts.write(true).create_new(true);
    #[cfg(unix)]
    fs_err::os::unix::fs::OpenOptionsExt::mode(&mut opts, mode);
    #[cfg(not(unix))]
    let _ = mode;
    let mut file = opts
        .open(path)
        .with_context(|| format!("not overwriting {}", path.display()))?;
    file.write_all(text.as_bytes())?;
    Ok(())
}

/// `trainguard keygen`.
pub(crate) fn run_keygen(args: KeygenArgs, _ctx: &Context) -> anyhow::Result<ExitCode> {
    let curve: Curve = args.curve.parse().map_err(anyhow::Error::msg)?;
    let key = SigningKey::generate(curve);
    let mut private = args.out.clone().into_os_string();
    private.push(".key.pem");
    let mut public = args.out.into_os_string();
    public.push(".pub.pem");
    let (private, public) = (PathBuf::from(private), PathBuf::from(public));
    if public.exists() {
        anyhow::bail!("not overwriting {}: it already exists", public.display());
    }
    write_new(&private, &key.to_pkcs8_pem(), 0o600)?;
    write_new(&public, &key.verifying_key().to_pem(), 0o644)?;
    output::data(&format!("private key: {}", private.display()))?;
    output::data(&format!("public key: {}", public.display()))?;
    output::data(&format!(
        "curve: {curve}, hint: {}",
        key.verifying_key().hint()
    ))?;
    Ok(ExitCode::SUCCESS)
}
