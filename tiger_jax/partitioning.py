"""Device mesh and data-parallel sharding, with t5x's partitioner vocabulary.

TIGER's model is small (~13M parameters), so parameters are replicated and only the batch is sharded, over
the mesh's 'data' axis. The 'model' axis exists (size `num_partitions`, 1 today) so that gin files and code
written against t5x's `PjitPartitioner(num_partitions=...)` keep their shape if model parallelism is added.
"""
from __future__ import annotations

import dataclasses
from typing import Any, Callable, Optional, Sequence

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec

PartitionSpec = PartitionSpec  # re-exported for gin files and callers
DATA_AXIS = "data"
MODEL_AXIS = "model"


@dataclasses.dataclass(frozen=True)
class DataLayout:
  """Which slice of the global batch this process feeds (t5x's DataLayout)."""
  batch_size: int
  shard_id: int
  num_shards: int
  is_first_host_in_replica_set: bool = True


class PjitPartitioner:
  """A ('data', 'model') mesh over all devices; batch sharded over 'data', parameters replicated."""

  def __init__(self, num_partitions: Optional[int] = 1, model_parallel_submesh: Optional[Any] = None,
               backend: Optional[str] = None, devices: Optional[Sequence[Any]] = None):
    if model_parallel_submesh is not None:
      raise NotImplementedError("model_parallel_submesh: TIGER trains data-parallel only")
    num_partitions = num_partitions or 1
    if num_partitions != 1:
      raise NotImplementedError(f"num_partitions={num_partitions}: model parallelism is reserved (the "
                                "'model' axis has size 1); the ~13M-parameter model fits any one device")
    devices = list(devices) if devices is not None else jax.devices(backend)
    self.num_partitions = num_partitions
    self._devices = devices
    self.mesh = Mesh(np.asarray(devices, dtype=object).reshape(-1, num_partitions), (DATA_AXIS, MODEL_AXIS))

  # -- shardings ----------------------------------------------------------------------------------------

  @property
  def num_data_shards(self) -> int:
    return self.mesh.shape[DATA_AXIS]

  @property
  def replicated(self) -> NamedSharding:
    return NamedSharding(self.mesh, PartitionSpec())

  def data_sharding(self, batch_axis: int = 0) -> NamedSharding:
    """Sharding of an array whose `batch_axis` is the global batch."""
    return NamedSharding(self.mesh, PartitionSpec(*([None] * batch_axis), DATA_AXIS))

  @property
  def data_partition_spec(self) -> PartitionSpec:
    return PartitionSpec(DATA_AXIS)

  def sharding(self, spec: Any) -> Any:
    """PartitionSpec (or pytree of them) -> NamedSharding(s) on this mesh; shardings pass through."""
    def convert(s):
      if isinstance(s, PartitionSpec):
        return NamedSharding(self.mesh, s)
      return s
    return jax.tree_util.tree_map(convert, spec, is_leaf=lambda s: isinstance(s, PartitionSpec))

  def check_batch_size(self, batch_size: int) -> None:
    if batch_size % self.num_data_shards:
      raise ValueError(f"global batch size {batch_size} is not divisible by the {self.num_data_shards} "
                       f"data-parallel devices")

  # -- t5x's partition/compile ----------------------------------------------------------------------------

  def partition(self, fn: Callable, in_axis_resources: Any = None, out_axis_resources: Any = None,
                static_argnums: Sequence[int] = (), donate_argnums: Sequence[int] = ()) -> Callable:
    """jit `fn` over the mesh; axis resources are PartitionSpecs or shardings (None: let XLA choose)."""
    kwargs = {}
    if in_axis_resources is not None:
      kwargs["in_shardings"] = self.sharding(in_axis_resources)
    if out_axis_resources is not None:
      kwargs["out_shardings"] = self.sharding(out_axis_resources)
    return jax.jit(fn, static_argnums=tuple(static_argnums), donate_argnums=tuple(donate_argnums),
                   **kwargs)

  def compile(self, partitioned_fn: Callable, *args: Any) -> Any:
    """Ahead-of-time compile for the given (possibly abstract) arguments."""
    return partitioned_fn.lower(*args).compile()

  # -- per-host data ----------------------------------------------------------------------------------

  def get_data_layout(self, batch_size: int) -> DataLayout:
    """This process's share of a global batch of `batch_size` (whole rows of the 'data' axis)."""
    self.check_batch_size(batch_size)
    start, stop = self.host_batch_slice(batch_size)
    num_shards = batch_size // max(1, stop - start)
    return DataLayout(batch_size=batch_size, shard_id=start // max(1, stop - start), num_shards=num_shards)

  def host_batch_slice(self, batch_size: int) -> tuple[int, int]:
    """[start, stop) rows of the global batch that live on this process's devices."""
    sharding = self.data_sharding()
    index_map = sharding.addressable_devices_indices_map((batch_size,))
    starts = [idx[0].start or 0 for idx in index_map.values()]
    stops = [batch_size if idx[0].stop is None else idx[0].stop for idx in index_map.values()]
    start, stop = min(starts), max(stops)
    if stop - start != sum(b - a for a, b in set(zip(starts, stops))):
      raise ValueError("this process's devices do not hold a contiguous slice of the batch")
    return start, stop

  def shard_host_batch(self, local_batch: Any, global_batch_size: int, batch_axis: int = 0) -> Any:
    """Global batch-sharded arrays from this process's rows (jax.make_array_from_process_local_data)."""
    sharding = self.data_sharding(batch_axis)

    def make(x):
      x = np.asarray(x)
      shape = list(x.shape)
      shape[batch_axis] = global_batch_size
      if jax.process_count() == 1:
        return jax.device_put(x, sharding)
      return jax.make_array_from_process_local_data(sharding, x, tuple(shape))

    return jax.tree_util.tree_map(make, local_batch)

  def shard_global_batch(self, global_batch: Any, batch_axis: int = 0) -> Any:
    """Like `shard_host_batch` for callers that hold the whole batch on every process."""
    leaves = jax.tree_util.tree_leaves(global_batch)
    size = np.shape(leaves[0])[batch_axis]
    start, stop = self.host_batch_slice(size)
    local = jax.tree_util.tree_map(
        lambda x: np.take(np.asarray(x), np.arange(start, stop), axis=batch_axis), global_batch)
    return self.shard_host_batch(local, size, batch_axis)

  def replicate(self, tree: Any) -> Any:
    """Puts identical host values on every device (every process must pass the same values)."""
    sharding = self.replicated

    def put(x):
      if jax.process_count() == 1 or isinstance(x, jax.Array) and x.is_fully_addressable is False:
        return jax.device_put(x, sharding)
      x = np.asarray(x)
      return jax.make_array_from_process_local_data(sharding, x, x.shape)

    return jax.tree_util.tree_map(put, tree)


Partitioner = PjitPartitioner
