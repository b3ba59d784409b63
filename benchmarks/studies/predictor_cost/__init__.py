"""The predictor_cost study: see its README.md."""
