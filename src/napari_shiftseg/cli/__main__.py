"""``python -m napari_shiftseg.cli``; the guard keeps spawned dask workers from rerunning it."""

import sys

from . import main

if __name__ == "__main__":
    sys.exit(main())
