"""The emulator_planning study: see its README.md."""
