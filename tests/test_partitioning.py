"""Mesh and data sharding, on the one CPU device and (in a subprocess) on 4 forced host devices."""
import os
import subprocess
import sys
import textwrap

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from tiger_jax import partitioning

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_mesh_axes_and_shardings():
  p = partitioning.PjitPartitioner()
  assert p.mesh.axis_names == ("data", "model")
  assert p.mesh.shape["model"] == 1
  assert p.num_data_shards == len(jax.devices())
  assert p.data_sharding().spec == partitioning.PartitionSpec("data")
  assert p.data_sharding(batch_axis=1).spec == partitioning.PartitionSpec(None, "data")
  assert p.replicated.spec == partitioning.PartitionSpec()


def test_model_parallelism_is_reserved():
  with pytest.raises(NotImplementedError, match="num_partitions"):
    partitioning.PjitPartitioner(num_partitions=2)


def test_partition_and_host_batch_single_device():
  p = partitioning.PjitPartitioner()
  batch = {"x": np.arange(12, dtype=np.float32).reshape(6, 2)}
  assert p.host_batch_slice(6) == (0, 6)
  assert p.get_data_layout(6).num_shards == 1
  sharded = p.shard_global_batch(batch)
  fn = p.partition(lambda b: jnp.sum(b["x"]), in_axis_resources=(p.data_sharding(),),
                   out_axis_resources=p.replicated)
  assert float(fn(sharded)) == 66.0
  compiled = p.compile(fn, sharded)
  assert float(compiled(sharded)) == 66.0


_FOUR_DEVICES = textwrap.dedent("""
  import jax, jax.numpy as jnp, numpy as np
  from tiger_jax import partitioning
  assert len(jax.devices()) == 4, jax.devices()
  p = partitioning.PjitPartitioner()
  assert p.num_data_shards == 4
  try:
    p.check_batch_size(6)
    raise SystemExit("batch 6 over 4 devices must be refused")
  except ValueError as e:
    assert "not divisible" in str(e)
  assert p.host_batch_slice(8) == (0, 8)  # one process holds every row
  x = np.arange(16, dtype=np.float32).reshape(8, 2)
  g = p.shard_global_batch({"x": x})["x"]
  assert len(g.addressable_shards) == 4 and g.addressable_shards[0].data.shape == (2, 2)
  assert g.sharding.spec == partitioning.PartitionSpec("data")
  r = p.replicate(np.ones(3))
  assert all(s.data.shape == (3,) for s in r.addressable_shards)
  f = p.partition(lambda w, b: jnp.mean(b @ w), in_axis_resources=(p.replicated, p.data_sharding()),
                  out_axis_resources=p.replicated)
  w = p.replicate(np.ones((2, 3), np.float32))
  np.testing.assert_allclose(float(f(w, g)), float(np.mean(x @ np.ones((2, 3)))), rtol=1e-6)
  one = partitioning.PjitPartitioner(devices=jax.devices()[:1])
  assert one.num_data_shards == 1
  print("OK")
""")


def test_four_host_devices_subprocess():
  env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=4", JAX_PLATFORMS="cpu")
  out = subprocess.run([sys.executable, "-c", _FOUR_DEVICES], cwd=REPO, env=env, capture_output=True,
                       text=True, timeout=120)
  assert out.returncode == 0, out.stderr[-3000:]
  assert "OK" in out.stdout
