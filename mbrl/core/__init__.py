"""The ground floor: configs, run directories, checkpoints, the replay buffer, atomic writes and errors.

Nothing here imports any other part of mbrl, so every layer above may use it.
"""
