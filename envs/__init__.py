"""Everything gymnasium: real Atari envs, the dream env, and latent-observation wrappers.

Importing `envs` registers the gymnasium id "mbrl/Dream-v0" (see envs/registration.py).
"""

from mbrl.envs.atari import AtariConfig, check_env_id, make_env, make_vector_env
from mbrl.envs.dream import DreamConfig, DreamEnv, DreamVectorEnv, latent_space
from mbrl.envs.registration import DREAM_ID, make_dream_env, make_dream_vector_env
from mbrl.envs.wrappers import LatentObservation, LatentObservationVector

__all__ = [
    "DREAM_ID",
    "AtariConfig",
    "DreamConfig",
    "DreamEnv",
    "DreamVectorEnv",
    "LatentObservation",
    "LatentObservationVector",
    "check_env_id",
    "latent_space",
    "make_dream_env",
    "make_dream_vector_env",
    "make_env",
    "make_vector_env",
]
