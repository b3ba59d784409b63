"""Replay buffer: sequences stay inside episodes, stacks rebuild exactly, disk round trips survive kills."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest

from mbrl.core.errors import UserError
from mbrl.core.replay import FIRST, LIFE_LOSS, TERMINATED, TRUNCATED, ReplayBuffer
from tests.replay_data import FRAME, decode, expected_stack, fill

STACK = 4


@pytest.fixture
def filled() -> tuple[ReplayBuffer, dict]:
    buffer = ReplayBuffer(FRAME, STACK, ram_size=4)
    rows = fill(buffer, num_streams=5, vector_steps=400, seed=0)
    return buffer, rows


def test_windows_stay_inside_one_episode_in_order(filled: tuple[ReplayBuffer, dict]) -> None:
    buffer, rows = filled
    batch = buffer.sample(512, 6, np.random.default_rng(1))
    newest = decode(batch.frames[:, :, -1])  # (B, L+1) ids of o_0 .. o_L
    assert newest.shape == (512, 7)
    np.testing.assert_array_equal(batch.rows + 1, newest)  # the rows the observations were read from (ids 1-based)
    for window in newest:
        episode = rows[window[0]].episode
        assert all(rows[i].episode == episode for i in window)
        assert [rows[i].pos for i in window] == list(range(rows[window[0]].pos, rows[window[0]].pos + 7))
        assert all(rows[b].prev == a for a, b in zip(window[:-1], window[1:]))


def test_transition_fields_belong_to_the_row_they_lead_to(filled: tuple[ReplayBuffer, dict]) -> None:
    buffer, rows = filled
    batch = buffer.sample(256, 5, np.random.default_rng(2))
    reached = decode(batch.frames[:, 1:, -1])  # (B, L) row reached by transition t
    expect = np.vectorize(lambda i: rows[i].action)(reached)
    np.testing.assert_array_equal(batch.actions, expect)
    np.testing.assert_array_equal(batch.rewards, np.vectorize(lambda i: rows[i].reward)(reached))
    np.testing.assert_array_equal(batch.clipped_rewards, np.sign(batch.rewards))
    flags = np.vectorize(lambda i: rows[i].flags)(reached)
    np.testing.assert_array_equal(batch.terminated, flags & TERMINATED != 0)
    np.testing.assert_array_equal(batch.truncated, flags & TRUNCATED != 0)
    np.testing.assert_array_equal(batch.life_loss, flags & LIFE_LOSS != 0)
    assert not (flags & FIRST).any()
    ended = batch.terminated | batch.truncated
    assert not ended[:, :-1].any(), "an episode can only end with a window's last transition"
    np.testing.assert_array_equal(decode(batch.ram[..., None, :]), decode(batch.frames[:, :, -1]))


def test_frame_stacks_are_rebuilt_with_zero_padding(filled: tuple[ReplayBuffer, dict]) -> None:
    buffer, rows = filled
    batch = buffer.sample(256, 3, np.random.default_rng(3))
    ids = decode(batch.frames)  # (B, L+1, S)
    assert batch.frames.shape == (256, 4, STACK, *FRAME) and batch.frames.dtype == np.uint8
    padded = 0
    for b in range(256):
        for t in range(4):
            want = expected_stack(rows, int(ids[b, t, -1]), STACK)
            assert ids[b, t].tolist() == want
            padded += want[0] == 0
    assert padded > 0, "the data should include stacks that reach before an episode start"


def test_rows_actions_and_stacks_without_a_window_agree_with_windows(filled: tuple[ReplayBuffer, dict]) -> None:
    buffer, _ = filled
    ends = buffer.sample_ends(64, 4, np.random.default_rng(5), event_fraction=0.25)
    batch = buffer.sample(64, 4, np.random.default_rng(5), event_fraction=0.25)  # the same draws
    rows, actions = buffer.window_rows(ends, 4)
    np.testing.assert_array_equal(rows, batch.rows)
    np.testing.assert_array_equal(actions, batch.actions)
    stacks = buffer.stacks(rows.reshape(-1))  # first observations of episodes included: zero-padded stacks
    assert stacks.dtype == np.uint8
    np.testing.assert_array_equal(stacks, batch.frames.reshape(-1, STACK, *FRAME))
    with pytest.raises(ValueError, match="cross the start"):
        buffer.window_rows(np.array([0]), 4)


def test_counts_and_episode_filter(filled: tuple[ReplayBuffer, dict]) -> None:
    buffer, rows = filled
    assert len(buffer) == len(rows)
    assert buffer.num_steps == sum(r.pos > 0 for r in rows.values())
    assert buffer.num_episodes == sum(bool(r.flags & (TERMINATED | TRUNCATED)) for r in rows.values())
    chosen = buffer.episode_ids()[:3]
    batch = buffer.sample(64, 1, np.random.default_rng(4), episodes=chosen)
    assert set(batch.episodes.tolist()) <= set(chosen.tolist())
    with pytest.raises(ValueError, match="no stored episode holds 50"):
        buffer.sample(4, 50, np.random.default_rng(0))


def test_event_fraction_windows_end_on_an_event(filled: tuple[ReplayBuffer, dict]) -> None:
    buffer, rows = filled
    batch = buffer.sample(64, 3, np.random.default_rng(3), event_fraction=0.25)
    last = decode(batch.frames[:, -1, -1])  # row reached by each window's last transition
    event = np.array([rows[i].reward != 0 or bool(rows[i].flags & (TERMINATED | LIFE_LOSS)) for i in last])
    assert event[:16].all()
    assert not event[16:].all()  # the rest are drawn alike, events or not


def test_restart_fraction_windows_begin_after_a_lost_life(filled: tuple[ReplayBuffer, dict]) -> None:
    buffer, rows = filled
    batch = buffer.sample(64, 3, np.random.default_rng(3), event_fraction=0.25, restart_fraction=0.25)
    first = decode(batch.frames[:, 0, -1])  # row of each window's first observation
    last = decode(batch.frames[:, -1, -1])
    after_loss = np.array([bool(rows[i].flags & LIFE_LOSS) for i in first])
    event = np.array([rows[i].reward != 0 or bool(rows[i].flags & (TERMINATED | LIFE_LOSS)) for i in last])
    assert event[:16].all() and after_loss[16:32].all()  # event windows first, then restart windows
    assert not after_loss[32:].all()  # the rest are drawn alike
    assert after_loss.mean() > 0.25


def test_event_fraction_without_events_draws_all_windows_alike() -> None:
    buffer = ReplayBuffer(FRAME, STACK, ram_size=4)
    streams = buffer.new_streams(1)
    for i in range(6):
        frame = np.full((1, *FRAME), i, dtype=np.uint8)
        buffer.append(streams, frame, np.zeros(1, dtype=np.int64), np.zeros(1), np.array([FIRST if i == 0 else 0],
                      dtype=np.uint8), np.zeros((1, 4), dtype=np.uint8))
    batch = buffer.sample(4000, 2, np.random.default_rng(0), event_fraction=1.0)
    uniform = buffer.sample(4000, 2, np.random.default_rng(0), event_fraction=0.0)
    np.testing.assert_array_equal(batch.rows, uniform.rows)  # no event to oversample: the uniform draws
    ends, counts = np.unique(batch.rows[:, -1], return_counts=True)
    assert ends.tolist() == [2, 3, 4, 5]  # every window of 2 transitions in the 6-row episode ...
    assert (abs(counts - 1000) < 150).all(), counts  # ... drawn alike: 1000 each, binomial sd 27


def test_seq_len_zero_gives_single_observations(filled: tuple[ReplayBuffer, dict]) -> None:
    buffer, _ = filled
    batch = buffer.sample(8, 0, np.random.default_rng(0))
    assert batch.frames.shape == (8, 1, STACK, *FRAME)
    assert batch.actions.shape == (8, 0)


def test_bad_appends_are_rejected() -> None:
    buffer = ReplayBuffer(FRAME, STACK, ram_size=4)
    s = buffer.new_streams(2)
    frames = np.zeros((2, *FRAME), np.uint8)
    with pytest.raises(ValueError, match="not the first of an episode"):
        buffer.append(s, frames, np.zeros(2), np.zeros(2), np.zeros(2, np.uint8), np.zeros((2, 4), np.uint8))
    with pytest.raises(ValueError, match="one row per stream"):
        buffer.append(np.array([0, 0]), frames, np.zeros(2), np.zeros(2), np.full(2, FIRST, np.uint8))
    with pytest.raises(ValueError, match="uint8"):
        buffer.append(s, frames.astype(np.float32), np.zeros(2), np.zeros(2), np.full(2, FIRST, np.uint8))


def test_memory_per_stored_frame_pixel() -> None:
    buffer = ReplayBuffer((64, 64), STACK, ram_size=128)
    s = buffer.new_streams(1)
    for i in range(100):
        flag = FIRST if i == 0 else 0
        buffer.append(s, np.zeros((1, 64, 64), np.uint8), np.zeros(1), np.zeros(1), np.array([flag], np.uint8))
    assert buffer.nbytes / len(buffer) / (64 * 64) <= 1.1


def test_save_load_round_trip(tmp_path: Path) -> None:
    buffer = ReplayBuffer.open(tmp_path / "replay", FRAME, STACK, ram_size=4)
    rows = fill(buffer, num_streams=3, vector_steps=200, seed=5)
    buffer.close()
    loaded = ReplayBuffer.load(tmp_path / "replay")
    assert (len(loaded), loaded.num_steps, loaded.num_episodes) == (len(rows), buffer.num_steps, buffer.num_episodes)
    a = buffer.sample(64, 4, np.random.default_rng(9))
    b = loaded.sample(64, 4, np.random.default_rng(9))
    for x, y in zip(a, b):
        np.testing.assert_array_equal(x, y)

    # appending after a reload continues the buffer (new streams), and reloads again intact
    again = ReplayBuffer.open(tmp_path / "replay", FRAME, STACK, ram_size=4)
    more = fill(again, num_streams=2, vector_steps=50, seed=6, first_id=100_000)
    again.close()
    final = ReplayBuffer.load(tmp_path / "replay")
    assert len(final) == len(rows) + len(more)
    assert final.num_streams == 5


def test_open_rejects_other_frame_geometry(tmp_path: Path) -> None:
    ReplayBuffer.open(tmp_path, FRAME, STACK, ram_size=4).close()
    with pytest.raises(UserError, match="holds frames"):
        ReplayBuffer.open(tmp_path, (16, 16), STACK, ram_size=4)


def test_load_of_missing_buffer_is_a_user_error(tmp_path: Path) -> None:
    with pytest.raises(UserError, match="no replay buffer"):
        ReplayBuffer.load(tmp_path / "nothing")


KILLED_WRITER = textwrap.dedent(
    """
    import os, signal
    import numpy as np
    from tests.replay_data import FRAME, encode  # the subprocess runs from the repository root
    from mbrl.core.replay import FIRST, ReplayBuffer

    buffer = ReplayBuffer.open({path!r}, FRAME, 4, ram_size=4)
    s = buffer.new_streams(1)
    for i in range(1, 1000):
        frame = encode(i)[None]
        buffer.append(s, frame, np.array([i % 4]), np.array([1.0]), np.array([FIRST if i == 1 else 0], np.uint8),
                      frame[:, 0, :4])
        if i == 300:
            buffer.flush()
            print("flushed", len(buffer), flush=True)
        if i == 457:  # rows since the flush may or may not have reached the file; tear one in half and die
            buffer._file.write(b"\x07" * 40)
            buffer._file.flush()
            os.kill(os.getpid(), signal.SIGKILL)
    """
)


def test_rows_flushed_before_a_kill_load_back_intact(tmp_path: Path) -> None:
    path = tmp_path / "replay"
    script = KILLED_WRITER.format(path=str(path))
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, env=os.environ,
                          cwd=Path(__file__).resolve().parents[1])
    assert proc.returncode == -9, proc.stderr
    assert "flushed 300" in proc.stdout
    size = (path / "rows.bin").stat().st_size
    loaded = ReplayBuffer.load(path, writable=True)
    assert 300 <= len(loaded) <= 457
    assert size % loaded.dtype.itemsize == 40, "the torn record is in the file, and dropped on load"
    ids = decode(loaded.windows(np.array([len(loaded) - 1]), len(loaded) - 1).frames[0, :, -1])
    assert ids.tolist() == list(range(1, len(loaded) + 1))

    # the torn tail is cut off, so rows appended now line up and load back
    s = loaded.new_streams(1)
    loaded.append(s, np.zeros((1, *FRAME), np.uint8), np.zeros(1), np.zeros(1), np.array([FIRST], np.uint8))
    loaded.close()
    reloaded = ReplayBuffer.load(path)
    assert len(reloaded) == len(loaded)
    assert reloaded.num_streams == 2


def test_rows_that_do_not_link_up_are_reported_as_corrupted(tmp_path: Path) -> None:
    buffer = ReplayBuffer.open(tmp_path, FRAME, STACK, ram_size=4)
    fill(buffer, num_streams=2, vector_steps=30, seed=1)
    buffer.close()
    rows = np.fromfile(tmp_path / "rows.bin", dtype=buffer.dtype)
    rows["pos"][len(rows) // 2] += 3
    rows.tofile(tmp_path / "rows.bin")
    with pytest.raises(UserError, match="corrupted"):
        ReplayBuffer.load(tmp_path)


def _targets(batch) -> np.ndarray:
    """(B, L, 5) the event indicators (reward -1 / 0 / +1, game over, life loss) of a batch's transitions."""
    sign = batch.clipped_rewards
    return np.stack([sign == -1, sign == 0, sign == 1, batch.terminated, batch.life_loss], axis=-1)


def test_event_rates_are_the_expected_targets_of_sample(filled: tuple[ReplayBuffer, dict]) -> None:
    buffer, rows = filled
    seq_len, episodes = 3, buffer.episode_ids()[::2]
    every_row = np.arange(len(buffer))
    in_episodes = np.isin(buffer.windows(every_row, 0).episodes, episodes)
    ends = every_row[in_episodes & (np.array([rows[i + 1].pos for i in every_row]) >= seq_len)]
    every = _targets(buffer.windows(ends, seq_len)).mean(axis=1)  # (N, 5) per window, brute force
    last = buffer.windows(ends, seq_len)
    is_event = (last.clipped_rewards[:, -1] != 0) | last.terminated[:, -1] | last.life_loss[:, -1]
    trained, natural = buffer.event_rates(64, seq_len, episodes, event_fraction=0.25)
    np.testing.assert_allclose(natural, every.mean(axis=0))
    np.testing.assert_allclose(trained, 0.75 * every.mean(axis=0) + 0.25 * every[is_event].mean(axis=0))
    assert trained[3:].sum() > natural[3:].sum()  # events are oversampled
    np.testing.assert_allclose(buffer.event_rates(64, seq_len, episodes)[0], natural)
    after_loss = (buffer.flags(last.rows[:, 0]) & LIFE_LOSS) != 0
    assert 0 < after_loss.sum() < len(after_loss)
    both = buffer.event_rates(64, seq_len, episodes, event_fraction=0.25, restart_fraction=0.5)[0]
    np.testing.assert_allclose(both, 0.25 * every.mean(axis=0) + 0.25 * every[is_event].mean(axis=0)
                               + 0.5 * every[after_loss].mean(axis=0))

    rng = np.random.default_rng(7)  # and sample() draws them at those rates
    drawn = np.concatenate([_targets(buffer.sample(64, seq_len, rng, episodes, 0.25)).reshape(-1, 5)
                            for _ in range(300)])
    stderr = np.sqrt(trained * (1 - trained) / len(drawn) * seq_len)  # windows' transitions are correlated
    assert (np.abs(drawn.mean(axis=0) - trained) <= 4 * stderr + 1e-12).all()


