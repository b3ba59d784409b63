"""Finished investigations: one folder each, with a dated README (the question, the command, the result, the
conclusion), its code and its JSON results; their tables are rendered into benchmarks/studies/RESULTS.md."""
