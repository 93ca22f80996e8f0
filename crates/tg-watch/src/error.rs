//! Errors of this crate.

/// Why an event or a configuration was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum EventError {
    /// The run id is not 1 to 128 characters of `[A-Za-z0-9._-]`.
    #[error("invalid run id {0:?}: expected 1 to 128 characters of A-Z a-z 0-9 . _ -")]
    BadRunId(String),
    /// A field is out of its bounds.
    #[error("invalid field {field}: {reason}")]
    BadField {
        /// The field's name on the wire.
        field: &'static str,
        /// What is wrong with it.
        reason: &'static str,
    },
    /// The event belongs to another run than the one it was sent to.
    #[error("event for run {event:?} sent to run {url:?}")]
    WrongRun {
        /// The run the event names.
        event: String,
        /// The run it was posted to.
        url: String,
    },
}

/// Why a set of thresholds was refused.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[non_exhaustive]
pub enum ThresholdError {
    /// A threshold is out of its range.
    #[error("invalid threshold {name}: {value} ({reason})")]
    OutOfRange {
        /// The threshold's field name.
        name: &'static str,
        /// Its value.
        value: f64,
        /// The allowed range.
        reason: &'static str,
    },
}
