"""tiger_jax.utils.atomic_write: a file is replaced whole or not at all."""
import json
import os

import numpy as np
import pytest

from tiger_jax import utils


def test_a_finished_block_replaces_the_file_and_leaves_no_temporary(tmp_path):
  path = str(tmp_path / "new" / "dir" / "out.npy")  # the directory is created
  with utils.atomic_write(path, "wb") as f:
    np.save(f, np.arange(5))
    assert not os.path.exists(path)  # nothing visible until the block ends
  np.testing.assert_array_equal(np.load(path), np.arange(5))
  assert os.listdir(os.path.dirname(path)) == ["out.npy"]


def test_a_failed_block_keeps_the_old_file_and_removes_its_temporary(tmp_path):
  path = str(tmp_path / "metrics.json")
  utils.write_json(path, {"ndcg@10": 0.05})
  with pytest.raises(RuntimeError, match="killed"):
    with utils.atomic_write(path) as f:
      f.write('{"ndcg@10": ')
      raise RuntimeError("killed mid-write")
  assert json.load(open(path)) == {"ndcg@10": 0.05}
  assert os.listdir(tmp_path) == ["metrics.json"]


def test_only_whole_file_write_modes_are_accepted(tmp_path):
  with pytest.raises(ValueError, match="mode"):
    with utils.atomic_write(str(tmp_path / "x"), "a"):
      pass
