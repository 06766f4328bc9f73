"""benchmarks/kernel_trace.py: kernels read from a profiler trace, per step; the RQ-VAE loop's profile."""
import gzip
import json

import numpy as np
import pytest

from benchmarks import kernel_trace


def write_trace(directory, events):
  path = directory / "plugins" / "profile" / "run" / "perfetto_trace.json.gz"  # where jax.profiler writes it
  path.parent.mkdir(parents=True)
  with gzip.open(path, "wt") as f:
    json.dump({"traceEvents": events}, f)


def test_device_stream_kernels_are_counted_and_host_rows_are_not(tmp_path):
  meta = [{"ph": "M", "name": "process_name", "pid": 1, "args": {"name": "/device:GPU:0"}},
          {"ph": "M", "name": "process_name", "pid": 2, "args": {"name": "/host:CPU"}},
          {"ph": "M", "name": "thread_name", "pid": 1, "tid": 7, "args": {"name": "Stream #13(Compute)"}},
          {"ph": "M", "name": "thread_name", "pid": 1, "tid": 8, "args": {"name": "XLA Modules"}},
          {"ph": "M", "name": "thread_name", "pid": 2, "tid": 9, "args": {"name": "python"}}]
  kernels = ([{"ph": "X", "pid": 1, "tid": 7, "name": "gemm_fusion", "dur": 4.0}] * 6
             + [{"ph": "X", "pid": 1, "tid": 7, "name": "loop_convert_fusion", "dur": 1.0}] * 2
             + [{"ph": "X", "pid": 1, "tid": 8, "name": "jit_step", "dur": 26.0},  # module row: not a kernel
                {"ph": "X", "pid": 2, "tid": 9, "name": "gemm_fusion", "dur": 50.0}])  # host: not a kernel
  write_trace(tmp_path, meta + kernels)
  found = kernel_trace.device_kernels(str(tmp_path))
  assert found == {"gemm_fusion": [4.0] * 6, "loop_convert_fusion": [1.0] * 2}
  summary = kernel_trace.summarise(found, steps=2, top=1)
  assert summary["kernels_per_step"] == 4.0
  assert summary["device_busy_ms_per_step"] == pytest.approx(0.013)
  assert summary["distinct_kernels"] == 2
  assert summary["top"] == [{"name": "gemm_fusion", "ms_per_step": pytest.approx(0.012), "calls_per_step": 3.0,
                             "share": pytest.approx(24 / 26)}]


def test_a_missing_trace_is_an_error_naming_the_directory(tmp_path):
  with pytest.raises(FileNotFoundError, match=str(tmp_path)):
    kernel_trace.device_kernels(str(tmp_path))


def test_rqvae_epoch_loop_runs_and_a_cpu_trace_reports_why_it_has_no_kernels():
  from benchmarks import rqvae_speed
  from tiger_jax import rqvae
  x = np.random.default_rng(0).standard_normal((40, 12)).astype(np.float32)
  cfg = rqvae.RQVAEConfig(hidden_dims=(8,), latent_dim=4, codebook_size=4, batch_size=16, kmeans_iters=2,
                          num_epochs=2, dead_code_reset_every=2)
  trained = rqvae.train_rqvae(x, cfg)
  out = rqvae_speed.epoch_loop_kernels(trained["trainer"], x, trained["params"], dispatches=2, top=3)
  assert out["epochs"] == 2 * 2 and out["steps"] == 2 * 2 * 3
  assert "trace_error" in out or out["kernels_per_step"] > 0
