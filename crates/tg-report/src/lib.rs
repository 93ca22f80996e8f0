//! Findings, verdicts and locations: the vocabulary every trainguard verb reports in.
//!
//! This crate is a leaf. It does no I/O: scanners build [`FileReport`]s, and the binary picks a
//! renderer ([`jsonl`] or [`sarif`]) at the edge. The one design decision that matters here is
//! the ordering of [`Verdict`]: a file's verdict is the worst of its findings, and `clean` is only
//! ever the absence of every other verdict, so a scanner that forgets to report something can
//! never make a file look cleaner than a finding it did record.

use std::fmt;

use serde::{Deserialize, Serialize};

pub mod sarif;

/// The judgement on one file, ordered from best to worst.
///
/// `Inconclusive` sits below `Suspicious` because the exit codes say so: `1` for anything
/// suspicious or malicious, `2` for inconclusive "and nothing worse".
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Verdict {
    /// Provably only what the active policy allows, or nothing any loader executes.
    Clean,
    /// Could not be fully analysed (a budget ran out, the input is truncated or unreadable).
    Inconclusive,
    /// Outside the active policy, but not known to be dangerous.
    Suspicious,
    /// A known-dangerous callable or a hostile structure.
    Malicious,
}

impl Verdict {
    /// The lowercase name used in every output format.
    pub fn as_str(self) -> &'static str {
        match self {
            Verdict::Clean => "clean",
            Verdict::Inconclusive => "inconclusive",
            Verdict::Suspicious => "suspicious",
            Verdict::Malicious => "malicious",
        }
    }

    /// The process exit code for a run whose worst verdict is `self`.
    pub fn exit_code(self) -> u8 {
        match self {
            Verdict::Clean => 0,
            Verdict::Suspicious | Verdict::Malicious => 1,
            Verdict::Inconclusive => 2,
        }
    }
}

impl fmt::Display for Verdict {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Where a finding sits: the file, the archive member (possibly nested, joined by `!`), and the
/// byte offset of the opcode or structure inside that member's decoded stream.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Location {
    /// The archive member path, outermost first, joined with `!` for nested containers.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub member: Option<String>,
    /// Byte offset within the member (or the file, when there is no member).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub offset: Option<u64>,
}

impl Location {
    /// A location at `offset` in the top-level file.
    pub fn at(offset: u64) -> Self {
        Location {
            member: None,
            offset: Some(offset),
        }
    }

    /// The same location, inside archive member `member` (prepended to any inner member).
    pub fn within(mut self, member: &str) -> Self {
        self.member = Some(match self.member.take() {
            Some(inner) => format!("{member}!{inner}"),
            None => member.to_owned(),
        });
        self
    }
}

impl fmt::Display for Location {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match (&self.member, self.offset) {
            (Some(m), Some(o)) => write!(f, "{m}@{o}"),
            (Some(m), None) => f.write_str(m),
            (None, Some(o)) => write!(f, "@{o}"),
            (None, None) => Ok(()),
        }
    }
}

/// One thing a scanner found.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Finding {
    /// A stable rule identifier, e.g. `TG-PKL-001`. Scripts and SARIF key on it.
    pub rule: String,
    /// The verdict this finding alone implies.
    pub verdict: Verdict,
    /// One lowercase sentence saying what was found.
    pub message: String,
    /// Where it was found.
    pub location: Location,
    /// The concrete evidence, e.g. `posix.system('curl x | sh')`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub evidence: Option<String>,
}

impl Finding {
    /// A finding with no evidence string.
    pub fn new(
        rule: &str,
        verdict: Verdict,
        message: impl Into<String>,
        location: Location,
    ) -> Self {
        Finding {
            rule: rule.to_owned(),
            verdict,
            message: message.into(),
            location,
            evidence: None,
        }
    }

    /// Attach evidence.
    #[must_use]
    pub fn with_evidence(mut self, evidence: impl Into<String>) -> Self {
        self.evidence = Some(evidence.into());
        self
    }

    /// Prefix the location with an archive member.
    #[must_use]
    pub fn within(mut self, member: &str) -> Self {
        self.location = self.location.within(member);
        self
    }
}

/// The full result for one scanned file.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct FileReport {
    /// The path as given or discovered.
    pub path: String,
    /// The detected format, e.g. `pytorch-zip`, `pickle`, `not-a-model`.
    pub format: String,
    /// The worst verdict of all findings, `clean` when there are none.
    pub verdict: Verdict,
    /// Everything found, in stream order.
    pub findings: Vec<Finding>,
    /// Informational notes that do not affect the verdict (e.g. "not a model file").
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub notes: Vec<String>,
    /// How many bytes of the file were read to reach the verdict.
    pub bytes_read: u64,
    /// The file's size.
    pub size: u64,
}

impl FileReport {
    /// A report with no findings yet.
    pub fn new(path: impl Into<String>, format: impl Into<String>) -> Self {
        FileReport {
            path: path.into(),
            format: format.into(),
            verdict: Verdict::Clean,
            findings: Vec::new(),
            notes: Vec::new(),
            bytes_read: 0,
            size: 0,
        }
    }

    /// Add a finding and update the verdict.
    pub fn push(&mut self, finding: Finding) {
        self.verdict = self.verdict.max(finding.verdict);
        self.findings.push(finding);
    }

    /// Add many findings.
    pub fn extend(&mut self, findings: impl IntoIterator<Item = Finding>) {
        for f in findings {
            self.push(f);
        }
    }

    /// Recompute the verdict from the findings (after a caller edited them directly).
    pub fn recompute(&mut self) {
        self.verdict = self
            .findings
            .iter()
            .map(|f| f.verdict)
            .max()
            .unwrap_or(Verdict::Clean);
    }
}

/// The exit code for a whole run: `1` if anything is suspicious or malicious, else `2` if anything
/// is inconclusive or failed, else `0`.
pub fn exit_code<'a>(verdicts: impl IntoIterator<Item = &'a Verdict>) -> u8 {
    let worst = verdicts
        .into_iter()
        .copied()
        .max()
        .unwrap_or(Verdict::Clean);
    worst.exit_code()
}

/// One JSON object per line, one line per file.
pub mod jsonl {
    use super::FileReport;

    /// Render one report as a single JSON line (without the trailing newline).
    pub fn line(report: &FileReport) -> String {
        // Serializing plain owned data with string keys cannot fail.
        serde_json::to_string(report).unwrap_or_else(|e| format!("{{\"error\":\"{e}\"}}"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn verdict_is_worst_finding() {
        let mut r = FileReport::new("x", "pickle");
        assert_eq!(r.verdict, Verdict::Clean);
        r.push(Finding::new(
            "A",
            Verdict::Inconclusive,
            "m",
            Location::at(1),
        ));
        assert_eq!(r.verdict, Verdict::Inconclusive);
        r.push(Finding::new("B", Verdict::Suspicious, "m", Location::at(2)));
        r.push(Finding::new(
            "C",
            Verdict::Inconclusive,
            "m",
            Location::at(3),
        ));
        assert_eq!(r.verdict, Verdict::Suspicious);
    }

    #[test]
    fn exit_codes_follow_the_scanners_users_script_against() {
        use Verdict::*;
        assert_eq!(exit_code(&[Clean, Clean]), 0);
        assert_eq!(exit_code(&[Clean, Inconclusive]), 2);
        assert_eq!(exit_code(&[Inconclusive, Suspicious]), 1);
        assert_eq!(exit_code(&[Malicious, Inconclusive]), 1);
        assert_eq!(exit_code(&[]), 0);
    }

    #[test]
    fn nested_locations_read_outside_in() {
        let l = Location::at(7).within("inner.pkl").within("outer.zip");
        assert_eq!(l.to_string(), "outer.zip!inner.pkl@7");
    }
}
