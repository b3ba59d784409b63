"""World-model training: resume after an interruption gives exactly the uninterrupted result; CLI end to end."""

from __future__ import annotations

import dataclasses
import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from PIL import Image

from mbrl.core.checkpoint import load_checkpoint
from mbrl.core.replay import FIRST, LIFE_LOSS, TERMINATED, ReplayBuffer, SequenceBatch
from mbrl.core.run import RunDir
from mbrl.eval_world_model import average_precision, evaluate
from mbrl.train_world_model import (
    CHECKPOINT,
    STATS_WINDOWS,
    Trainer,
    WorldModelTrainConfig,
    clip_each_part,
    to_train_batch,
)
from mbrl.world_models.jepa import JEPAConfig, JEPAWorldModel
from tests.cli_runs import assert_user_error, mbrl_cli
from tests.replay_data import fill
from tests.toys import EPISODES, Walker, make_buffer

MODEL = JEPAConfig(frame_size=16, patch=8, dim=16, depth=1, heads=2, summary_tokens=2, jepa_predictor_depth=1,
                   predictor_dim=16, predictor_depth=1, context=3, decoder_dim=16, rollout_steps=2)
TRAIN = WorldModelTrainConfig(batch_size=4, seq_len=3, encoder_steps=6, dynamics_steps=6, eval_every=3,
                              val_batches=1, holdout_every=3)


class Writer:
    """Tensorboard stand-in that can interrupt training, as a kill would."""

    def __init__(self, stop_after: int | None = None) -> None:
        self.calls, self.stop_after = 0, stop_after

    def add_scalar(self, *args: object) -> None:
        self.calls += 1
        if self.stop_after is not None and self.calls >= self.stop_after:
            raise KeyboardInterrupt

    def add_images(self, *args: object, **kwargs: object) -> None:
        pass


def trainer(tmp_path: Path) -> Trainer:
    buffer = ReplayBuffer((16, 16), 4, ram_size=4)
    fill(buffer, num_streams=3, vector_steps=300, seed=0)
    torch.manual_seed(0)
    run = RunDir(tmp_path)
    run.checkpoint_dir.mkdir(parents=True, exist_ok=True)
    return Trainer(run, JEPAWorldModel(MODEL), buffer, TRAIN, torch.device("cpu"), seed=0)


def drawn_by(t: Trainer) -> list[tuple[str, SequenceBatch]]:
    """Every batch `t` draws from its buffer from now on, with the trainer method that drew it."""
    drawn: list[tuple[str, SequenceBatch]] = []
    sample = t.buffer.sample

    def recording(*args: Any, **kwargs: Any) -> SequenceBatch:
        batch = sample(*args, **kwargs)
        drawn.append((sys._getframe(1).f_code.co_name, batch))
        return batch

    t.buffer.sample = recording  # type: ignore[method-assign]
    return drawn


def test_held_out_episodes_are_never_trained_on(tmp_path: Path) -> None:
    """Episodes whose id is a multiple of holdout_every (3) are held out: the updates, and the windows that
    standardise the latents, draw only the others; validation only those."""
    t = trainer(tmp_path)
    drawn = drawn_by(t)
    t.train(["encoder", "dynamics"], 3, Writer(), show_progress=False)  # updates, latent statistics, validation
    episodes: dict[str, set[int]] = {}
    for caller, batch in drawn:
        episodes.setdefault(caller, set()).update(batch.episodes.tolist())
    assert set(episodes) >= {"_update", "fit_latent_stats", "validate"}
    for caller, ids in episodes.items():
        held_out = {i for i in ids if i % TRAIN.holdout_every == 0}
        assert held_out == (ids if caller in ("validate", "_picture") else set()), caller
    assert len(episodes["_update"]) > 10 and len(episodes["validate"]) > 1


def test_resume_after_interruption_matches_uninterrupted_training(tmp_path: Path) -> None:
    straight = trainer(tmp_path / "a")
    straight.train(["encoder", "dynamics"], None, Writer(), show_progress=False)

    broken = trainer(tmp_path / "b")
    scalars_per_update = 5  # total, jepa_patches, jepa_summary, target_std, events
    with pytest.raises(KeyboardInterrupt):  # during update 5 of the encoder stage; the checkpoint is at 3
        broken.train(["encoder", "dynamics"], None, Writer(stop_after=scalars_per_update * 5), show_progress=False)
    ckpt = load_checkpoint(tmp_path / "b" / "checkpoints", CHECKPOINT)
    assert ckpt.metadata["progress"]["stage"] == "encoder" and ckpt.step == 3

    resumed = trainer(tmp_path / "b")
    resumed.restore(ckpt)
    resumed.train(["encoder", "dynamics"], None, Writer(), show_progress=False)
    assert resumed.progress["done"] == ["encoder", "dynamics"]
    for (name, a), b in zip(straight.model.state_dict().items(), resumed.model.state_dict().values()):
        torch.testing.assert_close(a, b, rtol=0, atol=0, msg=name)


def scripted_checks(t: Trainer, checks: list[dict[str, float]]) -> list[dict[str, torch.Tensor]]:
    """Make `t`'s validation return `checks` in turn (loss parts chosen by the test); returns the list the
    weights at each check are recorded in."""
    seen: list[dict[str, torch.Tensor]] = []

    def scripted(stage: str) -> dict[str, float]:
        seen.append({k: v.clone() for k, v in t.model.state_dict().items()})
        return checks[len(seen) - 1]

    t.validate = scripted  # type: ignore[method-assign]
    return seen


@pytest.mark.parametrize("totals, kept", [([0.5, 0.3, 0.4], 1), ([0.5, 0.4, 0.3], 2)])
def test_a_stage_ends_with_the_weights_of_its_best_check(tmp_path: Path, totals: list[float], kept: int) -> None:
    t = trainer(tmp_path)  # stage 1 checks the whole model by its total
    seen = scripted_checks(t, [{"total": total} for total in totals])
    t.train(["encoder"], 9, Writer(), show_progress=False)  # checks at updates 3, 6, 9
    assert len(seen) == 3 and t.progress["step"] == 9
    refit = ("latent_mean", "latent_var")  # the kept encoder's exact statistics replace the running ones
    for name, value in t.model.state_dict().items():
        if name not in refit:
            torch.testing.assert_close(value, seen[kept][name], rtol=0, atol=0, msg=name)
    assert not torch.equal(seen[1]["online.blocks.0.mlp.0.weight"], seen[2]["online.blocks.0.mlp.0.weight"])
    saved = load_checkpoint(tmp_path / "checkpoints", CHECKPOINT)  # and the run's checkpoint holds them
    torch.testing.assert_close(saved.tensors["model.online.blocks.0.mlp.0.weight"],
                               seen[kept]["online.blocks.0.mlp.0.weight"])


def test_stage_2_keeps_the_best_predictor_heads_and_decoder_each_of_its_own_check(tmp_path: Path) -> None:
    t = trainer(tmp_path)
    t.progress["done"] = ["encoder"]
    parts = {"teacher_forcing": [0.5, 0.4, 0.3, 0.35], "rollout": [0.5, 0.4, 0.3, 0.35],  # best at check 2
             "reward": [0.1, 0.05, 0.2, 0.2], "end": [0.1, 0.05, 0.2, 0.2],  # best at check 1
             "decoder": [0.3, 0.4, 0.5, 0.6]}  # best at check 0
    seen = scripted_checks(t, [{"total": 1.0, **{k: v[i] for k, v in parts.items()}} for i in range(4)])
    t.train(["dynamics"], 12, Writer(), show_progress=False)  # checks at updates 3, 6, 9, 12
    assert t.progress["step"] == 12 and t.progress["bad_checks"] == 1
    assert {name: entry["step"] for name, entry in t.progress["best"].items()} == {
        "predictor": 9, "heads": 6, "decoder": 3}
    kept = {"dynamics.": 2, "reward_head.": 1, "end_head.": 1, "decoder.": 0}
    saved = load_checkpoint(tmp_path / "checkpoints", CHECKPOINT)
    for name, value in t.model.state_dict().items():
        check = next((i for prefix, i in kept.items() if name.startswith(prefix)), None)
        if check is not None:
            torch.testing.assert_close(value, seen[check][name], rtol=0, atol=0, msg=name)
            torch.testing.assert_close(saved.tensors[f"model.{name}"], value, rtol=0, atol=0, msg=name)
    for name in ("dynamics.out.weight", "reward_head.mlp.0.weight", "decoder.proj.weight"):
        assert not torch.equal(seen[0][name], seen[3][name]), f"{name} trained: the choice mattered"


def test_a_stage_stops_when_no_part_improved_for_patience_checks(tmp_path: Path) -> None:
    t = trainer(tmp_path)
    t.progress["done"] = ["encoder"]
    t.cfg = dataclasses.replace(t.cfg, patience=2)
    part = {"teacher_forcing": [0.5, 0.4, 0.6, 0.5, 0.3], "reward": [0.1, 0.1, 0.05, 0.2, 0.2]}
    seen = scripted_checks(t, [{"total": 1.0, "rollout": 0.0, "end": 0.0, "decoder": 0.0,
                                **{k: v[i] for k, v in part.items()}} for i in range(5)])
    t.train(["dynamics"], 15, Writer(), show_progress=False)
    assert len(seen) == 5 and t.progress["step"] == 15  # a part improved at checks 0, 1 and 2: not stopped
    t2 = trainer(tmp_path / "b")
    t2.progress["done"] = ["encoder"]
    t2.cfg = dataclasses.replace(t2.cfg, patience=2)
    seen2 = scripted_checks(t2, [{"total": 1.0, "teacher_forcing": x, "rollout": x, "reward": x, "end": x,
                                  "decoder": x} for x in (0.5, 0.6, 0.7, 0.1, 0.1)])
    t2.train(["dynamics"], 15, Writer(), show_progress=False)
    assert len(seen2) == 3 and t2.progress["step"] == 9  # two checks without any part improving


def test_average_precision_closed_form() -> None:
    events = torch.tensor([True, False, True, False])
    assert average_precision(torch.tensor([0.9, 0.8, 0.7, 0.6]), events) == pytest.approx((1 + 2 / 3) / 2)
    assert average_precision(torch.tensor([0.1, 0.9, 0.2, 0.8]), events) == pytest.approx((1 / 3 + 2 / 4) / 2)
    assert average_precision(torch.full((4,), 0.5), events) == pytest.approx(0.5)  # all tied: the event rate
    assert average_precision(torch.rand(4), torch.zeros(4, dtype=torch.bool)) == 0.0


def test_each_part_is_clipped_on_its_own() -> None:
    model = torch.nn.Module()
    model.small, model.large = torch.nn.Linear(3, 1), torch.nn.Linear(3, 1)
    model.own = torch.nn.Parameter(torch.zeros(2))
    small, large = [0.1, 0.2, 0.2], [30.0, 40.0, 0.0]
    model.small.weight.grad, model.large.weight.grad = torch.tensor([small]), torch.tensor([large])
    model.own.grad = torch.tensor([3.0, 4.0])
    clip_each_part(model, 1.0)
    torch.testing.assert_close(model.small.weight.grad, torch.tensor([small]))  # under the limit: untouched
    torch.testing.assert_close(model.large.weight.grad, torch.tensor([[0.6, 0.8, 0.0]]), atol=1e-5, rtol=0)
    torch.testing.assert_close(model.own.grad, torch.tensor([0.6, 0.8]), atol=1e-5, rtol=0)


def test_stage_2_reads_cached_latents_and_encoder_updates_clear_them(tmp_path: Path,
                                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    t = trainer(tmp_path)
    t.run_updates("dynamics", 2, Writer())
    assert len(t.latent_cache) > 0
    t.model.eval()
    batch = t.buffer.sample(4, 3, np.random.default_rng(5), episodes=t.train_ids)
    cpu = torch.device("cpu")
    to_train_batch(batch, cpu, t.latent_cache)  # caches this batch's rows
    calls: list[int] = []
    encode = t.model.encode
    monkeypatch.setattr(t.model, "encode", lambda frames: calls.append(1) or encode(frames))
    torch.manual_seed(0)  # the decoder's subset of observations
    cached = t.model.loss(to_train_batch(batch, cpu, t.latent_cache), "dynamics")
    assert calls == []  # the window's latents came from the cache
    torch.manual_seed(0)
    direct = t.model.loss(to_train_batch(batch, cpu), "dynamics")
    assert calls == [1]
    for name in ("total", "teacher_forcing", "rollout", "reward", "decoder"):
        torch.testing.assert_close(cached[name], direct[name], msg=name)
    t.run_updates("encoder", 1, Writer())
    assert len(t.latent_cache) == 0  # the encoder moved: every cached latent is stale


def rare_events(episodes: int = 40, length: int = 20) -> ReplayBuffer:
    """Random 16 x 16 episodes in which 3% of the transitions lose a life and 2% score +1, 1% -1 (Breakout's
    random play: about 0.7% rewards and 2.7% life losses); each episode ends in a game over."""
    rng = np.random.default_rng(0)
    buffer = ReplayBuffer((16, 16), 4, ram_size=4)
    stream = buffer.new_streams(1)
    for _ in range(episodes):
        for pos in range(length):
            u = rng.random()
            reward = 1.0 if u < 0.02 else -1.0 if u < 0.03 else 0.0
            flags = FIRST if pos == 0 else (LIFE_LOSS if rng.random() < 0.03 else 0) | (
                TERMINATED if pos == length - 1 else 0)
            buffer.append(stream, rng.integers(0, 256, (1, 16, 16), dtype=np.uint8), np.array([int(u * 4)]),
                          np.array([0.0 if pos == 0 else reward]), np.array([flags], np.uint8))
    return buffer


def test_training_calibrates_the_heads_for_the_event_windows(tmp_path: Path) -> None:
    """The heads' logit shift is Bayes' correction from the event rates of the windows the updates draw to those of
    uniform windows of the training episodes, both measured here on 20,000 windows drawn as the trainer draws
    them: log(natural / trained) for the reward's classes -1, 0, 1, logit(natural) - logit(trained) for a game over
    and for a life loss."""
    torch.manual_seed(0)
    run = RunDir(tmp_path)
    run.checkpoint_dir.mkdir(parents=True)
    t = Trainer(run, JEPAWorldModel(MODEL), rare_events(), TRAIN, torch.device("cpu"), seed=0)
    drawn = drawn_by(t)
    t.run_updates("dynamics", 1, Writer())
    assert [caller for caller, _ in drawn] == ["_update"]
    np.testing.assert_array_equal(drawn[0][1].episodes % TRAIN.holdout_every != 0, True)

    def rates(event_fraction: float, restart_fraction: float) -> np.ndarray:
        rng = np.random.default_rng(7)
        batches = [t.buffer.sample(TRAIN.batch_size, TRAIN.seq_len, rng, episodes=t.train_ids,
                                   event_fraction=event_fraction, restart_fraction=restart_fraction)
                   for _ in range(5000)]
        rewards, ended, lost = (np.concatenate([getattr(b, name) for b in batches]).ravel()
                                for name in ("clipped_rewards", "terminated", "life_loss"))
        return np.array([*(np.mean(rewards == r) for r in (-1, 0, 1)), np.mean(ended), np.mean(lost)])

    trained, natural = rates(TRAIN.event_fraction, TRAIN.restart_fraction), rates(0.0, 0.0)
    assert (trained[[0, 2, 3, 4]] > 2 * natural[[0, 2, 3, 4]]).all()  # event windows make every event common
    logit = lambda p: np.log(p / (1 - p))  # noqa: E731
    expected = np.concatenate([np.log(natural[:3] / trained[:3]), logit(natural[3:]) - logit(trained[3:])])
    np.testing.assert_allclose(t.model.event_shift.double().numpy(), expected, atol=0.1)  # events' from -0.9 to -1.5


@pytest.mark.slow
def test_cli_train_resume_and_eval(tmp_path: Path) -> None:
    run = tmp_path / "wm"
    proc = mbrl_cli("collect", "--steps", "1200", "--run", str(run), "--preset", "smoke",
                    "--set", "env.max_episode_frames=600", "--quiet")
    assert proc.returncode == 0, proc.stderr
    assert_user_error(mbrl_cli("eval-world-model", "--run", str(run)), "checkpoint not found")
    assert_user_error(mbrl_cli("train-world-model", "--run", str(run), "--device", "cuda:7"), "device 'cuda:7'")

    proc = mbrl_cli("train-world-model", "--run", str(run), "--stage", "1", "--quiet")
    assert proc.returncode == 0, proc.stderr
    assert "trained (encoder)" in proc.stdout
    assert_user_error(mbrl_cli("train-world-model", "--run", str(run)), "pass --resume")
    proc = mbrl_cli("train-world-model", "--run", str(run), "--resume", "--quiet")
    assert proc.returncode == 0, proc.stderr
    assert "trained (encoder, dynamics)" in proc.stdout
    meta = json.loads((run / "checkpoints" / "world_model.json").read_text())["body"]
    assert meta["metadata"]["progress"]["done"] == ["encoder", "dynamics"]
    assert meta["metadata"]["config"]["num_actions"] == 4
    assert_user_error(mbrl_cli("train-world-model", "--run", str(run), "--again"), "pass --resume too")
    proc = mbrl_cli("train-world-model", "--run", str(run), "--resume", "--again", "--stage", "2", "--steps", "3",
                    "--set", "world_model.rollout_steps=2", "--quiet")
    assert proc.returncode == 0, proc.stderr
    assert "trained (encoder, dynamics)" in proc.stdout
    again = json.loads((run / "checkpoints" / "world_model.json").read_text())["body"]["metadata"]
    assert again["progress"]["step"] == 3, "the finished dynamics stage ran again, 3 updates from a new start"
    assert again["config"]["rollout_steps"] == 2

    proc = mbrl_cli("eval-world-model", "--run", str(run), "--windows", "32")
    assert proc.returncode == 0, proc.stderr
    result = json.loads((run / "world_model_eval.json").read_text())
    assert set(result["probes"]) == {"encoded", "h1", "h5", "h10"}
    assert set(result["probes"]["encoded"]) == {"paddle_x", "ball_x", "ball_y"}
    for h in ("h1", "h5", "h10"):
        assert -1.0 <= result["dynamics"][h]["cosine"] <= 1.0
        assert np.isfinite(result["decoder_psnr"][h])
    assert set(result["reward"]) == set(result["life_loss"]) == {"h1", "h5", "h10", "real"}
    real = result["life_loss"]["real"]  # heads on the 10 real transitions after each window's context
    assert real["positives"] == round(real["actual_rate"] * 32 * 10)
    assert 0.0 <= real["mean_predicted"] <= 1.0 and 0.0 <= real["f1"] <= 1.0 and 0.0 <= real["average_precision"] <= 1.0
    assert "probe R^2 [encoded]" in proc.stdout

    gif = tmp_path / "dream.gif"
    proc = mbrl_cli("dream", "--run", str(run), "--steps", "8", "--out", str(gif))
    assert proc.returncode == 0, proc.stderr
    with Image.open(gif) as image:
        assert image.size == ((64 * 2 + 2) * 3, 64 * 3) and image.n_frames >= 2
    # the run's episodes are far shorter than the most steps a dream may ask for
    assert_user_error(mbrl_cli("dream", "--run", str(run), "--steps", "10000"), "long enough")


def test_module_imports_without_gymnasium() -> None:
    """The world models stand on mbrl.core alone: no gymnasium, no SB3, no envs, agents or conductor."""
    code = ("import sys; import mbrl.world_models.jepa, mbrl.world_models.registry; "
            "allowed = ('mbrl', 'mbrl.core', 'mbrl.world_models'); "
            "bad = [m for m in sys.modules if m.split('.')[0] in ('gymnasium', 'stable_baselines3') "
            "or (m.startswith('mbrl') and not any(m == a or m.startswith(a + '.') for a in allowed))]; "
            "print(bad); sys.exit(bool(bad))")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_repeated_actions_report_what_imagination_pays_for_each_action() -> None:
    buffer = make_buffer()  # Walker: reward 0.75 for action 1, -0.25 for action 2; life lost w.p. 0.6 on action 2
    episodes = np.arange(EPISODES)
    result = evaluate(Walker(), buffer, episodes, episodes, "toy", torch.device("cpu"), windows=6, horizons=(1, 5))
    repeated = result["repeated_action"]
    assert repeated["steps"] == 5
    for action, (reward, life) in enumerate([(0.0, 0.0), (3.75, 0.0), (-1.25, 3.0)]):
        assert repeated[f"action {action}"] == pytest.approx({"reward": reward, "life_loss": life})
    assert repeated["data"] == {"reward": 0.0, "life_loss": 0.0}  # the toy buffer has neither


def test_an_encoder_stage_ends_with_latents_standardised_exactly_over_training_windows(tmp_path: Path) -> None:
    t = trainer(tmp_path)
    t.train(["encoder"], steps=3, writer=Writer(), show_progress=False)
    model = t.model
    assert isinstance(model, JEPAWorldModel)
    windows = t.buffer.sample(STATS_WINDOWS, t.cfg.seq_len, np.random.default_rng(1), episodes=t.train_ids)
    with torch.no_grad():
        latents = model.encode(torch.from_numpy(windows.frames)).flatten(0, 1)  # (N, K, dim)
    spread = latents.std(0, correction=0)
    assert latents.mean(0).abs().max() < 1e-3  # the running statistics after 3 updates are not this close
    assert torch.allclose(spread[spread > 0.5], torch.ones(()), atol=5e-3)  # 1 but for standardize's epsilon
    saved = load_checkpoint(t.run.checkpoint_dir, CHECKPOINT)
    assert torch.equal(saved.tensors["model.latent_mean"], model.latent_mean)  # saved with the stage
