"""Steps per epoch and per encoder length of the trainer's batch schedule on the bundled Beauty training split,
with full chunks (the default) and with partial chunks, and the step time they imply at measured per-length
step times (recipe_speed_beauty_h100_0a6cede: 1.90 / 2.71 / 5.54 ms at lengths 17 / 33 / 81, NVIDIA H100).

  python experiments/results/bucket_schedule_beauty_cpu/schedule_mix.py
"""
import collections
import os
import sys

import numpy as np

sys.path.insert(0, os.getcwd())
from benchmarks import train_speed  # noqa: E402
from tiger_jax import utils  # noqa: E402

MS_PER_STEP = {17: 1.90, 33: 2.71, 81: 5.54}
arrays = train_speed.build_examples_in_memory("data/beauty")["train"]
lengths = utils.nonpad_lengths(arrays[utils.ENCODER_INPUT])
own = np.searchsorted(np.array([17, 33, 81]), np.minimum(lengths, 81))
print(f"{len(lengths)} training examples; per bucket (17, 33, 81): {np.bincount(own).tolist()}")
for partial in (False, True):
  for chunk_steps in (100, 20):
    s = utils.BatchSchedule(lengths, 256, 0, True, [17, 33, 81], chunk_steps, 81, partial_chunks=partial)
    for epoch in range(2):
      idx, lens = s.steps(epoch * s.steps_per_epoch, s.steps_per_epoch)
      steps = collections.Counter(lens.tolist())
      ms = sum(MS_PER_STEP[k] * v for k, v in steps.items())
      repeats = idx.size - len(np.unique(idx))
      print(f"partial_chunks={partial} chunk_steps={chunk_steps} epoch {epoch}: {s.steps_per_epoch} steps "
            f"{dict(sorted(steps.items()))}, {repeats} repeated slots, {ms / 1000:.2f} s an epoch, "
            f"{ms / s.steps_per_epoch:.2f} ms/step")
