#!/usr/bin/env bash
# Build the LibTorch example against the libtorch that ships inside the pip torch package
# (headers, libtorch*.so and TorchConfig.cmake are all in it: no separate download).
#
#   PYTHON=.venv/bin/python examples/libtorch/build.sh
#   .venv/bin/python examples/libtorch/export_model.py /tmp/model.pt   # writes the model
#   examples/libtorch/build/solve_ode /tmp/model.pt 4
#
# Needs cmake ≥ 3.18 and a C++17 compiler.  The first build takes a few minutes (the torch
# headers are large).  Not built in CI.
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
python="${PYTHON:-python}"
prefix="$("$python" -c 'import torch; print(torch.utils.cmake_prefix_path)')"
cmake -S "$here" -B "$here/build" -DCMAKE_PREFIX_PATH="$prefix" -DCMAKE_BUILD_TYPE=Release
cmake --build "$here/build" -j "${JOBS:-2}"
echo "built $here/build/solve_ode"
