//! Python environment integrity: RECORD hashes, unrecorded files, start-up hooks, baselines
