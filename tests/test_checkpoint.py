"""Tests for mbrl.core.checkpoint (safetensors + verified JSON) and mbrl.core.atomic.write_atomic."""

from __future__ import annotations

import hashlib
import json
import os
import pickle
import stat
from pathlib import Path

import pytest
import torch

import mbrl.core.atomic
import mbrl.core.checkpoint
from mbrl.core.atomic import write_atomic
from mbrl.core.checkpoint import FORMAT_VERSION, CheckpointError, load_checkpoint, load_state_dict, save_checkpoint
from mbrl.core.errors import UserError

NAME = "world_model"


# --------------------------------------------------------------------------- helpers


def _tensors() -> dict[str, torch.Tensor]:
    gen = torch.Generator().manual_seed(1234)
    return {
        "f32": torch.randn(2, 3, generator=gen),
        "i64": torch.tensor([-(2**40), -1, 0, 7, 2**40], dtype=torch.int64),
        "flags": torch.tensor([[True, False], [False, True]]),
        "scalar": torch.tensor(3.25),
        "u8": torch.arange(0, 250, 10, dtype=torch.uint8).reshape(5, 5),
        "f16": torch.tensor([0.5, -1.5, 65504.0], dtype=torch.float16),
        "empty": torch.zeros(0, 4),
    }


METADATA = {
    "config": {"env": {"id": "ALE/Breakout-v5", "frame_size": 64}, "lr": 3e-4, "tags": ["a", "b"]},
    "counters": {"frames": 123456, "episodes": 17},
    "note": None,
    "ok": True,
}


def _json_path(directory: Path) -> Path:
    return directory / f"{NAME}.json"


def _tensor_files(directory: Path, name: str = NAME) -> list[Path]:
    return sorted(directory.glob(f"{name}-*.safetensors"))


def _only_tensor_file(directory: Path) -> Path:
    files = _tensor_files(directory)
    assert len(files) == 1, files
    return files[0]


def _rewrite_body(json_path: Path, edit) -> None:
    """Edit the JSON body and recompute body_sha256 exactly as save_checkpoint does."""
    document = json.loads(json_path.read_bytes())
    edit(document["body"])
    text = json.dumps(document["body"], sort_keys=True)
    document["body_sha256"] = hashlib.sha256(text.encode()).hexdigest()
    json_path.write_text(json.dumps(document, indent=1, sort_keys=True))


def _load_error(directory: Path, name: str = NAME) -> CheckpointError:
    with pytest.raises(CheckpointError) as info:
        load_checkpoint(directory, name)
    message = str(info.value)
    assert message, "error message is empty"
    assert "\n" not in message, f"error message is not a single line: {message!r}"
    return info.value


@pytest.fixture
def saved(tmp_path: Path) -> Path:
    save_checkpoint(tmp_path, NAME, _tensors(), METADATA, step=42)
    return tmp_path


@pytest.fixture
def umask_022():
    old = os.umask(0o022)
    try:
        yield
    finally:
        os.umask(old)


# --------------------------------------------------------------------------- round trip


def test_round_trip_tensors_metadata_and_step(tmp_path: Path) -> None:
    original = _tensors()
    json_path = save_checkpoint(tmp_path, NAME, original, METADATA, step=42)
    assert json_path == _json_path(tmp_path)

    ckpt = load_checkpoint(tmp_path, NAME)
    assert ckpt.step == 42
    assert isinstance(ckpt.step, int)
    assert ckpt.path == json_path
    assert ckpt.metadata == METADATA
    assert set(ckpt.tensors) == set(original)
    for key, value in original.items():
        loaded = ckpt.tensors[key]
        assert loaded.dtype == value.dtype, key
        assert loaded.shape == value.shape, key
        assert loaded.device.type == "cpu", key
        assert torch.equal(loaded, value), key
    assert ckpt.tensors["scalar"].dim() == 0
    assert ckpt.tensors["scalar"].item() == 3.25


def test_round_trip_non_contiguous_and_grad_tensors(tmp_path: Path) -> None:
    base = torch.arange(12, dtype=torch.float32).reshape(3, 4)
    transposed = base.t()
    assert not transposed.is_contiguous()
    param = torch.nn.Parameter(torch.randn(3))
    save_checkpoint(tmp_path, NAME, {"t": transposed, "p": param}, {}, step=0)
    ckpt = load_checkpoint(tmp_path, NAME)
    assert ckpt.tensors["t"].shape == (4, 3)
    assert torch.equal(ckpt.tensors["t"], transposed)
    assert torch.equal(ckpt.tensors["p"], param.detach())
    assert not ckpt.tensors["p"].requires_grad


def test_json_records_format_versions_and_tensor_sha(saved: Path) -> None:
    document = json.loads(_json_path(saved).read_text())
    body = document["body"]
    assert body["format_version"] == FORMAT_VERSION == 1
    assert body["step"] == 42
    assert body["metadata"] == METADATA
    assert body["versions"]["torch"].split("+")[0] == torch.__version__.split("+")[0]
    assert "safetensors" in body["versions"]
    tensor_file = _only_tensor_file(saved)
    assert body["tensor_file"] == tensor_file.name
    digest = hashlib.sha256(tensor_file.read_bytes()).hexdigest()
    assert body["tensor_sha256"] == digest
    assert tensor_file.name == f"{NAME}-{digest[:16]}.safetensors"
    expected = hashlib.sha256(json.dumps(body, sort_keys=True).encode()).hexdigest()
    assert document["body_sha256"] == expected
    assert isinstance(body["saved_at"], str) and body["saved_at"].endswith("Z")


def test_save_creates_missing_directory(tmp_path: Path) -> None:
    directory = tmp_path / "a" / "b"
    save_checkpoint(directory, NAME, {"x": torch.ones(2)}, {}, step=1)
    assert torch.equal(load_checkpoint(directory, NAME).tensors["x"], torch.ones(2))


def test_module_state_dict_round_trip_gives_identical_outputs(tmp_path: Path) -> None:
    def make() -> torch.nn.Module:
        return torch.nn.Sequential(torch.nn.Linear(5, 8), torch.nn.LayerNorm(8), torch.nn.Linear(8, 3))

    torch.manual_seed(0)
    source = make()
    with torch.no_grad():  # make LayerNorm's affine parameters non-default so they must be loaded too
        source[1].weight.uniform_(0.5, 2.0)
        source[1].bias.uniform_(-1.0, 1.0)
    torch.manual_seed(1)
    target = make()
    x = torch.randn(4, 5)
    assert not torch.allclose(source(x), target(x)), "fresh module should differ before loading"

    save_checkpoint(tmp_path, "model", source.state_dict(), {"arch": "mlp"}, step=5)
    load_state_dict(target, load_checkpoint(tmp_path, "model"))
    assert torch.equal(source(x), target(x))
    for (k1, v1), (k2, v2) in zip(source.state_dict().items(), target.state_dict().items()):
        assert k1 == k2
        assert torch.equal(v1, v2)


def test_load_state_dict_with_prefix(tmp_path: Path) -> None:
    torch.manual_seed(0)
    wm, pi = torch.nn.Linear(3, 2), torch.nn.Linear(2, 4)
    tensors = {f"wm.{k}": v for k, v in wm.state_dict().items()}
    tensors.update({f"pi.{k}": v for k, v in pi.state_dict().items()})
    save_checkpoint(tmp_path, NAME, tensors, {}, step=0)
    ckpt = load_checkpoint(tmp_path, NAME)

    torch.manual_seed(1)
    wm2, pi2 = torch.nn.Linear(3, 2), torch.nn.Linear(2, 4)
    load_state_dict(wm2, ckpt, prefix="wm.")
    load_state_dict(pi2, ckpt, prefix="pi.")
    assert torch.equal(wm2.weight, wm.weight) and torch.equal(wm2.bias, wm.bias)
    assert torch.equal(pi2.weight, pi.weight) and torch.equal(pi2.bias, pi.bias)


# --------------------------------------------------------------------------- load_state_dict mismatches


def test_load_state_dict_shape_mismatch_names_tensor_and_both_shapes(tmp_path: Path) -> None:
    # same bias shape, different weight shape: the message must name 'weight' with both shapes
    save_checkpoint(tmp_path, NAME, torch.nn.Linear(3, 4).state_dict(), {}, step=0)
    ckpt = load_checkpoint(tmp_path, NAME)
    target = torch.nn.Linear(6, 4)
    before = {k: v.clone() for k, v in target.state_dict().items()}
    with pytest.raises(CheckpointError) as info:
        load_state_dict(target, ckpt)
    message = str(info.value)
    assert "\n" not in message
    assert "'weight'" in message
    assert "(4, 3)" in message
    assert "(4, 6)" in message
    assert str(ckpt.path) in message
    for key, value in target.state_dict().items():  # checked before anything was loaded
        assert torch.equal(value, before[key]), key


def test_load_state_dict_missing_key_is_named(tmp_path: Path) -> None:
    save_checkpoint(tmp_path, NAME, torch.nn.Linear(3, 4, bias=False).state_dict(), {}, step=0)
    with pytest.raises(CheckpointError) as info:
        load_state_dict(torch.nn.Linear(3, 4), load_checkpoint(tmp_path, NAME))
    message = str(info.value)
    assert "\n" not in message
    assert "missing" in message
    assert "'bias'" in message


def test_load_state_dict_missing_key_with_prefix_names_full_key(tmp_path: Path) -> None:
    save_checkpoint(tmp_path, NAME, {"wm.weight": torch.zeros(4, 3)}, {}, step=0)
    with pytest.raises(CheckpointError, match=r"missing tensor 'wm\.bias'"):
        load_state_dict(torch.nn.Linear(3, 4), load_checkpoint(tmp_path, NAME), prefix="wm.")


def test_load_state_dict_unexpected_key_is_named(tmp_path: Path) -> None:
    tensors = dict(torch.nn.Linear(3, 4).state_dict())
    tensors["extra"] = torch.zeros(1)
    save_checkpoint(tmp_path, NAME, tensors, {}, step=0)
    with pytest.raises(CheckpointError, match=r"unexpected tensor 'extra'"):
        load_state_dict(torch.nn.Linear(3, 4), load_checkpoint(tmp_path, NAME))


# --------------------------------------------------------------------------- rejection of bad files


def test_checkpoint_error_is_a_user_error() -> None:
    assert issubclass(CheckpointError, UserError)
    assert CheckpointError is not UserError


def test_flipped_byte_in_tensor_data_is_rejected(saved: Path) -> None:
    tensor_file = _only_tensor_file(saved)
    blob = bytearray(tensor_file.read_bytes())
    header_len = int.from_bytes(blob[:8], "little")
    data_start = 8 + header_len
    assert data_start < len(blob), "checkpoint has no tensor data region"
    position = data_start + (len(blob) - data_start) // 2
    blob[position] ^= 0x01
    tensor_file.write_bytes(bytes(blob))

    err = _load_error(saved)
    assert "sha256" in str(err)
    assert tensor_file.name in str(err)


@pytest.mark.parametrize("keep", [0, 8, 20, -1], ids=["empty", "8-bytes", "20-bytes", "minus-1"])
def test_truncated_tensor_file_is_rejected(saved: Path, keep: int) -> None:
    tensor_file = _only_tensor_file(saved)
    blob = tensor_file.read_bytes()
    tensor_file.write_bytes(blob[:keep])
    err = _load_error(saved)
    assert tensor_file.name in str(err)
    assert "truncated" in str(err) or "sha256" in str(err)


def test_missing_json_is_rejected(tmp_path: Path) -> None:
    err = _load_error(tmp_path)
    assert "not found" in str(err)
    assert f"{NAME}.json" in str(err)


def test_missing_json_next_to_orphan_tensor_file_is_rejected(saved: Path) -> None:
    _json_path(saved).unlink()
    err = _load_error(saved)
    assert "not found" in str(err)


def test_edited_json_body_is_rejected(saved: Path) -> None:
    json_path = _json_path(saved)
    document = json.loads(json_path.read_text())
    document["body"]["step"] = 43  # edit without fixing the sha
    json_path.write_text(json.dumps(document, indent=1, sort_keys=True))
    err = _load_error(saved)
    assert "corrupted" in str(err)
    assert str(json_path) in str(err)


def test_edited_json_metadata_is_rejected(saved: Path) -> None:
    json_path = _json_path(saved)
    text = json_path.read_text()
    assert "123456" in text
    json_path.write_text(text.replace("123456", "123457"))
    assert "corrupted" in str(_load_error(saved))


@pytest.mark.parametrize(
    "content",
    [b"this is not json {", b"", b"\xff\xfe\x00garbage", b"[1, 2, 3]", b'"a string"', b'{"body": {}}', b"null"],
    ids=["garbage", "empty", "binary", "list", "string", "no-sha", "null"],
)
def test_json_that_is_not_a_checkpoint_is_rejected(saved: Path, content: bytes) -> None:
    _json_path(saved).write_bytes(content)
    err = _load_error(saved)
    assert "corrupted" in str(err)


def test_other_format_version_is_rejected(saved: Path) -> None:
    _rewrite_body(_json_path(saved), lambda body: body.update(format_version=FORMAT_VERSION + 1))
    err = _load_error(saved)
    assert "format version" in str(err)
    assert str(FORMAT_VERSION + 1) in str(err)


def test_deleted_tensor_file_is_rejected(saved: Path) -> None:
    tensor_file = _only_tensor_file(saved)
    tensor_file.unlink()
    err = _load_error(saved)
    assert "not found" in str(err)
    assert tensor_file.name in str(err)


def test_tensor_file_swapped_for_another_checkpoints_is_rejected(tmp_path: Path) -> None:
    save_checkpoint(tmp_path / "a", NAME, {"x": torch.zeros(3)}, {}, step=1)
    save_checkpoint(tmp_path / "b", NAME, {"x": torch.ones(3)}, {}, step=2)
    a_file, b_file = _only_tensor_file(tmp_path / "a"), _only_tensor_file(tmp_path / "b")
    a_file.write_bytes(b_file.read_bytes())  # valid safetensors, wrong content
    assert "sha256" in str(_load_error(tmp_path / "a"))


# --------------------------------------------------------------------------- never unpickles


def test_tensor_file_is_safetensors(saved: Path) -> None:
    blob = _only_tensor_file(saved).read_bytes()
    header_len = int.from_bytes(blob[:8], "little")
    assert 0 < header_len <= len(blob) - 8
    assert blob[8:9] == b"{"
    header = json.loads(blob[8 : 8 + header_len])
    tensor_names = set(header) - {"__metadata__"}
    assert tensor_names == set(_tensors())
    assert header["f32"]["dtype"] == "F32"
    assert header["i64"]["dtype"] == "I64"
    assert header["flags"]["dtype"] == "BOOL"
    assert header["scalar"]["shape"] == []
    assert not blob.startswith(b"\x80"), "looks like a pickle"
    assert not blob.startswith(b"PK"), "looks like a torch.save zip"


class _Payload:
    """Unpickling this opens (creates) `path`."""

    def __init__(self, path: Path) -> None:
        self.path = str(path)

    def __reduce__(self):
        return (open, (self.path, "w"))


def test_pickle_payload_in_place_of_tensors_is_not_executed(saved: Path, tmp_path: Path, monkeypatch) -> None:
    # sanity: the payload really is live when unpickled
    canary = tmp_path / "canary"
    pickle.loads(pickle.dumps(_Payload(canary))).close()
    assert canary.exists()

    marker = tmp_path / "pwned"
    payload = pickle.dumps({"weight": _Payload(marker)})
    tensor_file = _only_tensor_file(saved)
    tensor_file.write_bytes(payload)
    # fix up both hashes, so that only the format check can stop the load
    _rewrite_body(_json_path(saved), lambda body: body.update(tensor_sha256=hashlib.sha256(payload).hexdigest()))

    def forbidden(*args, **kwargs):
        raise AssertionError("load_checkpoint unpickled something")

    monkeypatch.setattr(torch, "load", forbidden)
    monkeypatch.setattr(pickle, "loads", forbidden)
    monkeypatch.setattr(pickle, "load", forbidden)

    err = _load_error(saved)
    assert "safetensors" in str(err)
    assert tensor_file.name in str(err)
    assert not marker.exists()


def test_torch_save_file_in_place_of_tensors_is_rejected(saved: Path, tmp_path: Path) -> None:
    scratch = tmp_path / "scratch.pt"
    torch.save({"weight": torch.ones(2)}, scratch)
    blob = scratch.read_bytes()
    _only_tensor_file(saved).write_bytes(blob)
    _rewrite_body(_json_path(saved), lambda body: body.update(tensor_sha256=hashlib.sha256(blob).hexdigest()))
    assert "safetensors" in str(_load_error(saved))


# --------------------------------------------------------------------------- atomicity


@pytest.mark.parametrize("failing_call", [1, 2], ids=["crash-on-tensor-write", "crash-on-json-write"])
def test_crash_while_saving_leaves_previous_checkpoint_intact(tmp_path: Path, monkeypatch, failing_call: int) -> None:
    a_tensors = {"w": torch.arange(6, dtype=torch.float32).reshape(2, 3), "n": torch.tensor(1)}
    save_checkpoint(tmp_path, NAME, a_tensors, {"which": "A"}, step=10)
    a_json = _json_path(tmp_path).read_bytes()

    calls = []
    real_write_atomic = mbrl.core.checkpoint.write_atomic

    def crashing_write_atomic(path, data):
        calls.append(Path(path))
        if len(calls) == failing_call:
            raise RuntimeError("simulated crash")
        real_write_atomic(path, data)

    monkeypatch.setattr(mbrl.core.checkpoint, "write_atomic", crashing_write_atomic)
    with pytest.raises(RuntimeError, match="simulated crash"):
        save_checkpoint(tmp_path, NAME, {"w": torch.full((2, 3), 9.0), "n": torch.tensor(2)}, {"which": "B"}, 20)
    assert len(calls) == failing_call
    if failing_call == 2:
        assert calls[1] == _json_path(tmp_path)  # the JSON is the second write: the commit point
    monkeypatch.setattr(mbrl.core.checkpoint, "write_atomic", real_write_atomic)

    assert _json_path(tmp_path).read_bytes() == a_json
    ckpt = load_checkpoint(tmp_path, NAME)
    assert ckpt.step == 10
    assert ckpt.metadata == {"which": "A"}
    assert set(ckpt.tensors) == {"w", "n"}
    for key, value in a_tensors.items():
        assert torch.equal(ckpt.tensors[key], value)

    # the next successful save commits and removes the orphaned tensor file of the failed save
    save_checkpoint(tmp_path, NAME, {"w": torch.zeros(2, 3), "n": torch.tensor(3)}, {"which": "C"}, 30)
    ckpt = load_checkpoint(tmp_path, NAME)
    assert ckpt.step == 30 and ckpt.metadata == {"which": "C"}
    assert torch.equal(ckpt.tensors["w"], torch.zeros(2, 3))
    assert len(_tensor_files(tmp_path)) == 1


def test_second_save_replaces_and_removes_stale_files(tmp_path: Path) -> None:
    save_checkpoint(tmp_path, NAME, {"w": torch.zeros(3)}, {"v": 1}, step=1)
    first_file = _only_tensor_file(tmp_path)
    save_checkpoint(tmp_path, NAME, {"w": torch.ones(3)}, {"v": 2}, step=2)
    second_file = _only_tensor_file(tmp_path)
    assert second_file != first_file
    assert not first_file.exists()

    names = sorted(p.name for p in tmp_path.iterdir())
    assert names == sorted([f"{NAME}.json", second_file.name])
    assert not [n for n in names if n.endswith(".tmp") or n.startswith(".")]
    ckpt = load_checkpoint(tmp_path, NAME)
    assert ckpt.step == 2 and ckpt.metadata == {"v": 2}
    assert torch.equal(ckpt.tensors["w"], torch.ones(3))


def test_saving_identical_tensors_twice_keeps_the_file(tmp_path: Path) -> None:
    save_checkpoint(tmp_path, NAME, {"w": torch.ones(3)}, {}, step=1)
    save_checkpoint(tmp_path, NAME, {"w": torch.ones(3)}, {}, step=2)
    assert len(_tensor_files(tmp_path)) == 1
    assert load_checkpoint(tmp_path, NAME).step == 2


def test_checkpoints_with_different_names_coexist(tmp_path: Path) -> None:
    save_checkpoint(tmp_path, "actor", {"w": torch.zeros(2)}, {}, step=1)
    save_checkpoint(tmp_path, "critic", {"w": torch.ones(2)}, {}, step=2)
    save_checkpoint(tmp_path, "actor", {"w": torch.full((2,), 5.0)}, {}, step=3)
    assert torch.equal(load_checkpoint(tmp_path, "critic").tensors["w"], torch.ones(2))
    assert torch.equal(load_checkpoint(tmp_path, "actor").tensors["w"], torch.full((2,), 5.0))


def test_saving_a_name_does_not_delete_checkpoint_whose_name_extends_it(tmp_path: Path) -> None:
    save_checkpoint(tmp_path, "wm-ema", {"w": torch.ones(2)}, {}, step=1)
    save_checkpoint(tmp_path, "wm", {"w": torch.zeros(2)}, {}, step=1)
    assert torch.equal(load_checkpoint(tmp_path, "wm-ema").tensors["w"], torch.ones(2))


def test_state_dict_with_tied_weights_can_be_saved(tmp_path: Path) -> None:
    model = torch.nn.ModuleDict({"embed": torch.nn.Embedding(4, 3), "out": torch.nn.Linear(3, 4, bias=False)})
    model["out"].weight = model["embed"].weight
    save_checkpoint(tmp_path, NAME, model.state_dict(), {}, step=0)
    fresh = torch.nn.ModuleDict({"embed": torch.nn.Embedding(4, 3), "out": torch.nn.Linear(3, 4, bias=False)})
    load_state_dict(fresh, load_checkpoint(tmp_path, NAME))
    assert torch.equal(fresh["out"].weight, model["embed"].weight)


# --------------------------------------------------------------------------- write_atomic


def test_write_atomic_creates_and_fully_replaces_content(tmp_path: Path) -> None:
    path = tmp_path / "file.bin"
    write_atomic(path, b"x" * 10_000)
    assert path.read_bytes() == b"x" * 10_000
    write_atomic(path, b"short")
    assert path.read_bytes() == b"short"
    write_atomic(path, b"")
    assert path.read_bytes() == b""
    assert [p.name for p in tmp_path.iterdir()] == ["file.bin"]


def test_write_atomic_permissions_follow_umask_not_0600(tmp_path: Path, umask_022) -> None:
    path = tmp_path / "file.txt"
    write_atomic(path, b"data")
    mode = stat.S_IMODE(path.stat().st_mode)
    assert mode & 0o044 != 0, oct(mode)
    assert mode == 0o644, oct(mode)


def test_write_atomic_respects_a_strict_umask(tmp_path: Path) -> None:
    old = os.umask(0o077)
    try:
        write_atomic(tmp_path / "secret", b"data")
    finally:
        os.umask(old)
    assert stat.S_IMODE((tmp_path / "secret").stat().st_mode) == 0o600


def test_checkpoint_files_are_group_and_world_readable(tmp_path: Path, umask_022) -> None:
    save_checkpoint(tmp_path, NAME, {"x": torch.ones(1)}, {}, step=0)
    for path in [_json_path(tmp_path), _only_tensor_file(tmp_path)]:
        mode = stat.S_IMODE(path.stat().st_mode)
        assert mode & 0o044 == 0o044, (path.name, oct(mode))


def test_write_atomic_failure_keeps_old_file_and_leaves_no_temp(tmp_path: Path, monkeypatch) -> None:
    path = tmp_path / "state.json"
    write_atomic(path, b"old contents")

    def failing_replace(src, dst):
        raise OSError("simulated failure in os.replace")

    monkeypatch.setattr(mbrl.core.atomic.os, "replace", failing_replace)
    with pytest.raises(OSError, match="simulated failure"):
        write_atomic(path, b"new contents")
    monkeypatch.undo()

    assert path.read_bytes() == b"old contents"
    assert [p.name for p in tmp_path.iterdir()] == ["state.json"]
