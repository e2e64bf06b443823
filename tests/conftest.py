import os

# One thread per torch op: dask already uses both cores, and oversubscription slows CI a lot.
os.environ.setdefault("OMP_NUM_THREADS", "1")

# The package sets OpenMP to wait without spinning (threads.py) before torch loads: the
# suite must hold on a machine shared with other jobs too.
import napari_shiftseg  # noqa: E402, F401

# isort: split
import torch  # noqa: E402
from hypothesis import settings  # noqa: E402

torch.set_num_threads(1)
settings.register_profile("ci", deadline=None, max_examples=15, derandomize=True)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "ci"))
