//! Format detection, per-format scanners and policies
