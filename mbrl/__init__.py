"""mbrl: model-based reinforcement learning for Atari, on a laptop CPU."""

__version__ = "0.1.0"
