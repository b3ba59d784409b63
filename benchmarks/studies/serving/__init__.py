"""The serving study: see its README.md."""
