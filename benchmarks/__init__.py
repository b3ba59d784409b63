"""The maintained benchmarks of mbrl: each module runs as `python -m benchmarks.NAME` from the repository root,
writes its JSON result to benchmarks/results/ and re-renders benchmarks/RESULTS.md (`benchmarks.report`).
Finished investigations live in `benchmarks.studies`. Library code never imports from here."""
