//! Zip and tar readers that behave like PyTorch's, with ambiguity detection and size caps
