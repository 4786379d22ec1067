"""Session store tests: one conformance suite, one module per store."""
