#!/usr/bin/env bash
# The test command (README, .ci/run): installs what the tests need, then runs every test.
# Works on a fresh machine with the Rust toolchain and python3/pip.
set -euo pipefail
cd "$(dirname "$0")/.."

# Python packages some tests use as independent oracles or real clients.
python3 -m pip install -q --disable-pip-version-check -r scripts/requirements-test.txt

# ds4-cuda must compile every kernel here (nvcc comes from the pinned wheels above), even though
# its GPU tests skip on a machine without a GPU.
export DS4_REQUIRE_NVCC=1

cargo test --workspace --profile ci --locked 2>&1
