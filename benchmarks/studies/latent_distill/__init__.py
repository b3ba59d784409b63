"""The latent_distill study: see its README.md."""
