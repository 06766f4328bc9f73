"""The trainer: schedules, cache reading, bucketing, and (in subprocesses) CLI runs killed and resumed.

The CLI runs share one persistent XLA compilation cache so that only the first of them pays for compiling
the tiny model; they train a 1+1-layer T5 on a synthetic task cache in the CONTRACTS.md format. Runs that
are killed go through tests/fault_injection.py, which pauses at (and announces) dispatches, checkpoint
writes and validation passes so that a signal lands where a test wants it.
"""
import json
import os
import queue
import re
import signal
import shutil
import subprocess
import sys
import textwrap
import threading
import time
import types

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from tiger_jax import checkpoints
from tiger_jax import compilation
from tiger_jax import model_dir_lock
from tiger_jax import models
from tiger_jax import network
from tiger_jax import partitioning
from tiger_jax import program_cache
from tiger_jax import provenance
from tiger_jax import train
from tiger_jax import utils

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TASK = "tiny_task"
LENGTHS = {"inputs": 81, "targets": 5}
TINY = dict(vocab_size=64, emb_dim=16, num_heads=2, num_encoder_layers=1, num_decoder_layers=1, head_dim=8,
            mlp_dim=32)


# ----------------------------------------------------------------------------------------------------------
# A synthetic task cache in the CONTRACTS.md format: item t is followed by item t + 1, so it is learnable.


def write_synthetic_cache(root, task=TASK, n_users=48, n_items=24, seed=0):
  rng = np.random.default_rng(seed)
  codes = rng.integers(0, 8, (n_items, 4))
  item_tokens = 2 + 8 * np.arange(4) + codes  # 4 levels x 8 codes: tokens 2..33; users 34..49
  sequences = []
  for _ in range(n_users):
    n, first = int(rng.integers(3, 27)), int(rng.integers(n_items))
    sequences.append([(first + i) % n_items for i in range(n)])
  os.makedirs(os.path.join(root, task), exist_ok=True)
  counts = {}
  for split in ("train", "validation", "test"):
    rows = []
    for u, seq in enumerate(sequences):
      n = len(seq)
      targets = range(1, n - 2) if split == "train" else [n - 2 if split == "validation" else n - 1]
      rows += [(u, seq[max(0, t - 20):t], seq[t]) for t in targets]
    num = len(rows)
    enc = np.zeros((num, 81), np.int32)
    tgt = np.zeros((num, 5), np.int32)
    for i, (u, history, target) in enumerate(rows):
      x = np.concatenate([[34 + u % 16], item_tokens[history].reshape(-1)])
      enc[i, :len(x)] = x
      tgt[i, :4] = item_tokens[target]
      tgt[i, 4] = 1
    dec_in = np.zeros_like(tgt)
    dec_in[:, 1:] = tgt[:, :-1]
    np.savez(os.path.join(root, task, f"{split}.npz"), encoder_input_tokens=enc, decoder_input_tokens=dec_in,
             decoder_target_tokens=tgt, decoder_loss_weights=(tgt > 0).astype(np.int32),
             user_index=np.array([r[0] for r in rows], np.int32),
             target_item=np.array([r[2] for r in rows], np.int32))
    counts[split] = num
  with open(os.path.join(root, task, "info.json"), "w") as f:
    json.dump({"task": task, "feature_lengths": LENGTHS, "vocab_size": 64, "counts": counts}, f)
  return counts


@pytest.fixture(scope="module")
def cache_dir(tmp_path_factory):
  root = str(tmp_path_factory.mktemp("cache"))
  write_synthetic_cache(root)
  return root


def _cfg(cache_dir, split="train", batch_size=8, shuffle=True, **kw):
  kw.setdefault("task_feature_lengths", LENGTHS)
  return utils.DatasetConfig(mixture_or_task_name=TASK, split=split, batch_size=batch_size, shuffle=shuffle,
                             cache_dir=cache_dir, **kw)


# ----------------------------------------------------------------------------------------------------------
# Learning rate, optimizer, schedule, cache reading.


def test_learning_rate_is_t5x_rsqrt_decay():
  lr = utils.create_learning_rate_scheduler()
  np.testing.assert_allclose([float(lr(s)) for s in (0, 1, 9999, 10000, 40000, 160000)],
                             [0.01, 0.01, 0.01, 0.01, 0.005, 0.0025], rtol=1e-6)
  warm = utils.create_learning_rate_scheduler("constant * linear_warmup * rsqrt_decay", 1.0, 100)
  assert float(warm(50)) == pytest.approx(0.5 / 10)
  with pytest.raises(ValueError, match="unknown factor"):
    utils.create_learning_rate_scheduler("constant * bogus")
  cool = utils.create_learning_rate_scheduler("constant * rsqrt_decay * linear_cooldown", cooldown_steps=3000,
                                              total_steps=10000)
  # 0.01 until step 7000, then a straight line to the floor at step 10000.
  np.testing.assert_allclose([float(cool(s)) for s in (0, 7000, 8500, 9700, 10000, 12000)],
                             [0.01, 0.01, 0.005, 0.001, 1e-8, 1e-8], rtol=1e-5)
  with pytest.raises(ValueError, match="cooldown_steps"):
    utils.create_learning_rate_scheduler("constant * linear_cooldown", cooldown_steps=3000)


def test_adafactor_has_t5x_settings():
  tx = utils.adafactor(0.01, group_same_shapes=False)
  params = {"w": jnp.ones((256, 128)), "b": jnp.ones((7,))}
  state = tx.init(params)
  factored = [s for s in jax.tree_util.tree_leaves(state, is_leaf=lambda x: hasattr(x, "v_row"))
              if hasattr(s, "v_row")][0]
  # Factored second moment: one row and one column vector instead of a 256 x 128 matrix.
  assert {factored.v_row["w"].shape, factored.v_col["w"].shape} == {(256,), (128,)}
  assert factored.v["b"].shape == (7,)  # small tensors keep a full second moment
  updates, _ = tx.update({"w": jnp.full((256, 128), 1e6), "b": jnp.ones((7,))}, state, params)
  # Update clipping at RMS 1.0 and parameter scaling keep the step bounded by lr * rms(param).
  assert float(jnp.sqrt(jnp.mean(updates["w"] ** 2))) <= 0.01 * 1.0001


def test_adafactor_grouped_by_shape_equals_per_tensor():
  # Same-shaped leaves share one vmapped update; every statistic must stay per tensor.
  rng = np.random.default_rng(0)
  shapes = {"a": (256, 128), "b": (256, 128), "c": (7,), "d": (128, 6, 8), "e": (7,), "f": (256, 128)}
  params = {k: jnp.asarray(rng.normal(size=s) * (1 + i), jnp.float32) for i, (k, s) in enumerate(shapes.items())}
  lr = utils.create_learning_rate_scheduler()
  plain, grouped = utils.adafactor(lr, group_same_shapes=False), utils.adafactor(lr)
  state_p, state_g = plain.init(params), grouped.init(params)
  assert len(state_g) == 3  # (256, 128) x 3, (7,) x 2, (128, 6, 8)
  p_p = p_g = params
  for step in range(4):
    grads = {k: jnp.asarray(rng.normal(size=s) * 10 ** (i - 2), jnp.float32)
             for i, (k, s) in enumerate(shapes.items())}
    u_p, state_p = plain.update(grads, state_p, p_p)
    u_g, state_g = grouped.update(grads, state_g, p_g)
    for k in shapes:
      np.testing.assert_allclose(u_g[k], u_p[k], rtol=2e-5, atol=1e-9, err_msg=f"{k} step {step}")
    p_p, p_g = optax.apply_updates(p_p, u_p), optax.apply_updates(p_g, u_g)
  with pytest.raises(ValueError, match="groups"):
    grouped.update(grads, state_g[:2], p_g)


def test_grouped_global_norm_equals_optax_and_uses_one_reduction_per_shape():
  rng = np.random.default_rng(1)
  shapes = {"a": (64, 32), "b": (64, 32), "c": (7,), "d": (3, 5, 2), "e": (7,), "f": (64, 32)}
  tree = {k: jnp.asarray(rng.normal(size=s) * 10 ** (i - 3), jnp.float32) for i, (k, s) in enumerate(shapes.items())}
  np.testing.assert_allclose(utils.global_norm(tree), optax.global_norm(tree), rtol=1e-6)
  hlo = jax.jit(utils.global_norm).lower(tree).as_text()
  assert hlo.count("stablehlo.reduce") == 3  # (64, 32) x 3, (7,) x 2, (3, 5, 2)
  assert jax.jit(optax.global_norm).lower(tree).as_text().count("stablehlo.reduce") == 6


def test_schedule_is_a_pure_function_of_seed_and_step():
  lengths = np.random.default_rng(0).integers(1, 82, 203)
  a = utils.BatchSchedule(lengths, 16, seed=3)
  b = utils.BatchSchedule(lengths, 16, seed=3)
  idx_a, _ = a.steps(0, 40)
  idx_b, _ = b.steps(25, 15)  # a fresh object asked for the middle gives the same batches
  np.testing.assert_array_equal(idx_a[25:], idx_b)
  assert a.steps_per_epoch == 13  # ceil(203 / 16): the last batch wraps around
  epoch0 = idx_a[:13].reshape(-1)
  assert set(epoch0.tolist()) == set(range(203))
  assert not np.array_equal(idx_a[:13], idx_a[13:26])  # reshuffled every epoch
  assert not np.array_equal(idx_a, utils.BatchSchedule(lengths, 16, seed=4).steps(0, 40)[0])
  np.testing.assert_array_equal(utils.BatchSchedule(lengths, 16, 0, shuffle=False).steps(0, 1)[0][0],
                                np.arange(16))


def test_bucketed_schedule_groups_chunks_by_length():
  rng = np.random.default_rng(1)
  lengths = 1 + 4 * rng.integers(1, 21, 1000)
  s = utils.BatchSchedule(lengths, 8, seed=0, buckets=[17, 33], chunk_steps=5, max_length=81, partial_chunks=False)
  assert s.buckets == (17, 33, 81)
  assert s.steps_per_epoch % 5 == 0
  for epoch in range(3):
    idx, lens = s.steps(epoch * s.steps_per_epoch, s.steps_per_epoch)
    assert (lengths[idx] <= lens[:, None]).all()  # every example fits its step's trimmed length
    assert (lens.reshape(-1, 5) == lens.reshape(-1, 5)[:, :1]).all()  # one length per chunk
    assert set(idx.reshape(-1).tolist()) == set(range(1000))  # each example at least once per epoch
    assert len(idx.reshape(-1)) < 1000 + 5 * 8  # at most one chunk of repeats
  assert s.run_length(0, 5) == 5
  assert {int(v) for v in s.steps(0, s.steps_per_epoch)[1]} == {17, 33, 81}


def test_partial_chunks_train_every_example_once_per_epoch_at_its_own_length():
  rng = np.random.default_rng(2)
  lengths = 1 + 4 * rng.integers(1, 21, 1000)
  s = utils.BatchSchedule(lengths, 8, seed=0, buckets=[17, 33], chunk_steps=5, max_length=81)
  own = np.array([utils.bucket_length(int(n), [17, 33], 81) for n in lengths])
  per_bucket = {b: int((own == b).sum()) for b in (17, 33, 81)}
  assert s.steps_per_epoch == sum(-(-n // 8) for n in per_bucket.values())
  for epoch in range(3):
    idx, lens = s.steps(epoch * s.steps_per_epoch, s.steps_per_epoch)
    assert (own[idx] == lens[:, None]).all()  # no example moves up to a longer bucket
    counts = np.bincount(idx.reshape(-1), minlength=1000)
    assert counts.min() == 1  # every example once ...
    for b, n in per_bucket.items():  # ... and repeats only to fill its bucket's last batch
      assert counts[own == b].sum() == -(-n // 8) * 8
    assert {b: int((lens == b).sum()) for b in per_bucket} == {b: -(-n // 8) for b, n in per_bucket.items()}
  full = utils.BatchSchedule(lengths, 8, seed=0, buckets=[17, 33], chunk_steps=5, max_length=81,
                             partial_chunks=False)
  assert "partial_chunks" not in full.fingerprint() and s.fingerprint()["partial_chunks"] is True
  assert s.steps_per_epoch <= -(-1000 // 8) + 2  # at most one short batch per bucket beyond the minimum
  step, runs = 0, []
  while step < 2 * s.steps_per_epoch:  # chunk by chunk: each one length, at most chunk_steps long
    runs.append(s.steps_left_in_chunk(step))
    assert 1 <= runs[-1] <= 5 and len(set(s.steps(step, runs[-1])[1].tolist())) == 1
    step += runs[-1]
  assert step == 2 * s.steps_per_epoch
  assert len(runs) == 2 * sum(-(-(-(-n // 8)) // 5) for n in per_bucket.values())
  assert [full.steps_left_in_chunk(i) for i in range(12)] == [5 - i % 5 for i in range(12)]
  assert (s.steps(0, s.steps_per_epoch)[1] == 81).sum() < (full.steps(0, full.steps_per_epoch)[1] == 81).sum()


def test_training_runs_partial_chunks_by_default_one_dispatch_per_chunk(cache_dir, tmp_path, caplog, monkeypatch):
  model = models.EncoderDecoderModel(network.Transformer(network.T5Config(dtype="float32", **TINY)))
  lengths = utils.nonpad_lengths(utils.get_dataset_arrays(_cfg(cache_dir))[utils.ENCODER_INPUT])
  schedule = utils.BatchSchedule(lengths, 8, seed=0, buckets=[17, 33], chunk_steps=4, max_length=81)
  full = utils.BatchSchedule(lengths, 8, seed=0, buckets=[17, 33], chunk_steps=4, max_length=81,
                             partial_chunks=False)
  assert schedule.steps_per_epoch != full.steps_per_epoch  # the log line below tells them apart
  caplog.set_level("INFO", logger="tiger_jax.train")
  dispatched, compiling = [], []
  real_get, real_precompile = train.StepRunner.get, train.StepRunner.precompile
  def counting_get(self, length, state, data, idx, n, *args, **kwargs):
    if not compiling:
      dispatched.append(int(jax.device_get(n)))
    return real_get(self, length, state, data, idx, n, *args, **kwargs)
  def marked_precompile(self, *args):
    compiling.append(True)
    try:
      return real_precompile(self, *args)
    finally:
      compiling.clear()
  monkeypatch.setattr(train.StepRunner, "get", counting_get)
  monkeypatch.setattr(train.StepRunner, "precompile", marked_precompile)
  total = schedule.steps_per_epoch + 3
  r = train.train(model=model, train_dataset_cfg=_cfg(cache_dir), partitioner=partitioning.PjitPartitioner(),
                  model_dir=str(tmp_path / "m"), total_steps=total, eval_period=0,
                  steps_per_dispatch=4, length_buckets=[17, 33],
                  use_tensorboard=False, eval_metric_fns=(), best_metric=None)
  assert r.step == total and np.isfinite(r.losses).all()
  assert any(f"{schedule.steps_per_epoch} steps per epoch" in m for m in caplog.messages)
  chunks, step = [], 0  # one dispatch per chunk (the last one cut at total_steps)
  while step < total:
    chunks.append(min(schedule.steps_left_in_chunk(step), total - step))
    step += chunks[-1]
  assert dispatched == chunks


def test_a_run_checkpointed_with_full_chunks_resumes_with_full_chunks(cache_dir, tmp_path, caplog):
  model = models.EncoderDecoderModel(network.Transformer(network.T5Config(dtype="float32", **TINY)))
  run = lambda d, steps, **kw: train.train(
      model=model, train_dataset_cfg=_cfg(cache_dir), partitioner=partitioning.PjitPartitioner(),
      model_dir=str(tmp_path / d), total_steps=steps, eval_period=0, steps_per_dispatch=4,
      length_buckets=[17, 33], use_tensorboard=False, eval_metric_fns=(), best_metric=None, **kw)
  whole = run("whole", 24, bucket_partial_chunks=False)
  run("cut", 12, bucket_partial_chunks=False)
  caplog.set_level("INFO", logger="tiger_jax.train")
  resumed = run("cut", 24)  # the default is partial chunks; the checkpoint says full
  assert any("resuming with full chunks" in m for m in caplog.messages)
  assert not any("data schedule differs" in m for m in caplog.messages)
  np.testing.assert_allclose(resumed.losses, whole.losses[12:], rtol=2e-5)
  partial = run("partial", 24)
  assert not np.allclose(partial.losses[12:], whole.losses[12:], rtol=2e-5)  # the chunkings differ here


def test_step_time_is_reported_per_encoder_length(cache_dir, tmp_path, caplog):
  model = models.EncoderDecoderModel(network.Transformer(network.T5Config(dtype="float32", **TINY)))
  caplog.set_level("INFO", logger="tiger_jax.train")
  r = train.train(model=model, train_dataset_cfg=_cfg(cache_dir), partitioner=partitioning.PjitPartitioner(),
                  model_dir=str(tmp_path / "m"), total_steps=24, eval_period=12, steps_per_dispatch=4,
                  length_buckets=[17, 33], use_tensorboard=False, eval_metric_fns=(), best_metric=None)
  by_length = r.ms_per_step_by_length
  assert set(by_length) <= {17, 33, 81} and len(by_length) >= 2
  assert all(ms > 0 for ms, _ in by_length.values())
  assert sum(steps for _, steps in by_length.values()) == 24 - 4  # every dispatch but the run's first
  line = next(m for m in caplog.messages if m.startswith("ms/step by encoder length"))
  assert all(f"{length}: {ms:.2f} ({steps} steps)" in line for length, (ms, steps) in by_length.items())


def test_dataset_arrays_read_fit_and_errors(cache_dir, tmp_path):
  arrays = utils.get_dataset_arrays(_cfg(cache_dir))
  assert arrays[utils.ENCODER_INPUT].shape[1] == 81 and arrays[utils.ENCODER_INPUT].dtype == np.int32
  assert set(arrays) == set(utils.MODEL_FEATURES + utils.EXTRA_FEATURES)
  wider = utils.get_dataset_arrays(_cfg(cache_dir, task_feature_lengths={"inputs": 90, "targets": 5}))
  assert wider[utils.ENCODER_INPUT].shape[1] == 90 and not wider[utils.ENCODER_INPUT][:, 81:].any()
  with pytest.raises(ValueError, match="would lose tokens"):
    utils.get_dataset_arrays(_cfg(cache_dir, task_feature_lengths={"inputs": 9, "targets": 5},
                                  trim_output_features=False))
  bad = tmp_path / TASK
  bad.mkdir()
  np.savez(bad / "train.npz", encoder_input_tokens=np.ones((3, 81), np.int32))
  with pytest.raises(ValueError, match=r"train\.npz: missing field 'decoder_input_tokens'"):
    utils.get_dataset_arrays(_cfg(str(tmp_path), use_memory_cache=False))
  with pytest.raises(FileNotFoundError, match="no cached split 'test'"):
    utils.get_dataset_arrays(_cfg(str(tmp_path), split="test"))
  with pytest.raises(NotImplementedError, match="cached"):
    utils.get_dataset_arrays(_cfg(cache_dir, use_cached=False))


def test_joined_splits_concatenate_rows_in_order(cache_dir, tmp_path):
  """'train+validation' (refit) is the train rows then the validation rows; bad joins are refused."""
  train_rows = utils.get_dataset_arrays(_cfg(cache_dir))
  val = utils.get_dataset_arrays(_cfg(cache_dir, split="validation"))
  both = utils.get_dataset_arrays(_cfg(cache_dir, split="train+validation"))
  assert set(both) == set(train_rows)
  for k in train_rows:
    np.testing.assert_array_equal(both[k], np.concatenate([train_rows[k], val[k]]))
  with pytest.raises(ValueError, match="distinct split names"):
    utils.get_dataset_arrays(_cfg(cache_dir, split="train+train"))
  with pytest.raises(ValueError, match="distinct split names"):
    utils.get_dataset_arrays(_cfg(cache_dir, split="train+"))
  with pytest.raises(FileNotFoundError, match="no cached split 'extra'"):
    utils.get_dataset_arrays(_cfg(cache_dir, split="train+extra"))
  other = tmp_path / TASK
  other.mkdir()
  fields = {k: v[:4] for k, v in train_rows.items()}
  np.savez(other / "train.npz", **fields)
  np.savez(other / "validation.npz", **{k: v for k, v in fields.items() if k != "target_item"})
  with pytest.raises(ValueError, match="'validation' has fields"):
    utils.get_dataset_arrays(_cfg(str(tmp_path), split="train+validation", use_memory_cache=False))


def test_nonpad_lengths():
  tokens = np.array([[5, 6, 0, 0], [0, 0, 0, 0], [1, 2, 3, 4]])
  np.testing.assert_array_equal(utils.nonpad_lengths(tokens), [2, 0, 4])


def test_resident_split_is_padded_to_a_power_of_two_without_changing_training(cache_dir, tmp_path, monkeypatch):
  assert [train.resident_rows(n) for n in (1, 2, 3, 256, 257)] == [1, 2, 4, 256, 512]
  # A split and its refit (one more example per user) share one shape, so one compiled loop serves both.
  assert train.resident_rows(131413) == train.resident_rows(153776) == train.resident_rows(225141) == 262144
  model = models.EncoderDecoderModel(network.Transformer(network.T5Config(dtype="float32", **TINY)))
  replicated = []
  real_replicate = partitioning.PjitPartitioner.replicate
  monkeypatch.setattr(partitioning.PjitPartitioner, "replicate",
                      lambda self, x: replicated.append(x) or real_replicate(self, x))
  losses = {}
  for resident in (True, False):
    r = train.train(model=model, train_dataset_cfg=_cfg(cache_dir), partitioner=partitioning.PjitPartitioner(),
                    model_dir=str(tmp_path / str(resident)), total_steps=8, eval_period=None,
                    steps_per_dispatch=4, use_tensorboard=False, resident_data=resident, eval_metric_fns=(),
                    best_metric=None)
    losses[resident] = r.losses
  num_examples = len(utils.get_dataset_arrays(_cfg(cache_dir))[utils.ENCODER_INPUT])
  assert num_examples & (num_examples - 1), "the synthetic split must not already be a power of two"
  resident_shapes = {x[utils.ENCODER_INPUT].shape[0] for x in replicated
                     if isinstance(x, dict) and utils.ENCODER_INPUT in x}
  assert resident_shapes == {train.resident_rows(num_examples)}
  np.testing.assert_allclose(losses[True], losses[False], rtol=1e-6)


def _tiny_loop_parts(cache_dir):
  """(model, partitioner, learning-rate fn, optimizer, the cached split's arrays, initial state on the host)
  of the tiny network, for tests that build a StepRunner themselves."""
  model = models.EncoderDecoderModel(network.Transformer(network.T5Config(dtype="float32", **TINY)))
  lr_fn = utils.create_learning_rate_scheduler()
  tx = utils.adafactor(lr_fn)
  arrays = utils.get_dataset_arrays(_cfg(cache_dir), utils.MODEL_FEATURES)
  params = model.get_initial_variables(jax.random.PRNGKey(0), {f: (1, a.shape[1]) for f, a in arrays.items()})
  state0 = {"step": np.zeros((), np.int32), "params": jax.device_get(params["params"]),
            "opt_state": jax.device_get(tx.init(params["params"]))}
  return model, partitioning.PjitPartitioner(), lr_fn, tx, arrays, state0


def test_fixed_trip_count_loop_runs_the_same_steps_as_the_run_time_loop(cache_dir):
  model, partitioner, lr_fn, tx, arrays, state0 = _tiny_loop_parts(cache_dir)
  data = partitioner.replicate(arrays)
  idx = partitioner.replicate(np.arange(3 * 8, dtype=np.int32).reshape(3, 8))
  rng = partitioner.replicate(np.asarray(jax.random.PRNGKey(1)))
  outs = {}
  for fixed in (True, False):
    runner = train.StepRunner(model, tx, lr_fn, partitioner, 3, resident=True, fixed_trip_count=fixed)
    for n, full in ((3, True), (2, False)):
      state = partitioner.replicate(state0)
      fn = runner.get(81, state, data, idx, partitioner.replicate(np.asarray(n, np.int32)), rng, full=full)
      state, out = fn(state, data, idx, partitioner.replicate(np.asarray(n, np.int32)), rng)
      outs[fixed, n] = (np.asarray(out["loss"])[:n], jax.device_get(state["params"]))
    assert sorted(runner._compiled) == ([(81, False), (81, True)] if fixed else [(81, False)])
  for n in (3, 2):
    np.testing.assert_array_equal(outs[True, n][0], outs[False, n][0])
    jax.tree_util.tree_map(np.testing.assert_array_equal, outs[True, n][1], outs[False, n][1])
  assert not np.array_equal(outs[True, 3][0][:2], np.zeros(2))


def test_loops_of_several_lengths_trace_the_step_once_each_plus_once_for_its_output_shapes(cache_dir):
  """The per-step outputs are scalars at every length, so their shapes are traced once per runner, not once
  per loop (tracing them costs as much as tracing the step into the loop)."""
  model, partitioner, lr_fn, tx, arrays, state0 = _tiny_loop_parts(cache_dir)
  data, idx = partitioner.replicate(arrays), partitioner.replicate(np.zeros((2, 8), np.int32))
  n, rng = partitioner.replicate(np.asarray(2, np.int32)), partitioner.replicate(np.asarray(jax.random.PRNGKey(1)))
  runner = train.StepRunner(model, tx, lr_fn, partitioner, 2, resident=True)
  traced, step = [], runner.one_step

  def counting_step(state, batch, dropout_base):
    traced.append(batch[utils.ENCODER_INPUT].shape[1])
    return step(state, batch, dropout_base)

  runner.one_step = counting_step
  runner.precompile([17, 33, 49], lambda length: (partitioner.replicate(state0), data, idx, n, rng))
  assert len(traced) == 4 and sorted(set(traced)) == [17, 33, 49], traced  # 6 when each loop traced its own
  for length in (17, 49):
    state = partitioner.replicate(state0)
    _, out = runner.get(length, state, data, idx, n, rng)(state, data, idx, n, rng)
    assert np.all(np.isfinite(np.asarray(out["loss"])))
  assert len(traced) == 4


@pytest.mark.parametrize("traced_cache", [False, True])
def test_the_training_loops_are_compiled_with_the_device_loop_options(cache_dir, tmp_path, monkeypatch, caplog,
                                                                      traced_cache):
  model, partitioner, lr_fn, tx, arrays, state = _tiny_loop_parts(cache_dir)
  args = (partitioner.replicate(arrays), partitioner.replicate(np.zeros((2, 8), np.int32)),
          partitioner.replicate(np.asarray(2, np.int32)), partitioner.replicate(np.asarray(jax.random.PRNGKey(1))))
  # An option XLA rejects shows that the loop's compile (from a stored module too) is given these options.
  monkeypatch.setattr(compilation, "DEVICE_LOOP_COMPILER_OPTIONS", {"xla_no_such_loop_option": True})
  cache = program_cache.ProgramCache(str(tmp_path), "A = 1") if traced_cache else None
  runner = train.StepRunner(model, tx, lr_fn, partitioner, 2, resident=True, program_cache=cache)
  with pytest.raises(Exception, match="xla_no_such_loop_option"):
    runner.get(17, state, *args)
  default_xla = train.StepRunner(model, tx, lr_fn, partitioner, 2, resident=True, program_cache=cache,
                                 compiler_options={})
  _, out = default_xla.get(17, state, *args)(state, *args)  # XLA's own options: it compiles and trains
  assert np.all(np.isfinite(np.asarray(out["loss"])))
  two_devices = types.SimpleNamespace(mesh=types.SimpleNamespace(size=2))
  assert train.StepRunner(model, tx, lr_fn, two_devices, 2, resident=True).compiler_options == {}
  if traced_cache:  # the stored module's compile failed on the option before the traced path's did
    assert os.listdir(tmp_path / program_cache.SUBDIR)
    assert "traced program cache unusable" in caplog.text and "xla_no_such_loop_option" in caplog.text


def _raw_states(model_dir, steps):
  """Full train states (raw params, EMA, optimizer) of periodic checkpoints, as saved."""
  import orbax.checkpoint as ocp  # pylint: disable=g-import-not-at-top
  mngr = checkpoints._manager(os.path.join(model_dir, checkpoints.PERIODIC_DIR), None, False, read_only=True)
  try:
    return {step: jax.device_get(mngr.restore(step, args=ocp.args.Composite(state=ocp.args.StandardRestore()))
                                 ["state"]) for step in steps}
  finally:
    mngr.close()


def test_parameter_ema_is_what_validation_best_and_restore_use(cache_dir, tmp_path):
  model = models.EncoderDecoderModel(network.Transformer(network.T5Config(dtype="float32", **TINY)))
  seen = {}

  def capture(ctx):
    seen[ctx.step] = jax.device_get(ctx.params)
    return {"validation/custom": float(ctx.step == 5)}  # the best ('max') is step 5

  decay, model_dir = 0.75, str(tmp_path / "ema")
  train.train(model=model, train_dataset_cfg=_cfg(cache_dir), model_dir=model_dir, total_steps=8, eval_period=1,
              steps_per_dispatch=1, use_tensorboard=False, eval_metric_fns=(capture,),
              best_metric="validation/custom", best_mode="max", ema_decay=decay,
              checkpoint_cfg=utils.CheckpointConfig(save=utils.SaveCheckpointConfig(async_save=False)))
  states = _raw_states(model_dir, range(1, 9))
  leaves = lambda tree: jax.tree_util.tree_leaves(tree)
  for step in range(2, 9):  # ema_t = d * ema_(t-1) + (1 - d) * params_t
    for ema, prev, raw in zip(leaves(states[step]["ema_params"]), leaves(states[step - 1]["ema_params"]),
                              leaves(states[step]["params"])):
      np.testing.assert_allclose(ema, decay * prev + (1 - decay) * raw, rtol=1e-5, atol=1e-7)
    for got, ema in zip(leaves(seen[step]), leaves(states[step]["ema_params"])):
      np.testing.assert_array_equal(got, ema)  # validation saw the average
  assert max(abs(a - b).max() for a, b in zip(leaves(states[8]["ema_params"]), leaves(states[8]["params"]))) > 1e-4
  best, best_step = checkpoints.restore_params(model_dir, "best")
  latest, _ = checkpoints.restore_params(model_dir, "latest")
  assert best_step == 5
  for got, ema in zip(leaves(best), leaves(states[5]["ema_params"])):
    np.testing.assert_array_equal(got, ema)
  for got, ema in zip(leaves(latest), leaves(states[8]["ema_params"])):
    np.testing.assert_array_equal(got, ema)
  # Fine-tuning from it (params only): the new run starts from, and averages from, the restored average.
  tuned_dir = str(tmp_path / "tuned")
  restore = utils.RestoreCheckpointConfig(path=model_dir, mode="latest", params_only=True)
  train.train(model=model, train_dataset_cfg=_cfg(cache_dir), model_dir=tuned_dir, total_steps=2, eval_period=1,
              steps_per_dispatch=1, use_tensorboard=False, eval_metric_fns=(), best_metric=None, ema_decay=decay,
              checkpoint_cfg=utils.CheckpointConfig(save=utils.SaveCheckpointConfig(async_save=False),
                                                    restore=restore))
  tuned = _raw_states(tuned_dir, [1])[1]
  for ema, start, raw in zip(leaves(tuned["ema_params"]), leaves(latest), leaves(tuned["params"])):
    np.testing.assert_allclose(ema, decay * start + (1 - decay) * raw, rtol=1e-5, atol=1e-7)
  with pytest.raises(ValueError, match="ema_decay"):
    train.train(model=model, train_dataset_cfg=_cfg(cache_dir), model_dir=str(tmp_path / "bad"), total_steps=1,
                ema_decay=1.0)


def test_early_stopping_checkpoints_and_a_rerun_trains_no_further(cache_dir, tmp_path):
  model = models.EncoderDecoderModel(network.Transformer(network.T5Config(dtype="float32", **TINY)))
  peak_then_fall = lambda ctx: {"validation/custom": -abs(ctx.step - 3)}  # the best ('max') is step 3
  model_dir = str(tmp_path / "early")
  kwargs = dict(model=model, train_dataset_cfg=_cfg(cache_dir), model_dir=model_dir, total_steps=20,
                eval_period=1, steps_per_dispatch=1, use_tensorboard=False, eval_metric_fns=(peak_then_fall,),
                best_metric="validation/custom", best_mode="max", early_stopping_steps=4,
                checkpoint_cfg=utils.CheckpointConfig(save=utils.SaveCheckpointConfig(period=5, async_save=False)))
  result = train.train(**kwargs)
  assert result.stopped_early and result.step == 7 and result.best["step"] == 3  # 4 steps past the best
  assert [e["step"] for e in result.evals] == list(range(1, 8))
  assert max(int(s) for s in os.listdir(os.path.join(model_dir, "checkpoints")) if s.isdigit()) == 7
  again = train.train(**kwargs)
  assert again.stopped_early and again.step == again.start_step == 7 and len(again.losses) == 0
  # Without a best metric there is nothing to be patient about: the run goes to the end.
  plain = train.train(**dict(kwargs, model_dir=str(tmp_path / "plain"), total_steps=8, best_metric=None))
  assert not plain.stopped_early and plain.step == 8
  with pytest.raises(ValueError, match="early_stopping_steps"):
    train.train(**dict(kwargs, model_dir=str(tmp_path / "bad"), early_stopping_steps=0))


def test_trimmed_encoder_gives_the_same_loss(cache_dir):
  """Length bucketing is exact: padding beyond the longest example does not change the loss."""
  model = models.EncoderDecoderModel(network.Transformer(network.T5Config(dtype="float32", **TINY)))
  arrays = utils.get_dataset_arrays(_cfg(cache_dir), utils.MODEL_FEATURES)
  short = np.flatnonzero(utils.nonpad_lengths(arrays[utils.ENCODER_INPUT]) <= 17)[:8]
  batch = {k: v[short] for k, v in arrays.items()}
  shapes = {k: v.shape for k, v in batch.items()}
  params = model.get_initial_variables(jax.random.PRNGKey(0), shapes)["params"]
  full = model.loss_fn(params, batch, None)[0]
  trimmed = model.loss_fn(params, {**batch, utils.ENCODER_INPUT: batch[utils.ENCODER_INPUT][:, :17]}, None)[0]
  np.testing.assert_allclose(float(trimmed), float(full), rtol=1e-5)


# ----------------------------------------------------------------------------------------------------------
# CLI runs in subprocesses.


# ----------------------------------------------------------------------------------------------------------
# One writer per MODEL_DIR; a resumed run checks the cache it trains on.


def _tiny_model():
  return models.EncoderDecoderModel(network.Transformer(network.T5Config(dtype="float32", **TINY)))


def _train_briefly(cache_dir, model_dir, steps):
  return train.train(model=_tiny_model(), train_dataset_cfg=_cfg(cache_dir), model_dir=model_dir,
                     total_steps=steps, eval_period=None, steps_per_dispatch=2, use_tensorboard=False,
                     eval_metric_fns=(), best_metric=None,
                     checkpoint_cfg=utils.CheckpointConfig(save=utils.SaveCheckpointConfig(async_save=False)))


def test_validation_loss_over_length_buckets_is_the_full_length_loss(cache_dir, tmp_path):
  """Validation batches trimmed to their length bucket (the first batch of each length run side by side, which
  compiles the lengths at once) give the loss of untrimmed batches, on the first pass and on a later one."""
  model = _tiny_model()
  params = model.get_initial_variables(jax.random.PRNGKey(0), {utils.ENCODER_INPUT: (1, 81),
                                                               utils.DECODER_INPUT: (1, 5),
                                                               utils.DECODER_TARGET: (1, 5)})["params"]

  def context(buckets):
    return train.EvalContext(model=model, params=params, step=0, partitioner=partitioning.PjitPartitioner(),
                             train_eval_dataset_cfg=_cfg(cache_dir, "validation", shuffle=False),
                             infer_eval_dataset_cfg=None, length_buckets=buckets, model_dir=str(tmp_path),
                             cache={})

  bucketed = context([17, 33, 49, 81])
  lengths = {length for _, length in utils.eval_batches(
      utils.nonpad_lengths(utils.get_dataset_arrays(bucketed.train_eval_dataset_cfg,
                                                    (utils.ENCODER_INPUT,))[utils.ENCODER_INPUT]), 8,
      [17, 33, 49, 81], 81)}
  assert len(lengths) >= 3  # several programs, compiled side by side
  first, again = train.validation_loss(bucketed), train.validation_loss(bucketed)
  full = train.validation_loss(context(None))
  assert first == again and first["validation/examples"] == full["validation/examples"] == 48
  for key in ("validation/loss", "validation/sequence_nll"):
    assert first[key] == pytest.approx(full[key], rel=1e-5)


def _write_lock(model_dir, pid, command):
  import socket  # pylint: disable=g-import-not-at-top
  os.makedirs(model_dir, exist_ok=True)
  with open(os.path.join(model_dir, model_dir_lock.FILENAME), "w") as f:
    json.dump({"pid": pid, "host": socket.gethostname(), "started": "2020-01-01T00:00:00", "command": command}, f)


def test_a_second_trainer_is_refused_and_a_stale_lock_is_taken_over(cache_dir, tmp_path, caplog):
  model_dir = str(tmp_path / "model")
  holder = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(120)"])
  try:
    _write_lock(model_dir, holder.pid, "python -m tiger_jax.train --gin.RANDOM_SEED=0")
    with pytest.raises(model_dir_lock.ModelDirLockedError, match=rf"pid {holder.pid} .*RANDOM_SEED=0"):
      _train_briefly(cache_dir, model_dir, 2)
    assert os.listdir(model_dir) == [model_dir_lock.FILENAME]  # nothing of the refused run was written
  finally:
    holder.kill()
    holder.wait()
  # The holder is gone (as after SIGKILL): its lock is stale, taken over with a log line, released at the end.
  with caplog.at_level("WARNING", logger="tiger_jax.model_dir_lock"):
    assert _train_briefly(cache_dir, model_dir, 2).step == 2
  assert "stale lock" in caplog.text and str(holder.pid) in caplog.text
  assert not os.path.exists(os.path.join(model_dir, model_dir_lock.FILENAME))
  # An exception inside train() releases the lock too.
  with pytest.raises(ValueError, match="ema_decay"):
    train.train(model=_tiny_model(), train_dataset_cfg=_cfg(cache_dir), model_dir=model_dir, total_steps=1,
                ema_decay=1.0)
  assert not os.path.exists(os.path.join(model_dir, model_dir_lock.FILENAME))


def _copy_cache(cache_dir, root, semantic_ids_hash):
  import shutil  # pylint: disable=g-import-not-at-top
  shutil.copytree(os.path.join(cache_dir, TASK), os.path.join(root, TASK))
  _set_info(root, semantic_ids_hash=semantic_ids_hash, data_fingerprint="d" * 64,
            built_from={"data_dir": "/data/x", "semantic_ids": "/w/ids.npz"})
  return str(root)


def _set_info(root, **fields):
  path = os.path.join(root, TASK, "info.json")
  with open(path) as f:
    info = json.load(f)
  info.update(fields)
  with open(path, "w") as f:
    json.dump(info, f)


def test_resume_refuses_a_cache_rebuilt_with_other_semantic_ids(cache_dir, tmp_path):
  cache = _copy_cache(cache_dir, tmp_path / "cache", semantic_ids_hash="a" * 64)
  model_dir = str(tmp_path / "model")
  _train_briefly(cache, model_dir, 2)
  with open(os.path.join(model_dir, provenance.FILENAME)) as f:
    recorded = json.load(f)["cache"]
  assert recorded["semantic_ids_hash"] == "a" * 64 and recorded["task"] == TASK and recorded["info_hash"]
  # Rebuilt with other IDs (the arrays do not matter: info.json is what is compared).
  _set_info(cache, semantic_ids_hash="b" * 64, built_from={"data_dir": "/data/x", "semantic_ids": "/w/lsh.npz"})
  with pytest.raises(provenance.ProvenanceError) as e:
    _train_briefly(cache, model_dir, 4)
  message = str(e.value)
  assert "a" * 12 in message and "b" * 12 in message and "Semantic IDs" in message
  assert "python -m tasks.cache_tasks" in message and "new MODEL_DIR" in message
  assert message.endswith("--data_dir=/data/x --semantic_ids=/w/ids.npz")
  assert checkpoints.TrainCheckpointer(model_dir, async_save=False).latest_step() == 2
  # The cache it was trained on again: the run resumes.
  _set_info(cache, semantic_ids_hash="a" * 64)
  assert _train_briefly(cache, model_dir, 4).start_step == 2
  # A fresh MODEL_DIR over the new cache is fine, and records that cache.
  _set_info(cache, semantic_ids_hash="b" * 64)
  _train_briefly(cache, str(tmp_path / "fresh"), 2)
  assert provenance.read(str(tmp_path / "fresh"))["cache"]["semantic_ids_hash"] == "b" * 64


def _tiny_gin(tmp, cache_dir, steps=32, extra="", name="tiny.gin"):
  path = os.path.join(tmp, name)
  with open(path, "w") as f:
    f.write(textwrap.dedent(f"""\
      from __gin__ import dynamic_registration
      import tiger_jax.train as train_script
      from tiger_jax import network
      include 'gin/runs/train.gin'
      include 'gin/models/tiger_t5.gin'
      train_script.train.eval_metric_fns = [@train_script.validation_loss]  # no beam search: fast
      train_script.train.best_metric = 'validation/loss'
      train_script.train.best_mode = 'min'
      MIXTURE_OR_TASK_NAME = '{TASK}'
      TASK_CACHE_DIR = '{cache_dir}'
      ACTIVATION_DTYPE = 'float32'
      TRAIN_STEPS = {steps}
      BATCH_SIZE = 8
      EVAL_BATCH_SIZE = 8
      EVAL_PERIOD = 8
      STATS_PERIOD = 4
      STEPS_PER_DISPATCH = 4
      LENGTH_BUCKETS = [33]
      network.T5Config:
      """) + "".join(f"  {k} = {v}\n" for k, v in TINY.items()) + extra)
  return path


def _env(compile_cache):
  env = dict(os.environ, JAX_PLATFORMS="cpu", JAX_COMPILATION_CACHE_DIR=compile_cache,
             JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS="0", JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES="0",
             XLA_FLAGS="--xla_backend_optimization_level=0", TF_CPP_MIN_LOG_LEVEL="3")
  env.pop("TIGER_TASK_CACHE_DIR", None)
  return env


def _cmd(gin_file, model_dir, *bindings):
  return [sys.executable, "-m", "tiger_jax.train", f"--gin_file={gin_file}", f'--gin.MODEL_DIR="{model_dir}"',
          *bindings]


FAULT_SCRIPT = os.path.join(REPO, "tests", "fault_injection.py")


def _default_sigint() -> None:
  """The trainer keeps an ignored SIGINT ignored (a shell's background job); the tests send it one whatever
  the terminal pytest runs in, so the child starts with the default disposition."""
  signal.signal(signal.SIGINT, signal.SIG_DFL)


class _FaultyRun:
  """A trainer under tests/fault_injection.py whose fault points (stdout) and log (stderr) are read live."""

  def __init__(self, gin_file, model_dir, env, pause):
    self.proc = subprocess.Popen(
        [sys.executable, FAULT_SCRIPT, f"--gin_file={gin_file}", f'--gin.MODEL_DIR="{model_dir}"'], cwd=REPO,
        env=dict(env, TIGER_FAULT_PAUSE=str(pause), PYTHONPATH=REPO), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        preexec_fn=_default_sigint)
    self.points, self.log_lines = queue.Queue(), queue.Queue()
    self.log = []
    for stream, sink in ((self.proc.stdout, self.points), (self.proc.stderr, self.log_lines)):
      threading.Thread(target=self._pump, args=(stream, sink), daemon=True).start()

  def _pump(self, stream, sink):
    for line in stream:
      sink.put(line)
      if sink is self.log_lines:
        self.log.append(line)
    sink.put(None)

  def wait_for_point(self, phase, nth=1, timeout=300):
    """The words after the phase of its nth fault point, or None when the run ended before it."""
    deadline, seen = time.time() + timeout, 0
    while time.time() < deadline:
      try:
        line = self.points.get(timeout=1)
      except queue.Empty:
        continue
      if line is None:
        return None
      words = line.split()
      if words[:2] == ["FAULT-POINT", phase]:
        seen += 1
        if seen == nth:
          return words[2:]
    raise AssertionError(f"no fault point {phase} #{nth} within {timeout} s")

  def wait_for_log(self, pattern, timeout=120):
    """The first match of `pattern` in a log line that arrives from now on (None if the run ended)."""
    deadline = time.time() + timeout
    while time.time() < deadline:
      try:
        line = self.log_lines.get(timeout=1)
      except queue.Empty:
        continue
      if line is None:
        return None
      match = re.search(pattern, line)
      if match:
        return match
    raise AssertionError(f"no log line matching {pattern!r} within {timeout} s")

  def finish(self, timeout=120):
    """(exit code, the whole log)."""
    try:
      self.proc.wait(timeout=timeout)
    finally:
      if self.proc.poll() is None:
        self.proc.kill()
        self.proc.wait()
    time.sleep(0.2)  # let the pump threads take the last lines
    return self.proc.returncode, "".join(self.log)


@pytest.fixture(scope="module")
def cli(tmp_path_factory, cache_dir):
  """A finished uninterrupted CLI run (the reference) and what the other CLI tests need."""
  tmp = str(tmp_path_factory.mktemp("cli"))
  compile_cache = os.path.join(tmp, "xla_cache")
  gin_file = _tiny_gin(tmp, cache_dir)
  model_dir = os.path.join(tmp, "reference")
  start = time.time()
  out = subprocess.run(_cmd(gin_file, model_dir), cwd=REPO, env=_env(compile_cache), capture_output=True,
                       text=True, timeout=600)
  assert out.returncode == 0, out.stderr[-4000:]
  # Every dispatch exactly STEPS_PER_DISPATCH steps long (full chunks), for tests that name the steps where
  # dispatches start and end; with partial chunks a bucket's short last chunk moves the later boundaries.
  full_chunks_gin_file = _tiny_gin(tmp, cache_dir, name="tiny_full_chunks.gin",
                                   extra="train_script.train.bucket_partial_chunks = False\n")
  return {"tmp": tmp, "gin_file": gin_file, "full_chunks_gin_file": full_chunks_gin_file,
          "env": _env(compile_cache), "model_dir": model_dir, "log": out.stderr, "seconds": time.time() - start}


def test_cli_run_writes_config_metrics_checkpoints(cli):
  model_dir = cli["model_dir"]
  config = open(os.path.join(model_dir, "config.gin")).read()
  assert f"MODEL_DIR = '{model_dir}'" in config or f'MODEL_DIR = "{model_dir}"' in config
  assert "train_script.train" in config
  records = [json.loads(line) for line in open(os.path.join(model_dir, "metrics.jsonl"))]
  train_losses = [r["train/loss"] for r in records if "train/loss" in r]
  assert len(train_losses) == 8 and train_losses[-1] < train_losses[0]
  assert all(r["train/learning_rate"] == pytest.approx(0.01) for r in records if "train/learning_rate" in r)
  evals = [r for r in records if "validation/loss" in r]
  assert [r["step"] for r in evals] == [8, 16, 24, 32]
  assert sorted(int(s) for s in os.listdir(os.path.join(model_dir, "checkpoints")) if s.isdigit()) == [
      16, 24, 32]  # keep = 3
  best_step = min(evals, key=lambda r: r["validation/loss"])["step"]
  assert [int(s) for s in os.listdir(os.path.join(model_dir, "best")) if s.isdigit()] == [best_step]
  assert any(f.startswith("events.out.tfevents") for f in os.listdir(os.path.join(model_dir, "train")))
  for needle in ("step 32/32 loss", "steps/s", "ETA", "eval at step 32"):
    assert needle in cli["log"], needle
  params, step = checkpoints.restore_params(model_dir, "best")
  assert step == best_step and "encoder" in params


def test_cli_without_a_task_cache_names_the_missing_file_and_the_command_that_builds_it(cli):
  empty = os.path.join(cli["tmp"], "no_cache")
  out = subprocess.run(_cmd(cli["gin_file"], os.path.join(cli["tmp"], "uncached"), f'--gin.TASK_CACHE_DIR="{empty}"'),
                       cwd=REPO, env=cli["env"], capture_output=True, text=True, timeout=300)
  assert out.returncode == 2, out.stderr[-3000:]
  assert "Traceback" not in out.stderr
  errors = [line for line in out.stderr.splitlines() if line.startswith("error:")]
  assert len(errors) == 1, out.stderr[-3000:]
  assert f"{empty}/{TASK}/train.npz: no cached split 'train'" in errors[0]
  assert f"tasks.cache_tasks --tasks={TASK}" in errors[0] and f"--output_cache_dir={empty}" in errors[0]


def _compilation_cache_dir(log_text):
  return re.search(r"persistent compilation cache: (\S+)", log_text).group(1)


def _train_losses(model_dir):
  return [json.loads(line)["train/loss"] for line in open(os.path.join(model_dir, "metrics.jsonl"))
          if "train/loss" in line]


def test_rerun_loads_the_traced_loop_from_disk_and_trains_identically(cli, cache_dir):
  """The reference run stored its traced loop beside the XLA cache; a rerun in another work directory (its
  own MODEL_DIR and a copy of the task cache, as each recipe run has) finds it instead of tracing, and trains
  exactly as the reference did."""
  assert "(traced and stored)" in cli["log"], cli["log"][-3000:]
  traced = os.path.join(_compilation_cache_dir(cli["log"]), program_cache.SUBDIR)
  entries = sorted(os.listdir(traced))
  assert any(e.endswith(".bin") for e in entries) and any(e.endswith(".json") for e in entries)
  model_dir = os.path.join(cli["tmp"], "rerun")
  task_cache_copy = os.path.join(cli["tmp"], "rerun_task_cache")
  shutil.copytree(cache_dir, task_cache_copy)
  out = subprocess.run(_cmd(cli["gin_file"], model_dir, f'--gin.TASK_CACHE_DIR="{task_cache_copy}"'), cwd=REPO,
                       env=cli["env"], capture_output=True, text=True, timeout=600)
  assert out.returncode == 0, out.stderr[-3000:]
  assert "(traced program from disk)" in out.stderr and "tracing and lowering" not in out.stderr
  assert _train_losses(model_dir) == _train_losses(cli["model_dir"])
  for a, b in zip(jax.tree_util.tree_leaves(_final_params(model_dir)[0]),
                  jax.tree_util.tree_leaves(_final_params(cli["model_dir"])[0])):
    np.testing.assert_array_equal(a, b)
  assert sorted(os.listdir(traced)) == entries  # nothing new stored


def test_an_unreadable_traced_loop_is_traced_again_with_a_warning(cli):
  xla = os.path.join(cli["tmp"], "xla_cache_damaged")
  shutil.copytree(_compilation_cache_dir(cli["log"]), xla)
  traced = os.path.join(xla, program_cache.SUBDIR)
  for name in os.listdir(traced):
    if name.endswith(".bin"):
      with open(os.path.join(traced, name), "wb") as f:
        f.write(b"not a serialized module")
  model_dir = os.path.join(cli["tmp"], "damaged")
  out = subprocess.run(_cmd(cli["gin_file"], model_dir), cwd=REPO, env=dict(cli["env"], TIGER_COMPILATION_CACHE_DIR=xla),
                       capture_output=True, text=True, timeout=600)
  assert out.returncode == 0, out.stderr[-3000:]
  assert "traced program cache unusable" in out.stderr and "tracing and lowering" in out.stderr
  assert _train_losses(model_dir) == _train_losses(cli["model_dir"])


def test_two_devices_load_their_traced_loop_from_disk_and_train_as_a_traced_run(cli):
  """The data-parallel loop of a 2-device run is stored, then loaded by a rerun, which trains bit-identically
  to a run without the cache; a 1-device run of the same configuration does not take the 2-device module."""
  two_devices = dict(cli["env"], XLA_FLAGS=cli["env"]["XLA_FLAGS"] + " --xla_force_host_platform_device_count=2")
  xla = os.path.join(cli["tmp"], "xla_cache_two_devices")
  traced = os.path.join(xla, program_cache.SUBDIR)

  def run(name, env):
    model_dir = os.path.join(cli["tmp"], name)
    out = subprocess.run(_cmd(cli["gin_file"], model_dir, "--gin.TRAIN_STEPS=16"), cwd=REPO, env=env,
                         capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr[-3000:]
    assert "traced program cache unusable" not in out.stderr, out.stderr[-3000:]
    return model_dir, out.stderr

  uncached, log = run("two_devices_uncached", dict(two_devices, TIGER_COMPILATION_CACHE_DIR="off"))
  assert "tracing and lowering" in log and "(traced " not in log
  first, log = run("two_devices_first", dict(two_devices, TIGER_COMPILATION_CACHE_DIR=xla))
  assert "(traced and stored)" in log and "tracing and lowering" not in log, log[-3000:]
  stored = sorted(os.listdir(traced))
  devices = lambda names: {json.load(open(os.path.join(traced, n)))["devices"] for n in names if n.endswith(".json")}
  assert devices(stored) == {2}
  rerun, log = run("two_devices_rerun", dict(two_devices, TIGER_COMPILATION_CACHE_DIR=xla))
  assert "(traced program from disk)" in log and "(traced and stored)" not in log, log[-3000:]
  assert "tracing and lowering" not in log
  assert sorted(os.listdir(traced)) == stored
  for model_dir in (first, rerun):
    assert _train_losses(model_dir) == _train_losses(uncached)
    for a, b in zip(jax.tree_util.tree_leaves(_final_params(model_dir)[0]),
                    jax.tree_util.tree_leaves(_final_params(uncached)[0])):
      np.testing.assert_array_equal(a, b)
  _, log = run("one_device", dict(cli["env"], TIGER_COMPILATION_CACHE_DIR=xla))
  assert "(traced and stored)" in log and "(traced program from disk)" not in log, log[-3000:]
  assert set(stored) < set(os.listdir(traced)) and devices(set(os.listdir(traced)) - set(stored)) == {1}


def _wait_for(path, proc, timeout):
  deadline = time.time() + timeout
  while time.time() < deadline:
    if os.path.isdir(path):
      return True
    if proc.poll() is not None:
      return False
    time.sleep(0.05)
  return False


def _final_params(model_dir):
  params, step = checkpoints.restore_params(model_dir, "latest")
  return jax.tree_util.tree_map(np.asarray, params), step


def test_sigkill_then_rerun_resumes_to_identical_params(cli):
  model_dir = os.path.join(cli["tmp"], "killed")
  run = _FaultyRun(cli["gin_file"], model_dir, cli["env"], pause=0.4)
  try:
    assert _wait_for(os.path.join(model_dir, "checkpoints", "8"), run.proc, 300), "no checkpoint appeared"
    assert run.proc.poll() is None, "the run ended before it could be killed"
    run.proc.send_signal(signal.SIGKILL)
  finally:
    run.finish(60)
  killed_at = max(int(s) for s in os.listdir(os.path.join(model_dir, "checkpoints")) if s.isdigit())
  assert killed_at < 32
  out = subprocess.run(_cmd(cli["gin_file"], model_dir), cwd=REPO, env=cli["env"], capture_output=True,
                       text=True, timeout=600)
  assert out.returncode == 0, out.stderr[-4000:]
  assert f"at step {killed_at}" in out.stderr and "resumed" in out.stderr
  resumed, step = _final_params(model_dir)
  reference, ref_step = _final_params(cli["model_dir"])
  assert step == ref_step == 32
  for a, b in zip(jax.tree_util.tree_leaves(resumed), jax.tree_util.tree_leaves(reference)):
    np.testing.assert_array_equal(a, b)  # bit-identical on the CPU
  # Rerunning a finished run trains nothing and succeeds.
  again = subprocess.run(_cmd(cli["gin_file"], model_dir), cwd=REPO, env=cli["env"], capture_output=True,
                         text=True, timeout=600)
  assert again.returncode == 0 and "nothing to train" in again.stderr


def test_resume_with_another_architecture_fails_without_touching_config(cli):
  """The restore's shape check comes before config.gin, metrics.jsonl and provenance.json are written."""
  import shutil  # pylint: disable=g-import-not-at-top
  model_dir = os.path.join(cli["tmp"], "rearchitected")
  shutil.copytree(cli["model_dir"], model_dir)
  kept = {name: open(os.path.join(model_dir, name)).read()
          for name in ("config.gin", "metrics.jsonl", provenance.FILENAME)
          if os.path.exists(os.path.join(model_dir, name))}
  assert "config.gin" in kept and "num_encoder_layers = 1" in kept["config.gin"]
  out = subprocess.run(_cmd(cli["gin_file"], model_dir, "--gin.TRAIN_STEPS=40",
                            "--gin.network.T5Config.num_encoder_layers=2"),
                       cwd=REPO, env=cli["env"], capture_output=True, text=True, timeout=600)
  assert out.returncode != 0
  for name, text in kept.items():
    assert open(os.path.join(model_dir, name)).read() == text, f"{name} was rewritten by a refused resume"
  assert out.returncode == 2, out.stderr[-3000:]
  assert "does not fit the configured model" in out.stderr and "Traceback" not in out.stderr
  assert not os.path.exists(os.path.join(model_dir, model_dir_lock.FILENAME))  # released on the error


def test_cli_second_trainer_exits_4_naming_the_holder(cli):
  model_dir = os.path.join(cli["tmp"], "locked")
  holder = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(300)"])
  try:
    _write_lock(model_dir, holder.pid, "python -m tiger_jax.train --gin.RANDOM_SEED=0")
    out = subprocess.run(_cmd(cli["gin_file"], model_dir), cwd=REPO, env=cli["env"], capture_output=True,
                         text=True, timeout=600)
  finally:
    holder.kill()
    holder.wait()
  assert out.returncode == 4, out.stderr[-3000:]
  assert f"in use by another trainer (pid {holder.pid}" in out.stderr and "Traceback" not in out.stderr
  assert sorted(os.listdir(model_dir)) == [model_dir_lock.FILENAME]


def test_initial_checkpoint_from_another_model_dir(cli):
  """RestoreCheckpointConfig.path (fine-tuning): a fresh MODEL_DIR starts from another run's state."""
  model_dir = os.path.join(cli["tmp"], "finetune")
  out = subprocess.run(_cmd(cli["gin_file"], model_dir, "--gin.TRAIN_STEPS=36",
                            f"--gin.INITIAL_CHECKPOINT_PATH='{cli['model_dir']}'"),
                       cwd=REPO, env=cli["env"], capture_output=True, text=True, timeout=600)
  assert out.returncode == 0, out.stderr[-4000:]
  assert f"initialized the train state from {cli['model_dir']} at step 32" in out.stderr
  assert _final_params(model_dir)[1] == 36


def test_initial_checkpoint_of_a_specific_step(cli):
  """mode 'specific' (t5x's): the path names one step directory, and that step is restored, not the latest."""
  specific = os.path.join(cli["model_dir"], "checkpoints", "24")
  model_dir = os.path.join(cli["tmp"], "finetune_specific")
  out = subprocess.run(_cmd(cli["gin_file"], model_dir, "--gin.TRAIN_STEPS=28",
                            f"--gin.INITIAL_CHECKPOINT_PATH='{specific}'",
                            "--gin.utils.RestoreCheckpointConfig.mode='specific'"),
                       cwd=REPO, env=cli["env"], capture_output=True, text=True, timeout=600)
  assert out.returncode == 0, out.stderr[-4000:]
  assert f"initialized the train state from {specific} at step 24" in out.stderr
  assert _final_params(model_dir)[1] == 28


def test_initial_checkpoint_of_a_step_never_saved_is_one_line_and_exit_code_2(cli):
  missing = os.path.join(cli["model_dir"], "checkpoints", "999")
  out = subprocess.run(_cmd(cli["gin_file"], os.path.join(cli["tmp"], "finetune_missing"),
                            f"--gin.INITIAL_CHECKPOINT_PATH='{missing}'",
                            "--gin.utils.RestoreCheckpointConfig.mode='specific'"),
                       cwd=REPO, env=cli["env"], capture_output=True, text=True, timeout=300)
  assert out.returncode == 2 and "Traceback" not in out.stderr, out.stderr[-3000:]
  errors = [line for line in out.stderr.splitlines() if line.startswith("error:")]
  assert errors == [f"error: {missing}: no checkpoint at step 999"], errors


def _steps_in(directory):
  """Complete checkpoints: orbax renames a step's temporary directory to the bare number when it is done."""
  return sorted(int(name) for name in os.listdir(directory) if name.isdigit()) if os.path.isdir(directory) else []


def _saved(model_dir):
  return _steps_in(os.path.join(model_dir, "checkpoints"))


def _claims(log):
  """Steps the log says were checkpointed."""
  return [int(s) for s in re.findall(r"checkpointed step (\d+)", log)]


def test_sigterm_checkpoints_and_exits(cli):
  model_dir = os.path.join(cli["tmp"], "terminated")
  run = _FaultyRun(cli["full_chunks_gin_file"], model_dir, cli["env"], pause=1.0)
  try:
    assert run.wait_for_point("step", nth=3) == ["8"]  # the dispatch of steps 8..11 is in flight
    run.proc.send_signal(signal.SIGTERM)
  finally:
    code, err = run.finish()
  assert code == 128 + signal.SIGTERM, err[-3000:]
  # Step 12 (16 if the signal came late) was saved, and the log names the step that is on disk.
  assert _claims(err) == [_saved(model_dir)[-1]] and _saved(model_dir)[-1] in (12, 16), err[-3000:]
  assert "Traceback" not in err


def test_sigint_checkpoints_without_a_traceback(cli):
  """Ctrl-C: the last finished step is saved, the exit code is a shell's 130, and no KeyboardInterrupt."""
  model_dir = os.path.join(cli["tmp"], "interrupted")
  run = _FaultyRun(cli["full_chunks_gin_file"], model_dir, cli["env"], pause=1.0)
  try:
    assert run.wait_for_point("step", nth=4) == ["12"]
    run.proc.send_signal(signal.SIGINT)
  finally:
    code, err = run.finish()
  assert code == 128 + signal.SIGINT, err[-3000:]
  assert "Traceback" not in err and "KeyboardInterrupt" not in err, err[-3000:]
  # Step 16 is also a validation step: its validation was not run, so the checkpoint says it is pending.
  assert _saved(model_dir)[-1] == 16 and _claims(err) == [16]
  meta = json.load(open(os.path.join(model_dir, "checkpoints", "16", "meta", "metadata")))
  assert meta["eval_pending"] is True


def test_sigint_while_setting_up_stops_before_the_first_step(cli):
  """Ctrl-C while the data is read: no traceback, no checkpoint, exit 130, and the log says so."""
  model_dir = os.path.join(cli["tmp"], "interrupted_early")
  run = _FaultyRun(cli["gin_file"], model_dir, cli["env"], pause=1.0)
  try:
    assert run.wait_for_log(r"train split: \d+ examples") is not None
    run.proc.send_signal(signal.SIGINT)
  finally:
    code, err = run.finish()
  assert code == 128 + signal.SIGINT and "Traceback" not in err, err[-3000:]
  assert "stopped before training step 1; the latest checkpoint on disk is none" in err
  assert _saved(model_dir) == []


def _evals(model_dir):
  """{step: [validation losses logged at that step]} from metrics.jsonl."""
  out = {}
  for line in open(os.path.join(model_dir, "metrics.jsonl")):
    row = json.loads(line)
    if "validation/loss" in row:
      out.setdefault(row["step"], []).append(row["validation/loss"])
  return out


def _best_step(model_dir):
  return _steps_in(os.path.join(model_dir, "best"))


def test_sigterm_during_validation_claims_only_a_checkpoint_on_disk(cli):
  """Issue 27 item 7: the trainer said 'checkpointed step 60' while only step 40 was on disk. It logged
  the claim when the (asynchronous) save was queued; a kill soon after (a preemption's grace period
  running out) left no such step. The claim must hold the moment it is read, even under that kill."""
  model_dir = os.path.join(cli["tmp"], "terminated_in_validation")
  run = _FaultyRun(cli["gin_file"], model_dir, cli["env"], pause=1.5)  # checkpoint writes take 1.5 s
  try:
    assert run.wait_for_point("validation", nth=2) == ["16"]
    run.proc.send_signal(signal.SIGTERM)
    claim = run.wait_for_log(r"checkpointed step (\d+)")
    assert claim is not None, "no checkpoint was claimed"
    on_disk = _saved(model_dir)  # read the moment the claim appears, before anything else can finish
    run.proc.send_signal(signal.SIGKILL)
  finally:
    code, err = run.finish()
  assert int(claim.group(1)) == 16 and on_disk[-1] == 16, (claim.group(0), on_disk, err[-3000:])
  assert "validation at step 16 cut short" in err
  # The resumed run validates step 16 first, so the record and the best checkpoint match a run never stopped.
  out = subprocess.run(_cmd(cli["gin_file"], model_dir), cwd=REPO, env=cli["env"], capture_output=True,
                       text=True, timeout=600)
  assert out.returncode == 0, out.stderr[-4000:]
  reference = _evals(cli["model_dir"])
  assert _evals(model_dir) == {step: [value] for step, (value,) in reference.items()}
  assert _best_step(model_dir) == _best_step(cli["model_dir"])


def test_nan_loss_stops_and_keeps_last_good_checkpoint(cli, cache_dir, tmp_path):
  """A token id outside the vocabulary embeds as NaN; the first batch holding it must stop training."""
  poisoned = str(tmp_path / "poisoned")
  os.makedirs(os.path.join(poisoned, TASK))
  for split in ("train", "validation", "test"):
    data = dict(np.load(os.path.join(cache_dir, TASK, f"{split}.npz")))
    if split == "train":
      n = len(data["encoder_input_tokens"])
      lengths = utils.nonpad_lengths(data["encoder_input_tokens"])
      schedule = utils.BatchSchedule(lengths, 8, seed=0, buckets=[33], chunk_steps=4, max_length=81)
      idx, _ = schedule.steps(0, 16)
      first_use = {}
      for step in range(16):
        for i in idx[step]:
          first_use.setdefault(int(i), step)
      victim = next(i for i in range(n) if first_use.get(i, -1) in range(9, 16))
      nan_step = first_use[victim]
      data["encoder_input_tokens"][victim, 0] = 10_000
    np.savez(os.path.join(poisoned, TASK, f"{split}.npz"), **data)
  model_dir = str(tmp_path / "nan_run")
  out = subprocess.run(_cmd(cli["gin_file"], model_dir, f"--gin.TASK_CACHE_DIR='{poisoned}'"), cwd=REPO,
                       env=cli["env"], capture_output=True, text=True, timeout=600)
  assert out.returncode == 3, out.stderr[-4000:]
  assert f"non-finite loss (nan) at step {nan_step}" in out.stderr
  assert "last good checkpoint is step 8" in out.stderr
  steps = sorted(int(s) for s in os.listdir(os.path.join(model_dir, "checkpoints")) if s.isdigit())
  assert steps == [8]
  params, step = _final_params(model_dir)
  assert step == 8 and all(np.isfinite(x).all() for x in jax.tree_util.tree_leaves(params))


_DEVICES_SCRIPT = textwrap.dedent("""
  import sys, json
  import jax, numpy as np
  from tiger_jax import models, network, partitioning, train, utils
  cache_dir, out_dir = sys.argv[1], sys.argv[2]
  assert len(jax.devices()) == 4
  tiny = network.T5Config(dtype="float32", **json.loads(sys.argv[3]))
  cfg = lambda split, shuffle: utils.DatasetConfig("tiny_task", {"inputs": 81, "targets": 5}, split, 8,
                                                   shuffle, cache_dir=cache_dir)
  seen = []
  def custom_metric(ctx):
    seen.append(ctx.step)
    return {"validation/custom": float(ctx.step % 16)}  # best ('max') is step 8
  results = {}
  for n in (1, 4):
    p = partitioning.PjitPartitioner(devices=jax.devices()[:n])
    r = train.train(model=models.EncoderDecoderModel(network.Transformer(tiny)),
                    train_dataset_cfg=cfg("train", True), train_eval_dataset_cfg=cfg("validation", False),
                    partitioner=p, model_dir=f"{out_dir}/d{n}", total_steps=16, eval_period=8,
                    steps_per_dispatch=4, use_tensorboard=False,
                    eval_metric_fns=(train.validation_loss, custom_metric),
                    best_metric="validation/custom", best_mode="max")
    results[n] = (r.losses, [e["validation/loss"] for e in r.evals], r.best,
                  jax.tree_util.tree_leaves(jax.device_get(r.state["params"])))
  np.testing.assert_allclose(results[4][0], results[1][0], rtol=2e-5, atol=1e-6)
  np.testing.assert_allclose(results[4][1], results[1][1], rtol=2e-5)
  for a, b in zip(results[4][3], results[1][3]):
    np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5)
  assert results[4][2]["step"] == 8 and results[4][2]["metric"] == "validation/custom", results[4][2]
  assert seen == [8, 16, 8, 16], seen
  print("LOSSES", json.dumps([float(x) for x in results[4][0]]))
""")


@pytest.mark.slow
def test_four_devices_match_one_device(cache_dir, tmp_path):
  env = dict(os.environ, JAX_PLATFORMS="cpu", XLA_FLAGS="--xla_force_host_platform_device_count=4 "
             "--xla_backend_optimization_level=0")
  out = subprocess.run([sys.executable, "-c", _DEVICES_SCRIPT, cache_dir, str(tmp_path), json.dumps(TINY)],
                       cwd=REPO, env=env, capture_output=True, text=True, timeout=900)
  assert out.returncode == 0, out.stderr[-4000:]
  assert "LOSSES" in out.stdout


def _free_port():
  import socket  # pylint: disable=g-import-not-at-top
  with socket.socket() as s:
    s.bind(("localhost", 0))
    return s.getsockname()[1]


def _run_two_processes(command_of, env, timeout):
  """Runs command_of(0) and command_of(1) side by side: (both exited 0, the tails of their stderr)."""
  procs = [subprocess.Popen(command_of(i), cwd=REPO, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                            text=True) for i in range(2)]
  try:
    logs = [p.communicate(timeout=timeout)[1] for p in procs]
  except subprocess.TimeoutExpired:
    logs = [f"timed out after {timeout} s (a barrier never completed?)"] * 2
  finally:
    for p in procs:
      if p.poll() is None:
        p.kill()
  return all(p.returncode == 0 for p in procs), logs[0][-3000:] + logs[1][-3000:]


@pytest.mark.slow
def test_two_processes_match_one_process(cli):
  """--multiprocess_gpu with 2 CPU processes x 2 devices: each feeds half the batch, same losses."""
  env = dict(cli["env"], XLA_FLAGS=cli["env"]["XLA_FLAGS"] + " --xla_force_host_platform_device_count=2",
             JAX_CPU_COLLECTIVES_IMPLEMENTATION="gloo")
  # The free port can be taken by another process before the coordinator binds it, and a loaded 2-core
  # machine can stall the pair far beyond its 20-26 s alone: two attempts, 150 s each.
  for attempt in range(2):
    model_dir = os.path.join(cli["tmp"], f"two_processes_{attempt}")
    port = _free_port()
    ok, logs = _run_two_processes(lambda i: _cmd(  # pylint: disable=cell-var-from-loop
        cli["gin_file"], model_dir, "--gin.TRAIN_STEPS=16", "--multiprocess_gpu",
        f"--coordinator_address=localhost:{port}", "--process_count=2", f"--process_index={i}"), env, 150)
    if ok:
      break
  assert ok, logs

  def losses(directory):
    records = [json.loads(line) for line in open(os.path.join(directory, "metrics.jsonl"))]
    return {(r["step"], k): r[k] for r in records for k in ("train/loss", "validation/loss")
            if k in r and r["step"] <= 16}

  ours, reference = losses(model_dir), losses(cli["model_dir"])
  assert sorted(ours) == sorted(reference) and len(ours) == 6  # 4 train lines, 2 evals
  np.testing.assert_allclose([ours[k] for k in sorted(ours)], [reference[k] for k in sorted(ours)], rtol=1e-5)


_CONCURRENT_SAVES_SCRIPT = textwrap.dedent("""
  import sys
  import jax, numpy as np
  from jax.sharding import Mesh, NamedSharding, PartitionSpec
  index, port, model_dir = int(sys.argv[1]), sys.argv[2], sys.argv[3]
  jax.distributed.initialize(f"localhost:{port}", 2, index)
  from tiger_jax import checkpoints
  replicated = NamedSharding(Mesh(np.array(jax.devices()), ("d",)), PartitionSpec())
  host = np.arange(6, dtype=np.float32)
  w = jax.make_array_from_callback(host.shape, replicated, lambda i: host[i])
  ckpt = checkpoints.TrainCheckpointer(model_dir, async_save=True)
  for step in (8, 16):  # the training loop's order at an eval step: best (after the eval), then periodic
    ckpt.save_best(step, {"w": w * step}, {"step": step})
    ckpt.save(step, {"params": {"w": w}}, {"step": step})
  ckpt.close()
""")


@pytest.mark.slow
def test_two_processes_save_best_and_periodic_of_one_step_at_once(tmp_path):
  """Both async managers in flight for the same step must not share orbax's step-named barriers.

  Without a barrier prefix per manager the two saves collide ('Barrier ... is already ongoing', then a hang,
  or the primary finalizing best/ before the other process wrote). The best params then restore on this
  single process's one device, whatever topology saved them.
  """
  env = dict(os.environ, JAX_PLATFORMS="cpu", JAX_CPU_COLLECTIVES_IMPLEMENTATION="gloo")
  port = _free_port()
  ok, logs = _run_two_processes(
      lambda i: [sys.executable, "-c", _CONCURRENT_SAVES_SCRIPT, str(i), str(port), str(tmp_path)], env, 120)
  assert ok, logs
  params, step = checkpoints.restore_params(str(tmp_path), "best")
  assert step == 16
  np.testing.assert_array_equal(np.asarray(params["w"]), 16 * np.arange(6, dtype=np.float32))
  assert sorted(os.listdir(tmp_path / "checkpoints")) == ["16", "8"]


FAULT_SEED = int(os.environ.get("TIGER_FAULT_SEED", "27"))


@pytest.mark.slow
def test_random_kills_resume_to_the_parameters_of_an_uninterrupted_run(cli, cache_dir):
  """Fault injection: SIGKILL and SIGTERM, each during a dispatch, a checkpoint write and a validation pass,
  in a seeded random order at seeded random moments, on one MODEL_DIR; then a plain rerun to the end.

  Every SIGTERM must exit 143 having claimed only a checkpoint that is on disk; the finished run must end
  with the parameters (bit for bit), the validation record and the best checkpoint of a run never stopped.
  Set TIGER_FAULT_SEED to try other kill points; a failure message names the seed and the kills.
  """
  rng = np.random.default_rng(FAULT_SEED)
  pause = 0.5
  faults_dir = os.path.join(cli["tmp"], "faults")
  os.makedirs(faults_dir, exist_ok=True)
  gin_file = _tiny_gin(faults_dir, cache_dir, steps=64)  # long enough for six kills before the end
  reference_dir = os.path.join(faults_dir, "reference")
  out = subprocess.run(_cmd(gin_file, reference_dir), cwd=REPO, env=cli["env"], capture_output=True, text=True,
                       timeout=600)
  assert out.returncode == 0, out.stderr[-4000:]

  model_dir = os.path.join(faults_dir, "killed")
  plan = [(phase, sig) for phase in ("step", "save", "validation") for sig in (signal.SIGKILL, signal.SIGTERM)]
  done = []
  for i in rng.permutation(len(plan)):
    phase, sig = plan[i]
    nth, delay = int(rng.integers(1, 3)), float(rng.uniform(0, pause))
    run = _FaultyRun(gin_file, model_dir, cli["env"], pause)
    claim, on_disk_at_claim = None, None
    try:
      point = run.wait_for_point(phase, nth)
      if point is not None:
        time.sleep(delay)
        run.proc.send_signal(sig)
        if sig == signal.SIGTERM:
          claim = run.wait_for_log(r"(?:checkpointed step|checkpoint of step) (\d+)")
          on_disk_at_claim = _saved(model_dir)  # what a kill right after the claim would leave
    finally:
      code, err = run.finish()
    done.append(f"{signal.Signals(sig).name} at {phase} #{nth} {point} +{delay:.2f}s -> exit {code}, "
                f"on disk {_saved(model_dir)}")
    context = f"seed {FAULT_SEED}; kills so far: {done}\n{err[-3000:]}"
    if point is None:  # the run got past every such point and finished
      assert code == 0, context
      continue
    if sig == signal.SIGTERM:
      assert code == 128 + signal.SIGTERM and "Traceback" not in err, context
      assert claim is not None and on_disk_at_claim, context
      assert int(claim.group(1)) == on_disk_at_claim[-1] == _saved(model_dir)[-1], context
    else:
      assert code == -signal.SIGKILL, context
  print(f"seed {FAULT_SEED} kills:", *done, sep="\n  ")
  assert sum("-> exit 0" not in d for d in done) >= 5, f"seed {FAULT_SEED}: too few kills landed: {done}"

  out = subprocess.run(_cmd(gin_file, model_dir), cwd=REPO, env=cli["env"], capture_output=True, text=True,
                       timeout=600)
  assert out.returncode == 0, out.stderr[-4000:]
  resumed, step = _final_params(model_dir)
  reference, ref_step = _final_params(reference_dir)
  assert step == ref_step == 64
  for a, b in zip(jax.tree_util.tree_leaves(resumed), jax.tree_util.tree_leaves(reference)):
    np.testing.assert_array_equal(a, b, err_msg=f"seed {FAULT_SEED}: {done}")
  # Each validation step is recorded with the reference's value (repeated when a kill made it run twice).
  expected = {step: set(values) for step, values in _evals(reference_dir).items()}
  assert {step: set(values) for step, values in _evals(model_dir).items()} == expected, done
  assert _best_step(model_dir) == _best_step(reference_dir), done


def test_summaries_write_legal_tensorboard_tags_without_a_log_line_per_metric(tmp_path, caplog):
  """`validation/ndcg@10` reaches TensorBoard as `ndcg_10` under `validation/`, and tensorboardX is not left
  to rename it (it logs a line per metric and eval when it does); metrics.jsonl keeps the original name."""
  pytest.importorskip("tensorboardX")
  summaries = train._Summaries(str(tmp_path), enabled=True)
  with caplog.at_level("INFO"):
    summaries.scalars(10, {"validation/ndcg@10": 0.25, "validation/recall@5": 0.5, "loss": 1.0})
  summaries.close()
  assert not [r for r in caplog.records if "illegal" in r.getMessage()]
  events = b"".join(open(os.path.join(root, f), "rb").read()
                    for root, _, files in os.walk(tmp_path / "validation") for f in files)
  assert b"ndcg_10" in events and b"recall_5" in events and b"ndcg@10" not in events
  assert any(f.startswith("events") for f in os.listdir(tmp_path / "train"))
  row = json.loads(open(tmp_path / "metrics.jsonl").read())
  assert row == {"step": 10, "validation/ndcg@10": 0.25, "validation/recall@5": 0.5, "loss": 1.0}
