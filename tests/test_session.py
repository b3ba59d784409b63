"""mbrl.session: the named seeds keep the values runs were made with, and no other module derives one."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from mbrl.session import Seeds, derive_seed

ROOT = Path(__file__).resolve().parents[1]


def draws(entropy: list[int]) -> list[int]:
    return np.random.default_rng(entropy).integers(0, 1000, 3).tolist()


def test_the_named_seeds_keep_the_values_runs_were_made_with() -> None:
    # The values below are what the derivations gave before they were named (np.random.SeedSequence over
    # [seed, stream], [seed, iteration, 2], ...): a run made then resumes and reproduces only if they stay.
    seeds = Seeds(3, stream=2)
    assert seeds.env() == 960329833
    assert seeds.dream(4) == 3236180052
    assert (seeds.evaluation(4), seeds.evaluation(1250)) == (1027270975, 31754941)
    assert seeds.plan() == 866142642
    assert draws(seeds.random_policy()) == [844, 25, 566]
    assert draws(seeds.explore()) == [616, 831, 659]
    assert draws(seeds.joint_updates()) == [530, 682, 967]
    assert [derive_seed([3, 3000]), derive_seed([3, 1000]), derive_seed([3, 2000])] == [
        3613214024, 1643820459, 2253934333]  # the benchmarks' evaluation games


def test_the_seeds_of_two_sittings_and_two_iterations_differ() -> None:
    first, resumed = Seeds(0, 0), Seeds(0, 2)
    assert first.env() != resumed.env() and first.plan() != resumed.plan()
    assert draws(first.explore()) != draws(resumed.explore())
    assert first.dream(1) != first.dream(2) and first.evaluation(1) != first.evaluation(2)
    assert Seeds(0, 0).dream(1) == Seeds(0, 5).dream(1)  # per iteration, whatever the sitting


def test_only_the_session_derives_seeds() -> None:
    derivers = [path.relative_to(ROOT) for folder in ("mbrl", "benchmarks") for path in (ROOT / folder).rglob("*.py")
                if "SeedSequence" in path.read_text()]
    assert derivers == [Path("mbrl/session.py")]
