//! What `env verify` reports: one [`Finding`] per tampered, unrecorded or hooked thing.

use std::fmt;

use serde::{Deserialize, Serialize};

/// The class of a finding. Each has a stable rule id ([`Kind::rule`]) that scripts key on.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
#[non_exhaustive]
pub enum Kind {
    /// A file whose size or hash differs from its distribution's `RECORD`.
    ModifiedFile,
    /// A file listed (with a hash) in a `RECORD` that is not on disk.
    MissingFile,
    /// An importable file (`.py`, `.so`, `.pyc`, `.pth`) that no `RECORD` lists, inside a package
    /// directory some distribution owns or at the top of site-packages; or a whole unowned package.
    UnrecordedFile,
    /// A distribution, or a `RECORD` entry, whose files cannot be verified (no `RECORD`, an entry
    /// without a hash that is not a `.pyc`, a hash algorithm that is not SHA-2).
    Unverifiable,
    /// A `RECORD` entry that resolves outside the installation prefix.
    RecordPathEscapes,
    /// A `.pyc` whose header does not match its source or this interpreter.
    PycMismatch,
    /// A `.pyc` in `__pycache__` whose source file does not exist.
    OrphanPyc,
    /// An unchecked hash-based `.pyc` (PEP 552): the interpreter loads it without looking at the
    /// source, so its content is not tied to any verified file.
    UncheckedPyc,
    /// A `.pth` file with a line the `site` module executes, not of a known legitimate form.
    PthCode,
    /// A PEP 829 `.start` file: entry points called at every interpreter start (Python 3.15+).
    StartupEntryPoint,
    /// A `sitecustomize` or `usercustomize` module on the module search path.
    CustomizeModule,
    /// An environment variable that changes what the interpreter or the dynamic loader runs.
    EnvironmentVariable,
    /// A non-empty `/etc/ld.so.preload`.
    LdPreload,
    /// A file whose content changed since the baseline.
    BaselineChanged,
    /// A file that appeared since the baseline.
    BaselineAdded,
    /// A file that disappeared since the baseline.
    BaselineRemoved,
    /// A file that had to be checked but could not be read.
    Unreadable,
    /// A file whose content matches another installed distribution's RECORD instead of its own:
    /// two distributions install the same path. Informational: the content is authentic.
    Overwritten,
}

impl Kind {
    /// The stable rule id, e.g. `TG-ENV-001`.
    pub fn rule(self) -> &'static str {
        match self {
            Kind::ModifiedFile => "TG-ENV-001",
            Kind::MissingFile => "TG-ENV-002",
            Kind::UnrecordedFile => "TG-ENV-003",
            Kind::Unverifiable => "TG-ENV-004",
            Kind::RecordPathEscapes => "TG-ENV-005",
            Kind::PycMismatch => "TG-ENV-006",
            Kind::OrphanPyc => "TG-ENV-007",
            Kind::UncheckedPyc => "TG-ENV-008",
            Kind::PthCode => "TG-ENV-009",
            Kind::StartupEntryPoint => "TG-ENV-010",
            Kind::CustomizeModule => "TG-ENV-011",
            Kind::EnvironmentVariable => "TG-ENV-012",
            Kind::LdPreload => "TG-ENV-013",
            Kind::BaselineChanged => "TG-ENV-014",
            Kind::BaselineAdded => "TG-ENV-015",
            Kind::BaselineRemoved => "TG-ENV-016",
            Kind::Unreadable => "TG-ENV-017",
            Kind::Overwritten => "TG-ENV-018",
        }
    }

    /// The kebab-case name used in every output format.
    pub fn as_str(self) -> &'static str {
        match self {
            Kind::ModifiedFile => "modified-file",
            Kind::MissingFile => "missing-file",
            Kind::UnrecordedFile => "unrecorded-file",
            Kind::Unverifiable => "unverifiable",
            Kind::RecordPathEscapes => "record-path-escapes",
            Kind::PycMismatch => "pyc-mismatch",
            Kind::OrphanPyc => "orphan-pyc",
            Kind::UncheckedPyc => "unchecked-pyc",
            Kind::PthCode => "pth-code",
            Kind::StartupEntryPoint => "startup-entry-point",
            Kind::CustomizeModule => "customize-module",
            Kind::EnvironmentVariable => "environment-variable",
            Kind::LdPreload => "ld-preload",
            Kind::BaselineChanged => "baseline-changed",
            Kind::BaselineAdded => "baseline-added",
            Kind::BaselineRemoved => "baseline-removed",
            Kind::Unreadable => "unreadable",
            Kind::Overwritten => "overwritten",
        }
    }
}

impl fmt::Display for Kind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// One thing `env verify` found.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Finding {
    /// The stable rule id of [`Finding::kind`].
    pub rule: String,
    /// What class of problem this is.
    pub kind: Kind,
    /// The file, directory or variable concerned (absolute paths for files).
    pub path: String,
    /// The distribution that owns the file, as `name version`, when one does.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub distribution: Option<String>,
    /// One lowercase sentence saying what is wrong.
    pub message: String,
    /// The concrete evidence: the executed line, the expected and actual hash, the value.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub evidence: Option<String>,
}

impl Finding {
    /// A finding with no distribution and no evidence.
    pub fn new(kind: Kind, path: impl Into<String>, message: impl Into<String>) -> Self {
        Finding {
            rule: kind.rule().to_owned(),
            kind,
            path: path.into(),
            distribution: None,
            message: message.into(),
            evidence: None,
        }
    }

    /// Name the owning distribution.
    #[must_use]
    pub fn in_distribution(mut self, dist: Option<&str>) -> Self {
        self.distribution = dist.map(str::to_owned);
        self
    }

    /// Attach evidence.
    #[must_use]
    pub fn with_evidence(mut self, evidence: impl Into<String>) -> Self {
        self.evidence = Some(evidence.into());
        self
    }
}
