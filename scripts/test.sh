#!/usr/bin/env bash
# Install and run the whole test suite (what CI runs). Extra arguments go to pytest.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/install.sh
export QT_API=pyqt6 OMP_NUM_THREADS=1 MPLBACKEND=Agg
unset QT_QPA_PLATFORM
.venv/bin/npe2 validate napari-shiftseg
.venv/bin/ruff check src tests benchmarks scripts docs   # lint rules: pyproject.toml [tool.ruff]
.venv/bin/python -m mypy   # type check of the headless core: pyproject.toml [tool.mypy]
.venv/bin/python -m pytest -ra "$@"
