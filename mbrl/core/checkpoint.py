"""Checkpoints: safetensors for tensors, JSON for metadata, sha256 verified on load.

A checkpoint named NAME in a directory is two files:
- `NAME-<sha256[:16]>.safetensors`: the tensors (never pickled code);
- `NAME.json`: format version, step, package versions, the caller's metadata, the
  name and sha256 of the tensor file, and a sha256 of the JSON body itself.

The JSON is written last, atomically (temp file in the same directory, fsync,
`os.replace`), and is the commit point: a kill at any moment of a save leaves either
the previous checkpoint or the new one, both intact. Tensor files no JSON points to
are removed by the next successful save.

The sha256s guard against accidents, not against a JSON edited and its hash recomputed, so the
JSON is read as untrusted input: a bounded size, fields of the right types, and a tensor file
that is a plain name inside the checkpoint's own directory. `open_checkpoint` reads that much
and the tensor file's header (names, shapes), nothing more, so that a caller can check the
shapes against the model the metadata describes (`check_tensors`, e.g. on a model built on
torch's meta device) before it allocates one; `CheckpointHeader.load` then reads the tensors.
"""

from __future__ import annotations

import hashlib
import json
import re
import time
from dataclasses import dataclass
from importlib import metadata as importlib_metadata
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import load as load_safetensors
from safetensors.torch import save as save_safetensors

from mbrl.core.atomic import write_atomic
from mbrl.core.errors import UserError

FORMAT_VERSION = 1
_BODY_TYPES = {"format_version": int, "step": int, "tensor_file": str, "tensor_sha256": str, "metadata": dict}
MAX_JSON_BYTES = 64 << 20
"""Largest checkpoint JSON read (metadata holds configs, counters, RNG states and histories: kilobytes)."""
_PACKAGES = ("mbrl", "torch", "numpy", "gymnasium", "ale-py", "stable-baselines3", "safetensors")


class CheckpointError(UserError):
    """A checkpoint is missing, truncated, corrupted or does not match what loads it."""


@dataclass(frozen=True)
class Checkpoint:
    """A loaded checkpoint.

    Attributes:
        tensors: name -> tensor (on CPU).
        metadata: the caller's metadata dict as saved.
        step: the training step the checkpoint was taken at.
        path: the JSON file it was read from.
    """

    tensors: dict[str, torch.Tensor]
    metadata: dict[str, Any]
    step: int
    path: Path

    @property
    def shapes(self) -> dict[str, tuple[int, ...]]:
        """name -> shape of every tensor."""
        return {name: tuple(tensor.shape) for name, tensor in self.tensors.items()}


@dataclass(frozen=True)
class CheckpointHeader:
    """A checkpoint's verified JSON and its tensor file's header, read without the tensors (`open_checkpoint`).

    Attributes:
        metadata: the caller's metadata dict as saved (untrusted beyond its being a dict: check what you use).
        step: the training step the checkpoint was taken at.
        path: the JSON file it was read from.
        tensor_path: the tensor file, a plain name inside the JSON's directory.
        shapes: name -> shape of every tensor, from the tensor file's header.
    """

    metadata: dict[str, Any]
    step: int
    path: Path
    tensor_path: Path
    shapes: dict[str, tuple[int, ...]]
    tensor_sha256: str

    def load(self) -> Checkpoint:
        """Read the tensors, verifying the tensor file's sha256.

        Raises:
            CheckpointError: the tensor file is missing, corrupted or truncated.
        """
        try:
            blob = self.tensor_path.read_bytes()
        except FileNotFoundError:
            raise CheckpointError(f"checkpoint tensor file not found: {self.tensor_path}") from None
        if hashlib.sha256(blob).hexdigest() != self.tensor_sha256:
            raise CheckpointError(f"checkpoint {self.tensor_path} is corrupted or truncated: sha256 mismatch")
        try:
            tensors = load_safetensors(blob)
        except (SafetensorError, ValueError) as exc:
            raise CheckpointError(f"checkpoint {self.tensor_path} is not a valid safetensors file: {exc}") from None
        return Checkpoint(tensors=tensors, metadata=self.metadata, step=self.step, path=self.path)


def save_checkpoint(
    directory: Path, name: str, tensors: dict[str, torch.Tensor], metadata: dict[str, Any], step: int
) -> Path:
    """Atomically write checkpoint `name` into `directory`; returns the JSON path.

    Args:
        directory: where the checkpoint lives (created if needed).
        name: checkpoint name, e.g. "world_model".
        tensors: name -> tensor; moved to CPU and made contiguous.
        metadata: JSON-serialisable dict (configs, counters) saved beside the tensors.
        step: the training step, stored in the metadata.
    """
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    # clone: tied weights share storage, which safetensors refuses to write
    blob = save_safetensors({k: v.detach().to("cpu").contiguous().clone() for k, v in tensors.items()})
    digest = hashlib.sha256(blob).hexdigest()
    tensor_file = f"{name}-{digest[:16]}.safetensors"
    write_atomic(directory / tensor_file, blob)
    body = {
        "format_version": FORMAT_VERSION,
        "step": int(step),
        "saved_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "versions": _package_versions(),
        "tensor_file": tensor_file,
        "tensor_sha256": digest,
        "metadata": metadata,
    }
    text = json.dumps(body, sort_keys=True)
    document = {"body": body, "body_sha256": hashlib.sha256(text.encode()).hexdigest()}
    json_path = directory / f"{name}.json"
    write_atomic(json_path, json.dumps(document, indent=1, sort_keys=True).encode())
    own_file = re.compile(re.escape(name) + r"-[0-9a-f]{16}\.safetensors")
    for stale in directory.iterdir():
        if own_file.fullmatch(stale.name) and stale.name != tensor_file:
            stale.unlink(missing_ok=True)
    return json_path


def load_checkpoint(directory: Path, name: str) -> Checkpoint:
    """Read and verify checkpoint `name` from `directory` (`open_checkpoint`, then its tensors).

    Raises:
        CheckpointError: one line naming the file and the problem (missing, truncated,
            corrupted, forged, or written by an incompatible format version).
    """
    return open_checkpoint(directory, name).load()


def open_checkpoint(directory: Path, name: str) -> CheckpointHeader:
    """Read and verify checkpoint `name`'s JSON and its tensor file's header, not its tensors.

    Raises:
        CheckpointError: one line naming the file and the problem: missing, too large, not a checkpoint JSON,
            its sha256 or format version wrong, a tensor file named by a path (not a plain name inside the
            checkpoint's directory), or a tensor file whose header safetensors cannot read.
    """
    json_path = Path(directory) / f"{name}.json"
    if not json_path.exists():
        raise CheckpointError(f"checkpoint not found: {json_path}")
    if json_path.stat().st_size > MAX_JSON_BYTES:
        raise CheckpointError(f"checkpoint {json_path} is corrupted: {json_path.stat().st_size} bytes, "
                              f"more than any checkpoint JSON ({MAX_JSON_BYTES})")
    try:
        document = json.loads(json_path.read_bytes())
        body = document["body"]
        expected = document["body_sha256"]
        if not isinstance(body, dict) or not isinstance(expected, str):
            raise ValueError
    except (ValueError, KeyError, TypeError, RecursionError):
        raise CheckpointError(f"checkpoint {json_path} is corrupted: not a valid checkpoint JSON") from None
    for key, kind in _BODY_TYPES.items():
        if not isinstance(body.get(key), kind) or isinstance(body.get(key), bool):
            raise CheckpointError(f"checkpoint {json_path} is corrupted: its '{key}' is "
                                  f"{type(body.get(key)).__name__}, not {kind.__name__}")
    if hashlib.sha256(json.dumps(body, sort_keys=True).encode()).hexdigest() != expected:
        raise CheckpointError(f"checkpoint {json_path} is corrupted: sha256 mismatch")
    if body["format_version"] != FORMAT_VERSION:
        raise CheckpointError(
            f"checkpoint {json_path} has format version {body['format_version']}, "
            f"this mbrl reads version {FORMAT_VERSION}"
        )
    tensor_path = _tensor_path(json_path, body["tensor_file"])
    if not tensor_path.exists():
        raise CheckpointError(f"checkpoint tensor file not found: {tensor_path}")
    try:
        with safe_open(str(tensor_path), framework="pt") as header:  # the header only: the tensors stay on disk
            shapes = {key: tuple(header.get_slice(key).get_shape()) for key in header.keys()}
    except (SafetensorError, OSError, ValueError) as exc:
        raise CheckpointError(f"checkpoint {tensor_path} is not a valid safetensors file: {exc}") from None
    return CheckpointHeader(metadata=body["metadata"], step=body["step"], path=json_path, tensor_path=tensor_path,
                            shapes=shapes, tensor_sha256=body["tensor_sha256"])


def _tensor_path(json_path: Path, tensor_file: str) -> Path:
    """The tensor file a checkpoint JSON names, which must be a plain file name in the JSON's own directory
    (after symbolic links are followed)."""
    plain = tensor_file not in ("", ".", "..") and not any(c in tensor_file for c in "/\\\0")
    directory = json_path.parent
    if not plain or (directory / tensor_file).resolve().parent != directory.resolve():
        raise CheckpointError(f"checkpoint {json_path} is corrupted: its tensor file {tensor_file!r} is not a plain "
                              f"file name inside {directory}")
    return directory / tensor_file


def check_tensors(checkpoint: Checkpoint | CheckpointHeader, module: torch.nn.Module, prefix: str = "") -> None:
    """Check that `checkpoint`'s tensors named `prefix + key` are `module`'s state dict, by name and shape.

    Needs only shapes, so `module` may live on torch's meta device (built there, it allocates nothing), and
    `checkpoint` may be a header: a forged checkpoint is refused before any real model is made.

    Raises:
        CheckpointError: naming the first missing, unexpected or differently shaped tensor.
    """
    own = {key: tuple(value.shape) for key, value in module.state_dict().items()}
    saved = {k[len(prefix) :]: shape for k, shape in checkpoint.shapes.items() if k.startswith(prefix)}
    optional = set(getattr(module, "optional_tensors", ()))
    missing = sorted(set(own) - set(saved) - optional)
    extra = sorted(set(saved) - set(own))
    if missing or extra:
        what = f"missing tensor '{prefix}{missing[0]}'" if missing else f"unexpected tensor '{prefix}{extra[0]}'"
        raise CheckpointError(f"checkpoint {checkpoint.path} does not match the model: {what}")
    for key, shape in saved.items():
        if shape != own[key]:
            raise CheckpointError(
                f"checkpoint {checkpoint.path} does not match the model: '{prefix}{key}' has shape "
                f"{shape}, the model expects {own[key]}"
            )


def load_state_dict(module: torch.nn.Module, checkpoint: Checkpoint, prefix: str = "") -> None:
    """Load `checkpoint.tensors[prefix + key]` into `module`, checking names and shapes (`check_tensors`).

    Raises:
        CheckpointError: naming the first missing, unexpected or differently shaped tensor.
    """
    check_tensors(checkpoint, module, prefix)
    saved = {k[len(prefix) :]: v for k, v in checkpoint.tensors.items() if k.startswith(prefix)}
    optional = set(getattr(module, "optional_tensors", ()))
    module.load_state_dict(saved, strict=not optional)  # names already checked, bar the optional ones


def optimizer_tensors(optimizer: torch.optim.Optimizer, prefix: str) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """An optimizer's state as checkpoint tensors (`prefix` + "INDEX.NAME") and JSON metadata (its param groups).

    Non-tensor per-parameter state (e.g. a Python step count) goes into the metadata.
    """
    state = optimizer.state_dict()
    tensors: dict[str, torch.Tensor] = {}
    scalars: dict[str, dict[str, Any]] = {}
    for index, values in state["state"].items():
        for name, value in values.items():
            if isinstance(value, torch.Tensor):
                tensors[f"{prefix}{index}.{name}"] = value
            else:
                scalars.setdefault(str(index), {})[name] = value
    return tensors, {"param_groups": state["param_groups"], "scalars": scalars}


def load_optimizer(optimizer: torch.optim.Optimizer, checkpoint: Checkpoint, prefix: str, meta: dict[str, Any],
                   device: torch.device) -> None:
    """Restore an optimizer saved with `optimizer_tensors(optimizer, prefix)`; `meta` is the metadata it returned."""
    state: dict[str, Any] = {"state": {}, "param_groups": meta["param_groups"]}
    for index, values in meta.get("scalars", {}).items():
        state["state"].setdefault(int(index), {}).update(values)
    for key, value in checkpoint.tensors.items():
        if key.startswith(prefix):
            index, name = key[len(prefix):].split(".", 1)
            state["state"].setdefault(int(index), {})[name] = value.to(device)
    try:
        optimizer.load_state_dict(state)
    except (ValueError, KeyError) as exc:
        raise CheckpointError(f"checkpoint {checkpoint.path} does not match the optimizer: {exc}") from None


def _package_versions() -> dict[str, str]:
    versions = {}
    for package in _PACKAGES:
        try:
            versions[package] = importlib_metadata.version(package)
        except importlib_metadata.PackageNotFoundError:
            continue
    return versions
