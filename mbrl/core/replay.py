"""Replay buffer: every frame stored once as uint8, contiguous sequence sampling, kill-safe on disk.

Layout. Each environment of a collector writes one *stream*: the observations it sees, in
order, across episodes. Every observation is one row holding only its newest frame (a
4-frame stack is rebuilt from the rows before it, so no frame is stored twice), the console
RAM, and the transition that led to it: the action taken at the previous observation, the
raw reward and the flags TERMINATED / TRUNCATED / LIFE_LOSS. A reset observation has the
flag FIRST and no incoming transition. Rows of many streams interleave in one array; each
row records the previous row of its episode, its position in the episode and its episode id,
so windows are gathered by following those links, with no per-episode index to maintain.

On disk, `replay/rows.bin` holds the same fixed-size records, appended in order, and
`replay/meta.json` the frame geometry and the game's action count (absent in buffers written
before it was stored). A kill can cut only the last record short; loading drops that partial
record, so everything flushed before the kill loads back intact. Rows are checked as they are
appended and when they are loaded: actions inside the action space, finite rewards, links that
join up; a file that fails is refused with its name and its first bad row.
"""

from __future__ import annotations

import functools
import json
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO, ClassVar, NamedTuple

import numpy as np

from mbrl.core.atomic import write_atomic
from mbrl.core.config import check_ranges
from mbrl.core.errors import UserError

FORMAT_VERSION = 1
FIRST, TERMINATED, TRUNCATED, LIFE_LOSS = 1, 2, 4, 8
_WRITE_BUFFER = 1 << 20  # appends reach the OS in large writes; flush() makes them durable
_MAX_REWARD = float(np.finfo(np.float32).max)  # rewards are stored as float32: larger ones would be infinite
_META_LIMITS = {"frame_side": 1024, "frame_stack": 64, "ram_size": 1 << 16, "num_actions": 1 << 16, "streams": 1 << 24}
"""Bounds of what a meta.json or rows.bin may declare (a corrupted one must not size a huge allocation)."""


@dataclass(frozen=True)
class ReplayConfig:
    """Replay buffer settings.

    Attributes:
        flush_every: vector-env steps between flushes (fsync) of new rows to disk; a kill
            loses at most this many steps.
    """

    flush_every: int = 250

    ranges: ClassVar[dict[str, str]] = {"flush_every": "[1, 1_000_000]"}

    def __post_init__(self) -> None:
        check_ranges(self)


class SequenceBatch(NamedTuple):
    """`B` windows of `L` consecutive transitions, each inside one episode.

    Attributes:
        frames: uint8 (B, L+1, S, H, W) frame stacks of observations o_0 .. o_L.
        ram: uint8 (B, L+1, R) console RAM at o_0 .. o_L.
        actions: int64 (B, L) action a_t taken at o_t.
        rewards: float32 (B, L) raw reward of transition t (unclipped, for scoring).
        clipped_rewards: float32 (B, L) sign of the raw reward (for training).
        terminated: bool (B, L) the game ended with transition t.
        truncated: bool (B, L) the episode was cut (time limit) with transition t.
        life_loss: bool (B, L) a life was lost in transition t.
        episodes: int64 (B,) episode id of each window.
        rows: int64 (B, L+1) buffer rows of o_0 .. o_L (e.g. to cache per-observation results).
    """

    frames: np.ndarray
    ram: np.ndarray
    actions: np.ndarray
    rewards: np.ndarray
    clipped_rewards: np.ndarray
    terminated: np.ndarray
    truncated: np.ndarray
    life_loss: np.ndarray
    episodes: np.ndarray
    rows: np.ndarray


def split_episodes(buffer: ReplayBuffer, holdout_every: int) -> tuple[np.ndarray, np.ndarray]:
    """(train, held-out) episode ids: ids that are multiples of `holdout_every` are held out.

    The rule depends on the id alone, so the split never changes as the buffer grows.
    """
    ids = buffer.episode_ids()
    held = ids % holdout_every == 0
    return ids[~held], ids[held]


def record_dtype(frame_shape: tuple[int, int], ram_size: int) -> np.dtype:
    """The packed record of one row, in memory and on disk."""
    return np.dtype(
        [
            ("frame", np.uint8, frame_shape),
            ("ram", np.uint8, (ram_size,)),
            ("action", "<i4"),
            ("reward", "<f4"),
            ("flags", np.uint8),
            ("stream", "<i4"),
            ("prev", "<i8"),  # previous row of the same episode, -1 for a FIRST row
            ("pos", "<i4"),  # rows since the episode's FIRST row
            ("episode", "<i4"),  # episode id, in order of the episodes' FIRST rows
        ]
    )


def replay_bytes(directory: Path, frame_shape: tuple[int, int], ram_size: int, new_rows: int) -> int:
    """Memory of the buffer in `directory` (none there yet counts as empty) once `new_rows` more rows are appended:
    the buffer holds every row in memory, the stored ones (rows.bin) and the new ones alike."""
    rows = Path(directory) / "rows.bin"
    stored = rows.stat().st_size if rows.exists() else 0
    return stored + max(new_rows, 0) * record_dtype(frame_shape, ram_size).itemsize


class ReplayBuffer:
    """Rows of interleaved streams, sampled as within-episode sequences.

    Args:
        frame_shape: (H, W) of one grayscale frame.
        frame_stack: S, frames per observation.
        ram_size: bytes of console RAM stored per row (0 for none).
        directory: where rows are persisted (`None`: memory only).
        num_actions: the game's action count: appended actions must lie in [0, num_actions) (None: unknown,
            any action >= 0).
    """

    def __init__(
        self, frame_shape: tuple[int, int], frame_stack: int, ram_size: int = 128, directory: Path | None = None,
        num_actions: int | None = None,
    ) -> None:
        self.frame_shape: tuple[int, int] = (int(frame_shape[0]), int(frame_shape[1]))
        self.frame_stack = int(frame_stack)
        self.ram_size = int(ram_size)
        self.directory = Path(directory) if directory is not None else None
        self.num_actions = None if num_actions is None else int(num_actions)
        self.dtype = record_dtype(self.frame_shape, self.ram_size)
        self._size = 0
        self._rows = np.empty(0, self.dtype)
        self._ends_memo: dict[tuple[str, int, bytes | None], np.ndarray] = {}  # see _remembered
        self._ends_size = 0
        self._stream_last = np.empty(0, np.int64)  # per stream: its newest row, -1 before any
        self._num_episodes_started = 0
        self._file: BinaryIO | None = None
        self._unflushed = 0

    # ---- creation and persistence -------------------------------------------------------

    @classmethod
    def open(
        cls, directory: Path, frame_shape: tuple[int, int], frame_stack: int, ram_size: int = 128,
        num_actions: int | None = None,
    ) -> ReplayBuffer:
        """Load the buffer in `directory` for appending, or create it there if it does not exist.

        Args:
            num_actions: the game's action count, stored in the buffer's metadata (and checked against the
                stored rows of a buffer that did not store it yet); None: unknown.

        Raises:
            UserError: the existing buffer stores frames of another geometry, or actions of another game, or
                is corrupted.
        """
        directory = Path(directory)
        meta_path = directory / "meta.json"
        if meta_path.exists():
            buffer = cls.load(directory, writable=True, num_actions=num_actions)
            want = (tuple(frame_shape), int(frame_stack), int(ram_size))
            have = (buffer.frame_shape, buffer.frame_stack, buffer.ram_size)
            if want != have:
                buffer.close()
                raise UserError(
                    f"replay buffer {directory} holds frames {have[0]} x{have[1]} with {have[2]} RAM bytes; "
                    f"this env gives {want[0]} x{want[1]} with {want[2]}"
                )
            if num_actions is not None and "num_actions" not in json.loads(meta_path.read_text()):
                buffer._write_meta()  # an older buffer learns its action count (its rows were checked against it)
            return buffer
        directory.mkdir(parents=True, exist_ok=True)
        buffer = cls(frame_shape, frame_stack, ram_size, directory, num_actions)
        buffer._write_meta()
        buffer._file = open(directory / "rows.bin", "ab", buffering=_WRITE_BUFFER)  # noqa: SIM115 (closed by close())
        return buffer

    def _write_meta(self) -> None:
        assert self.directory is not None
        meta = {
            "format_version": FORMAT_VERSION,
            "frame_shape": list(self.frame_shape),
            "frame_stack": self.frame_stack,
            "ram_size": self.ram_size,
            **({} if self.num_actions is None else {"num_actions": self.num_actions}),
        }
        write_atomic(self.directory / "meta.json", json.dumps(meta, indent=1).encode())

    @classmethod
    def load(cls, directory: Path, writable: bool = False, num_actions: int | None = None) -> ReplayBuffer:
        """Load a saved buffer; a partial last record (a kill mid-write) is dropped.

        Args:
            num_actions: the action count the caller's game has: the stored rows are checked against it (and
                it must equal the one the buffer stored, if it stored one); None: the stored one, if any.

        Raises:
            UserError: the directory holds no readable buffer, or its rows are corrupted (an action outside
                the action space, a reward that is not finite, rows that do not link up), naming the file
                and the first bad row.
        """
        directory = Path(directory)
        meta_path, rows_path = directory / "meta.json", directory / "rows.bin"
        try:
            meta = json.loads(meta_path.read_text())
            shape, stack, ram = tuple(meta["frame_shape"]), meta["frame_stack"], meta["ram_size"]
            stored_actions = meta.get("num_actions")
            limits = _META_LIMITS
            if not (len(shape) == 2 and all(_int_in(side, 1, limits["frame_side"]) for side in shape)
                    and _int_in(stack, 1, limits["frame_stack"]) and _int_in(ram, 0, limits["ram_size"])
                    and (stored_actions is None or _int_in(stored_actions, 1, limits["num_actions"]))):
                raise ValueError
        except FileNotFoundError:
            raise UserError(f"no replay buffer in {directory} (missing {meta_path.name})") from None
        except (ValueError, KeyError, TypeError, AttributeError):
            raise UserError(f"replay buffer metadata {meta_path} is corrupted") from None
        if meta.get("format_version") != FORMAT_VERSION:
            raise UserError(f"replay buffer {directory} has format version {meta.get('format_version')}")
        if num_actions is not None and stored_actions is not None and num_actions != stored_actions:
            raise UserError(f"replay buffer {directory} holds play of a game with {stored_actions} actions; "
                            f"this one has {num_actions}")
        buffer = cls(shape, stack, ram, directory, num_actions if num_actions is not None else stored_actions)
        size = rows_path.stat().st_size if rows_path.exists() else 0
        whole = size // buffer.dtype.itemsize
        rows = np.fromfile(rows_path, dtype=buffer.dtype, count=whole) if whole else np.empty(0, buffer.dtype)
        problem = _first_problem(rows, buffer.num_actions)
        if problem:
            raise UserError(f"replay buffer {rows_path} is corrupted: {problem}")
        buffer._rows, buffer._size = rows, len(rows)
        if len(rows):
            buffer._stream_last = np.full(int(rows["stream"].max()) + 1, -1, dtype=np.int64)
            np.maximum.at(buffer._stream_last, rows["stream"], np.arange(len(rows)))
            buffer._num_episodes_started = int(rows["episode"].max()) + 1
        if writable:
            if size != whole * buffer.dtype.itemsize:
                os.truncate(rows_path, whole * buffer.dtype.itemsize)  # realign appends after a torn write
            buffer._file = open(rows_path, "ab", buffering=_WRITE_BUFFER)  # noqa: SIM115
        return buffer

    def flush(self) -> None:
        """Make every appended row durable on disk."""
        if self._file is not None and self._unflushed:
            self._file.flush()
            os.fsync(self._file.fileno())
            self._unflushed = 0

    def close(self) -> None:
        """Flush and close the file; the buffer stays readable in memory."""
        self.flush()
        if self._file is not None:
            self._file.close()
            self._file = None

    def __enter__(self) -> ReplayBuffer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # ---- writing ------------------------------------------------------------------------

    def new_streams(self, count: int) -> np.ndarray:
        """Ids for `count` new streams (one per environment of a collector)."""
        start = len(self._stream_last)
        self._stream_last = np.concatenate([self._stream_last, np.full(count, -1, dtype=np.int64)])
        return np.arange(start, start + count, dtype=np.int64)

    def append(
        self,
        streams: np.ndarray,
        frames: np.ndarray,
        actions: np.ndarray,
        rewards: np.ndarray,
        flags: np.ndarray,
        ram: np.ndarray | None = None,
    ) -> None:
        """Append one row to each of the given streams.

        Args:
            streams: int (K,) distinct stream ids from `new_streams`.
            frames: uint8 (K, H, W) newest frame of each observation.
            actions: int (K,) action that led to each observation (ignored on FIRST rows).
            rewards: float (K,) raw reward of that transition.
            flags: uint8 (K,) FIRST / TERMINATED / TRUNCATED / LIFE_LOSS bits.
            ram: uint8 (K, R) console RAM, or None when the buffer stores none.

        Raises:
            ValueError: a row that cannot be stored (naming the buffer's file and the row): an action outside
                [0, num_actions), a reward that is not finite, a stream that does not begin with a FIRST row.
        """
        n = len(streams)
        if len(np.unique(streams)) != n:
            raise ValueError("append takes at most one row per stream")
        if frames.shape != (n, *self.frame_shape) or frames.dtype != np.uint8:
            raise ValueError(f"frames must be uint8 {(n, *self.frame_shape)}, got {frames.dtype} {frames.shape}")
        first = (flags & FIRST) != 0
        bad = _bad_transitions(np.asarray(actions), np.asarray(rewards, dtype=np.float64), ~first, self.num_actions)
        if bad is not None:
            where = self.directory / "rows.bin" if self.directory is not None else "in memory"
            raise ValueError(f"replay buffer {where}: the row appended to stream {int(streams[bad[0]])} (it would be "
                             f"row {self._size + bad[0]}) has {bad[1]}")
        prev = np.where(first, -1, self._stream_last[streams])
        if np.any(prev[~first] < 0):
            raise ValueError("a stream begins with a row that is not the first of an episode")
        start = self._size
        self._grow(start + n)
        earlier = np.maximum(prev, 0)
        block = self._rows[start : start + n]
        block["frame"] = frames
        block["ram"] = 0 if ram is None else ram
        block["action"] = np.where(first, 0, actions)
        block["reward"] = np.where(first, 0.0, rewards)
        block["flags"] = flags
        block["stream"] = streams
        block["prev"] = prev
        block["pos"] = np.where(first, 0, self._rows["pos"][earlier] + 1)
        new_ids = self._num_episodes_started + np.cumsum(first) - 1
        block["episode"] = np.where(first, new_ids, self._rows["episode"][earlier])
        self._num_episodes_started += int(first.sum())
        self._stream_last[streams] = np.arange(start, start + n)
        self._size += n
        if self._file is not None:
            self._file.write(block.tobytes())
            self._unflushed += n

    # ---- reading ------------------------------------------------------------------------

    def __len__(self) -> int:
        """Number of stored rows (observations)."""
        return self._size

    @property
    def num_steps(self) -> int:
        """Stored transitions: rows that are not the first of an episode."""
        return int(np.count_nonzero(self._rows["flags"][: self._size] & FIRST == 0))

    @property
    def num_episodes(self) -> int:
        """Finished episodes (terminated or truncated)."""
        return int(np.count_nonzero(self._rows["flags"][: self._size] & (TERMINATED | TRUNCATED)))

    @property
    def nbytes(self) -> int:
        """Bytes of stored rows, links included (excluding unused capacity)."""
        return self._size * self.dtype.itemsize

    @property
    def num_streams(self) -> int:
        """Streams ever started (one per sub-env per collector)."""
        return len(self._stream_last)

    def episode_ids(self) -> np.ndarray:
        """Ids of the episodes that have at least one stored row, ascending."""
        return np.unique(self._rows["episode"][: self._size])

    def sample(
        self, batch_size: int, seq_len: int, rng: np.random.Generator, episodes: np.ndarray | None = None,
        event_fraction: float = 0.0, restart_fraction: float = 0.0,
    ) -> SequenceBatch:
        """Sample `batch_size` windows of `seq_len` transitions, each inside one episode.

        Args:
            batch_size: B.
            seq_len: L, transitions per window (0 gives single observations).
            rng: the source of randomness.
            episodes: if given, only windows from these episode ids (e.g. a held-out split).
            event_fraction: share of the windows drawn among those whose last transition is an event
                (a nonzero reward, a life loss or a game over), so that rare events reach the reward and
                termination heads often enough to learn them (0 samples all windows alike; with no event
                windows stored, all windows are drawn alike).
            restart_fraction: share of the windows drawn among those whose first observation follows a
                lost life, so that what happens after one (in Breakout: the ball waits until FIRE serves
                it) is trained on as often as asked (drawn after the event windows, from the rest of
                the batch; 0 draws none).

        Raises:
            ValueError: no episode holds `seq_len` transitions.
        """
        return self.windows(self.sample_ends(batch_size, seq_len, rng, episodes, event_fraction, restart_fraction),
                            seq_len)

    def sample_ends(
        self, batch_size: int, seq_len: int, rng: np.random.Generator, episodes: np.ndarray | None = None,
        event_fraction: float = 0.0, restart_fraction: float = 0.0,
    ) -> np.ndarray:
        """int64 (B,) the rows that end the windows `sample` draws with the same arguments and generator state
        (for callers that need a window's rows and actions but not its frames: see `window_rows`)."""
        ends = self._window_ends(seq_len, episodes)
        picks = ends[rng.integers(0, len(ends), size=batch_size)]
        start = 0
        for chosen, count in self._oversampled(batch_size, seq_len, episodes, event_fraction, restart_fraction):
            picks[start:start + count] = ends[chosen][rng.integers(0, int(chosen.sum()), size=count)]
            start += count
        return picks

    def _oversampled(self, batch_size: int, seq_len: int, episodes: np.ndarray | None, event_fraction: float,
                     restart_fraction: float) -> list[tuple[np.ndarray, int]]:
        """The oversampled kinds of windows (ending on an event, starting after a lost life), each as (bool mask
        over `_window_ends(seq_len, episodes)`, windows of a batch drawn among them); kinds not asked for or not
        stored are left out. Masks are remembered with the window ends."""
        ends = self._window_ends(seq_len, episodes)
        kinds, taken = [], 0
        for fraction, kind in ((event_fraction, self._ends_on_event), (restart_fraction, self._starts_after_life_loss)):
            if fraction <= 0 or seq_len == 0:
                continue
            mask = self._remembered((kind.__name__, seq_len, episodes), functools.partial(kind, ends, seq_len))
            count = min(_event_count(batch_size, seq_len, fraction, int(mask.sum())), batch_size - taken)
            if count:
                kinds.append((mask, count))
                taken += count
        return kinds

    def event_rates(
        self, batch_size: int, seq_len: int, episodes: np.ndarray | None = None, event_fraction: float = 0.0,
        restart_fraction: float = 0.0,
    ) -> tuple[np.ndarray, np.ndarray]:
        """How often each event is a training target under `sample(...)` with these arguments, and under
        uniform windows: float64 (5,) each, the shares of the windows' transitions with clipped reward -1,
        0, +1, a game over, a life loss.

        Heads trained on windows oversampled for events learn the first rates as their prior; the second
        ones are what imagination meets (see world_models/base.py `event_logit_shift`). Exact expectations
        over the stored windows, not estimates.
        """
        ends = self._window_ends(seq_len, episodes)
        chain = self._chains(ends, seq_len)  # (N, L) rows reached by each window's transitions
        sign, flags = np.sign(self._rows["reward"][chain]), self._rows["flags"][chain]
        per_window = np.stack([sign == -1, sign == 0, sign == 1, (flags & TERMINATED) != 0,
                               (flags & LIFE_LOSS) != 0], axis=-1).mean(axis=1)  # (N, 5)
        uniform = trained = per_window.mean(axis=0)
        for mask, count in self._oversampled(batch_size, seq_len, episodes, event_fraction, restart_fraction):
            share = count / batch_size
            trained = trained + share * (per_window[mask].mean(axis=0) - uniform)
        return trained, uniform

    def _window_ends(self, seq_len: int, episodes: np.ndarray | None) -> np.ndarray:
        """Rows that can end a window of `seq_len` transitions (in `episodes` if given), remembered until rows
        are appended: a pass over every row (1.3 ms for 50k rows and an episode filter) for each sampled
        batch would cost a dream restart more than its world-model work."""
        return self._remembered(("ends", seq_len, episodes), lambda: self._find_window_ends(seq_len, episodes))

    def _remembered(self, key: tuple[str, int, np.ndarray | None], compute: Callable[[], np.ndarray]) -> np.ndarray:
        """`compute()` of the stored rows, remembered under `key` (a name, a window length and an episode filter)
        until rows are appended."""
        name, seq_len, episodes = key
        memo_key = (name, seq_len, None if episodes is None else np.asarray(episodes).tobytes())
        if self._ends_size != self._size:
            self._ends_memo, self._ends_size = {}, self._size
        if memo_key not in self._ends_memo:
            self._ends_memo[memo_key] = compute()
        return self._ends_memo[memo_key]

    def _find_window_ends(self, seq_len: int, episodes: np.ndarray | None) -> np.ndarray:
        rows = self._rows[: self._size]
        valid = rows["pos"] >= seq_len
        if episodes is not None:
            valid &= np.isin(rows["episode"], episodes)
        ends = np.flatnonzero(valid)
        if len(ends) == 0:
            raise ValueError(f"no stored episode holds {seq_len} consecutive transitions")
        return ends

    def _ends_on_event(self, ends: np.ndarray, seq_len: int) -> np.ndarray:
        """bool (N,): whether the transition into each of these rows is an event (a nonzero reward, a life
        loss or a game over); `seq_len` is not needed (the signature is `_starts_after_life_loss`'s)."""
        rows = self._rows
        return (rows["reward"][ends] != 0) | ((rows["flags"][ends] & (TERMINATED | LIFE_LOSS)) != 0)

    def _starts_after_life_loss(self, ends: np.ndarray, seq_len: int) -> np.ndarray:
        """bool (N,): whether the first observation of each window of `seq_len` transitions ending at these rows
        was reached by a lost life."""
        first = self._chains(ends, seq_len + 1)[:, 0]
        return (self._rows["flags"][first] & LIFE_LOSS) != 0

    def _chains(self, ends: np.ndarray, span: int) -> np.ndarray:
        """int64 (B, span) the rows of each episode up to the given end rows, oldest first, -1 before the start."""
        return np.ascontiguousarray(_follow(ends, span - 1, self._rows["prev"])[:, ::-1])

    def window_rows(self, ends: np.ndarray, seq_len: int) -> tuple[np.ndarray, np.ndarray]:
        """The rows and actions of the windows `windows(ends, seq_len)` returns, without gathering frames:
        int64 (B, L+1) rows of o_0 .. o_L and int64 (B, L) actions a_0 .. a_L-1."""
        ends = self._checked_ends(ends, seq_len)
        rows = self._chains(ends, seq_len + 1)
        return rows, self._rows["action"][rows[:, 1:]].astype(np.int64)

    def ram(self, rows: np.ndarray) -> np.ndarray:
        """uint8 (n, R) console RAM at buffer rows (n,)."""
        return self._rows["ram"][np.asarray(rows, dtype=np.int64)]

    def flags(self, rows: np.ndarray) -> np.ndarray:
        """uint8 (n,) FIRST / TERMINATED / TRUNCATED / LIFE_LOSS bits of buffer rows (n,)."""
        return self._rows["flags"][np.asarray(rows, dtype=np.int64)]

    def stacks(self, rows: np.ndarray) -> np.ndarray:
        """uint8 (n, S, H, W) frame stacks of the observations at buffer rows (n,), zero before an episode's start."""
        chain = self._chains(np.asarray(rows, dtype=np.int64), self.frame_stack)
        frames = np.where((chain >= 0)[..., None, None], self._rows["frame"][np.maximum(chain, 0)], 0)
        return frames.astype(np.uint8, copy=False)

    def _checked_ends(self, ends: np.ndarray, seq_len: int) -> np.ndarray:
        ends = np.asarray(ends, dtype=np.int64)
        if np.any(self._rows["pos"][ends] < seq_len):
            raise ValueError("a window would cross the start of its episode")
        return ends

    def windows(self, ends: np.ndarray, seq_len: int) -> SequenceBatch:
        """The windows of `seq_len` transitions that end at the given rows.

        Args:
            ends: int (B,) row indices with at least `seq_len` rows of their episode before them.
        """
        ends = self._checked_ends(ends, seq_len)
        chain = self._chains(ends, seq_len + self.frame_stack)  # (B, L+S): the window and its first frame stack
        inside = chain >= 0
        rows = self._rows[np.maximum(chain, 0)]  # (B, L+S) records
        frames = np.where(inside[..., None, None], rows["frame"], 0)  # zero before the episode start
        stacks = np.lib.stride_tricks.sliding_window_view(frames, self.frame_stack, axis=1)
        stacks = np.moveaxis(stacks, -1, 2).copy()  # (B, L+1, S, H, W), a writable copy
        obs_rows = rows[:, self.frame_stack - 1 :]  # (B, L+1) rows of o_0 .. o_L
        into = obs_rows[:, 1:]  # (B, L) rows reached by transitions 0 .. L-1
        flags = into["flags"]
        rewards = into["reward"].astype(np.float32)
        return SequenceBatch(
            frames=stacks,
            ram=np.ascontiguousarray(obs_rows["ram"]),
            actions=into["action"].astype(np.int64),
            rewards=rewards,
            clipped_rewards=np.sign(rewards),
            terminated=(flags & TERMINATED) != 0,
            truncated=(flags & TRUNCATED) != 0,
            life_loss=(flags & LIFE_LOSS) != 0,
            episodes=self._rows["episode"][ends].astype(np.int64),
            rows=chain[:, self.frame_stack - 1 :].copy(),
        )

    # ---- bookkeeping --------------------------------------------------------------------

    def _grow(self, needed: int) -> None:
        """Make room for `needed` rows; capacity doubles, untouched pages cost no memory."""
        if needed <= len(self._rows):
            return
        rows = np.empty(max(needed, 2 * len(self._rows), 1024), dtype=self.dtype)
        rows[: self._size] = self._rows[: self._size]
        self._rows = rows


def _follow(rows: np.ndarray, steps: int, links: np.ndarray) -> np.ndarray:
    """int64 (B, steps+1): each of the rows (B,), then the rows `links` (a row's previous or next row of its
    episode, -1 for none) leads to from it, step by step; -1 once it leads nowhere."""
    walk = np.full((len(rows), steps + 1), -1, dtype=np.int64)
    walk[:, 0] = rows
    for j in range(steps):
        here = walk[:, j]
        walk[:, j + 1] = np.where(here >= 0, links[np.maximum(here, 0)], -1)
    return walk


def _event_count(batch_size: int, seq_len: int, event_fraction: float, events: int) -> int:
    """Windows of a batch drawn among those of one oversampled kind (none when there are no such windows)."""
    return round(event_fraction * batch_size) if events and seq_len > 0 else 0


def _int_in(value: object, low: int, high: int) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and low <= value <= high


def _bad_transitions(actions: np.ndarray, rewards: np.ndarray, moved: np.ndarray,
                     num_actions: int | None) -> tuple[int, str] | None:
    """The first of the rows `moved` (bool (K,): rows with an incoming transition) whose action (K,) lies outside
    [0, num_actions) (or is negative, for an unknown count) or whose reward (K,) is not a finite float32, as
    (index, what is wrong); None when all are fine. Vectorised: one pass over each column."""
    high = np.iinfo(np.int32).max if num_actions is None else num_actions - 1
    bad_action = moved & ((actions < 0) | (actions > high))
    bad_reward = moved & ~(np.abs(rewards) <= _MAX_REWARD)  # NaN compares False
    bad = np.flatnonzero(bad_action | bad_reward)
    if len(bad) == 0:
        return None
    i = int(bad[0])
    if bad_action[i]:
        allowed = f"[0, {num_actions})" if num_actions is not None else "[0, 2^31)"
        return i, f"action {int(actions[i])}, outside the action space {allowed}"
    return i, f"reward {float(rewards[i])!r}, not a finite number"


def _first_problem(rows: np.ndarray, num_actions: int | None) -> str | None:
    """What is wrong with loaded rows, naming the first bad row (None: nothing): actions outside the action space,
    rewards that are not finite, stream ids beyond any buffer's, or rows that do not link up (FIRST rows start
    episodes, others point back into theirs)."""
    first = (rows["flags"] & FIRST) != 0
    bad = _bad_transitions(rows["action"], rows["reward"].astype(np.float64), ~first, num_actions)
    if bad is not None:
        return f"row {bad[0]} has {bad[1]}"
    streams = rows["stream"]
    wrong = np.flatnonzero((streams < 0) | (streams >= _META_LIMITS["streams"]))
    if len(wrong):
        return f"row {int(wrong[0])} has stream id {int(streams[wrong[0]])}"
    prev = rows["prev"]
    before = prev < np.arange(len(rows))
    linked = (first == (rows["pos"] == 0)) & (first == (prev < 0)) & before
    earlier = np.where(before, np.maximum(prev, 0), 0)
    same = (streams[earlier] == streams) & (rows["episode"][earlier] == rows["episode"])
    linked &= first | (same & (rows["pos"][earlier] + 1 == rows["pos"]))
    wrong = np.flatnonzero(~linked)
    if len(wrong):
        return f"its rows do not link up (row {int(wrong[0])})"
    return None
