#!/usr/bin/env bash
# Install napari-shiftseg into ./.venv on a fresh machine (no GPU needed, no internet at run time).
# torch is pinned to the local CPU wheel through ci/constraints.txt: a bare `torch` would pull a
# multi-GB CUDA build. Qt for the GUI comes from the `testing` extra (PyQt6), system libraries
# for a virtual display (Xvfb) from apt when they are missing.
set -euo pipefail
cd "$(dirname "$0")/.."
pkgs="xvfb xauth libxcb-icccm4 libxcb-keysyms1 libxkbcommon-x11-0"
missing=""
for p in $pkgs; do dpkg -s "$p" >/dev/null 2>&1 || missing="$missing $p"; done
if [ -n "$missing" ] && command -v apt-get >/dev/null; then
  export DEBIAN_FRONTEND=noninteractive
  SUDO=""; [ "$(id -u)" = 0 ] || SUDO="sudo"
  $SUDO apt-get update -qq && $SUDO apt-get install -y -qq --no-install-recommends $missing >/dev/null
fi
[ -x .venv/bin/python ] || python3 -m venv .venv
.venv/bin/python -m pip install -q --disable-pip-version-check -c ci/constraints.txt -e ".[testing]"
