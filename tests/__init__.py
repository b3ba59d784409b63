"""The test suite as a package: shared toys are imported as `tests.toys`, `tests.replay_data` and `tests.cli_runs`."""
