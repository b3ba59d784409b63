#!/usr/bin/env bash
# Install mbrl as another project would: build the wheel, install it (non-editable) into a fresh venv, and
# use it from a directory holding its own envs/, agents/ and world_models/ packages, which must never be
# imported in place of ours. Needs the repository's .venv (scripts/setup.sh) to build the wheel.
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$(pwd)
PYTHON=${PYTHON:-python3}
TORCH_VERSION=2.13.0
WORK=$(mktemp -d)
trap 'rm -rf "$WORK"' EXIT

.venv/bin/python -m pip wheel -q --no-deps --no-build-isolation -w "$WORK/dist" "$ROOT"
"$PYTHON" -m venv "$WORK/venv"
"$WORK/venv/bin/python" -m pip install -q "torch==$TORCH_VERSION"
"$WORK/venv/bin/python" -m pip install -q "$WORK"/dist/mbrl_jepa-*.whl

mkdir -p "$WORK/project"
cd "$WORK/project"
for name in envs agents world_models configs; do
    mkdir "$name"
    echo "raise ImportError('the project\'s own $name package was imported instead of mbrl.$name')" > "$name/__init__.py"
done
BIN="$WORK/venv/bin"
"$BIN/mbrl" --help > /dev/null
"$BIN/mbrl" collect --env ALE/Breakout-v5 --preset smoke --run runs/r --steps 64 --quiet
"$BIN/mbrl" train-world-model --run runs/r --steps 2 --quiet
"$BIN/python" - <<'PY'
import sys

import gymnasium

import mbrl.envs  # noqa: F401  (registers mbrl/Dream-v0)

env = gymnasium.make("mbrl/Dream-v0", checkpoint="runs/r")
obs, _ = env.reset(seed=0)
obs, reward, terminated, truncated, _ = env.step(env.action_space.sample())
top = sorted({m.split(".")[0] for m in sys.modules} & {"envs", "agents", "world_models", "configs"})
assert not top, f"top-level names imported: {top}"
print(f"installed mbrl: dream step from runs/r gives observation {obs.shape} and reward {float(reward):.3f}")
PY
