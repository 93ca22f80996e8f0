//! Pickle opcode reader and symbolic machine that never imports or calls anything
