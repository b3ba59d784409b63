"""A run directory: resolved config, replay buffer, checkpoints, tensorboard logs, progress.

    runs/<name>/config.yaml      the resolved config the run was made with
    runs/<name>/replay/          the replay buffer (see mbrl.core.replay)
    runs/<name>/checkpoints/     world model and agent checkpoints (see mbrl.core.checkpoint)
    runs/<name>/tb/              tensorboard event files
    runs/<name>/progress.json    counters, rewritten atomically as work goes on
    runs/<name>/eval.json        latest evaluation on the real game
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

from mbrl.core.atomic import write_atomic
from mbrl.core.config import load_yaml
from mbrl.core.errors import UserError


class RunDir:
    """Paths and small files of one run.

    Args:
        path: the run directory (need not exist yet).
    """

    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        self.config_path = self.path / "config.yaml"
        self.replay_dir = self.path / "replay"
        self.checkpoint_dir = self.path / "checkpoints"
        self.tb_dir = self.path / "tb"
        self.progress_path = self.path / "progress.json"
        self.eval_path = self.path / "eval.json"

    def exists(self) -> bool:
        """Whether a run was created here (it has a config.yaml)."""
        return self.config_path.exists()

    def create(self, config_yaml: str) -> None:
        """Make the directory tree and write the resolved config.

        Raises:
            UserError: the path cannot be created (e.g. it is a file, or not writable).
        """
        try:
            self.path.mkdir(parents=True, exist_ok=True)
            for sub in (self.replay_dir, self.checkpoint_dir, self.tb_dir):
                sub.mkdir(exist_ok=True)
            write_atomic(self.config_path, config_yaml.encode())
        except OSError as exc:
            raise UserError(f"cannot create run directory {self.path}: {exc.strerror}") from None

    def read_config(self) -> dict[str, Any]:
        """The run's saved config as a dict.

        Raises:
            UserError: there is no run at this path.
        """
        if not self.exists():
            raise UserError(f"no run at {self.path} (missing {self.config_path.name})")
        return load_yaml(self.config_path)

    def read_progress(self) -> dict[str, Any]:
        """progress.json as a dict (empty when missing)."""
        if not self.progress_path.exists():
            return {}
        try:
            return json.loads(self.progress_path.read_text())
        except ValueError:
            raise UserError(f"{self.progress_path} is corrupted") from None

    def update_progress(self, **values: Any) -> None:
        """Merge `values` into progress.json, atomically."""
        progress = {**self.read_progress(), **values, "updated_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
        write_atomic(self.progress_path, json.dumps(progress, indent=1, sort_keys=True).encode())
