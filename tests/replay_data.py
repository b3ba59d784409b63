"""Synthetic streams for replay buffer tests: every row carries its own id in its frame and RAM."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from mbrl.core.replay import FIRST, LIFE_LOSS, TERMINATED, TRUNCATED, ReplayBuffer

FRAME = (8, 8)


@dataclass
class Row:
    stream: int
    episode: tuple[int, int]  # (stream, episode number in that stream)
    pos: int  # index in the episode; 0 for the FIRST row
    prev: int  # id of the previous row in the episode, 0 if none
    action: int
    reward: float
    flags: int


def encode(row_id: int, shape: tuple[int, int] = FRAME) -> np.ndarray:
    frame = np.zeros(shape, dtype=np.uint8)
    frame[0, :4] = np.frombuffer(np.uint32(row_id).tobytes(), dtype=np.uint8)
    return frame


def decode(frames: np.ndarray) -> np.ndarray:
    """Row ids of frames (..., H, W); 0 for zero padding."""
    return np.ascontiguousarray(frames[..., 0, :4]).view("<u4")[..., 0].astype(np.int64)


def fill(
    buffer: ReplayBuffer, num_streams: int, vector_steps: int, seed: int, max_len: int = 12, first_id: int = 1
) -> dict[int, Row]:
    """Append interleaved episodes of random lengths to new streams; returns id -> Row.

    Each vector step appends to a random subset of the streams, as a collector whose
    sub-envs finish at different times would. Ids start at `first_id` (0 is the zero padding).
    """
    rng = np.random.default_rng(seed)
    streams = buffer.new_streams(num_streams)
    rows: dict[int, Row] = {}
    last: dict[int, int] = {}  # stream -> id of its newest row
    left: dict[int, int] = {}  # stream -> transitions left in its episode
    episodes = dict.fromkeys(streams.tolist(), -1)
    next_id = first_id
    for _ in range(vector_steps):
        active = streams[rng.random(num_streams) < 0.8]
        if len(active) == 0:
            continue
        ids, flags, actions, rewards = [], [], [], []
        for s in active.tolist():
            row_id = next_id
            next_id += 1
            if left.get(s, 0) == 0:
                episodes[s] += 1
                left[s] = int(rng.integers(1, max_len))
                row = Row(s, (s, episodes[s]), 0, 0, 0, 0.0, FIRST)
            else:
                prev = rows[last[s]]
                left[s] -= 1
                flag = LIFE_LOSS if rng.random() < 0.2 else 0
                if left[s] == 0:
                    flag |= TERMINATED if rng.random() < 0.7 else TRUNCATED
                action = int(rng.integers(0, 4))
                reward = float(rng.choice([0.0, 1.0, 4.0, -2.0]))
                row = Row(s, prev.episode, prev.pos + 1, last[s], action, reward, flag)
            rows[row_id] = row
            last[s] = row_id
            ids.append(row_id)
            flags.append(row.flags)
            actions.append(row.action)
            rewards.append(row.reward)
        frames = np.stack([encode(i, buffer.frame_shape) for i in ids])
        ram = np.stack([encode(i)[0, : buffer.ram_size] for i in ids])
        buffer.append(active, frames, np.array(actions), np.array(rewards), np.array(flags, dtype=np.uint8), ram)
    return rows


def expected_stack(rows: dict[int, Row], row_id: int, size: int) -> list[int]:
    """Ids in the frame stack of `row_id`, oldest first, 0 before the episode start."""
    ids = [row_id]
    while len(ids) < size:
        ids.insert(0, rows[ids[0]].prev if ids[0] else 0)
    return ids
