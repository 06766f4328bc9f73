"""benchmarks.profile_step: the timed dispatches see the same examples whether their index arrays are new or reused,
and the loops train alike in every compile order, with or without the traced-program cache."""
import os

import numpy as np
import pytest

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


def test_loops_compiled_one_after_another_through_the_traced_program_cache_train_as_side_by_side(
    jax_compilation_cache):
  from tiger_jax import program_cache  # pylint: disable=g-import-not-at-top
  tmp_path = jax_compilation_cache
  arrays = train_speed.build_examples_in_memory(os.path.join(REPO, "data", "beauty"))["train"]
  arrays = {k: v[:2000] for k, v in arrays.items()}

  def run(order, traced_program_cache):
    return profile_step.profile_variant("bf16_onehot_rbg_castonce", arrays, [17, 33], k=2, reps=1, top=1,
                                        model_gin=os.path.join(REPO, "tests", "tiny_t5.gin"), hlo_dir=None,
                                        trace_lengths=[], compile_order=order,
                                        traced_program_cache=traced_program_cache)
  side_by_side = run("side_by_side", False)
  first_alone = run("first_alone", True)
  stored = sorted(os.listdir(tmp_path / program_cache.SUBDIR))
  one_by_one = run("one_by_one", True)  # both loops from the stored traced programs
  assert sorted(os.listdir(tmp_path / program_cache.SUBDIR)) == stored and stored
  assert [r["compile_order"] for r in (side_by_side, first_alone, one_by_one)] == [
      "side_by_side", "first_alone", "one_by_one"]
  for length in (17, 33):
    assert first_alone[length]["first_dispatch_losses"] == side_by_side[length]["first_dispatch_losses"]
    assert one_by_one[length]["loss_last"] == first_alone[length]["loss_last"]


def test_an_unknown_compile_order_is_refused_before_compiling():
  with pytest.raises(ValueError, match="compile_order 'sequential' is not one of"):
    profile_step.profile_variant("bf16_onehot_rbg_castonce", {}, [17], k=1, reps=1, top=1, model_gin="x.gin",
                                 hlo_dir=None, compile_order="sequential")


def test_the_trainer_step_mix_follows_its_schedule_not_the_examples():
  arrays = train_speed.build_examples_in_memory(os.path.join(REPO, "data", "beauty"))["train"]
  examples = profile_step.bucket_mix(arrays, [17, 33, 81])
  full = profile_step.schedule_mix(arrays, [17, 33, 81], 100, partial_chunks=False)
  partial = profile_step.schedule_mix(arrays, [17, 33, 81], 100, partial_chunks=True)
  assert full == {17: 200 / 600, 33: 100 / 600, 81: 300 / 600}  # leftovers padded up, length 81 repeated
  assert partial == {17: 277 / 514, 33: 95 / 514, 81: 142 / 514}
  assert abs(partial[81] - examples[81]) < 0.01 < full[81] - examples[81]
