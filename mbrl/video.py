"""Animated GIFs of frame sequences, for `mbrl dream` and evaluations."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image

from mbrl.core.errors import UserError


def side_by_side(*videos: np.ndarray, gap: int = 2) -> np.ndarray:
    """uint8 videos (T, H, W) of equal shape -> one (T, H, n * W + (n - 1) * gap) video, white gaps."""
    t, h, _ = videos[0].shape
    bar = np.full((t, h, gap), 255, dtype=np.uint8)
    parts: list[np.ndarray] = []
    for video in videos:
        parts += [video, bar]
    return np.concatenate(parts[:-1], axis=2)


def save_gif(frames: np.ndarray, path: Path, fps: int = 15, scale: int = 3) -> None:
    """Write uint8 grayscale frames (T, H, W) as a looping GIF, each pixel `scale` x `scale`.

    Raises:
        UserError: the file cannot be written.
    """
    big = frames.repeat(scale, axis=1).repeat(scale, axis=2)
    images = [Image.fromarray(frame, mode="L") for frame in big]
    try:
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        images[0].save(path, save_all=True, append_images=images[1:], duration=round(1000 / fps), loop=0)
    except OSError as exc:
        raise UserError(f"cannot write {path}: {exc.strerror or exc}") from None
