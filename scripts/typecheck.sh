#!/usr/bin/env bash
# mypy over the package as it installs: envs/, agents/ and world_models/ are the subpackages mbrl.envs,
# mbrl.agents and mbrl.world_models (setup.cfg's package_dir), a mapping mypy cannot read from an editable
# install, so it checks a temporary tree of links laid out like the installed package, plus benchmarks/.
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$(pwd)
TREE=$(mktemp -d)
trap 'rm -rf "$TREE"' EXIT
mkdir "$TREE/mbrl"
for f in mbrl/*; do ln -s "$ROOT/$f" "$TREE/mbrl/"; done
for d in envs agents world_models; do ln -s "$ROOT/$d" "$TREE/mbrl/$d"; done
export MYPYPATH="$TREE"
(cd "$TREE" && "$ROOT/.venv/bin/mypy" --config-file "$ROOT/setup.cfg" --cache-dir "$ROOT/.mypy_cache" -p mbrl)
ln -s "$ROOT/benchmarks" "$TREE/benchmarks"  # the package benchmarks, beside mbrl as at the repository's root
(cd "$TREE" && "$ROOT/.venv/bin/mypy" --config-file "$ROOT/setup.cfg" --cache-dir "$ROOT/.mypy_cache" -p benchmarks)
