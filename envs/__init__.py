"""Everything gymnasium: real Atari envs (and, later, the dream env and its registration)."""

from envs.atari import AtariConfig, check_env_id, make_env, make_vector_env

__all__ = ["AtariConfig", "check_env_id", "make_env", "make_vector_env"]
