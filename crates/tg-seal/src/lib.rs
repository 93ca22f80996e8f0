//! Directory manifests, parallel hashing, signing and verification in the OpenSSF Model Signing format
