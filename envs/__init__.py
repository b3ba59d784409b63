"""Everything gymnasium: real Atari envs, the dream env, and latent-observation wrappers."""

from envs.atari import AtariConfig, check_env_id, make_env, make_vector_env
from envs.dream import DreamConfig, DreamEnv, DreamVectorEnv, latent_space
from envs.wrappers import LatentObservation, LatentObservationVector

__all__ = [
    "AtariConfig",
    "DreamConfig",
    "DreamEnv",
    "DreamVectorEnv",
    "LatentObservation",
    "LatentObservationVector",
    "check_env_id",
    "latent_space",
    "make_env",
    "make_vector_env",
]
