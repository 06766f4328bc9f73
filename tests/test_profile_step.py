"""benchmarks.profile_step: the timed dispatches see the same examples whether their index arrays are new or reused."""
import os

import numpy as np

from benchmarks import profile_step
from benchmarks import train_speed

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_fresh_dispatch_inputs_train_on_the_same_examples_as_reused_ones():
  arrays = train_speed.build_examples_in_memory(os.path.join(REPO, "data", "beauty"))["train"]
  arrays = {k: v[:2000] for k, v in arrays.items()}
  runs = {fresh: profile_step.profile_variant("bf16_onehot_rbg_castonce", arrays, [17], k=2, reps=2, top=1,
                                              model_gin=os.path.join(REPO, "tests", "tiny_t5.gin"), hlo_dir=None,
                                              trace_lengths=[], fresh_inputs=fresh)
          for fresh in (False, True)}
  same, fresh = runs[False][17], runs[True][17]
  assert np.isfinite(fresh["loss_last"]) and fresh["ms_per_step"] > 0
  assert fresh["first_dispatch_losses"] == same["first_dispatch_losses"]
  assert fresh["loss_last"] == same["loss_last"]  # two more dispatches over the same rows, bit for bit
