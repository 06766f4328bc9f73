"""Leave-one-out: targets, histories, the 20-item cap, and Beauty's 131,413 training examples."""
import numpy as np
import pytest

from tiger_jax.data import bundled_dataset_dir, load_dataset
from tiger_jax.data.splits import leave_one_out
from tiger_jax.data.types import Sessions


def test_split_of_one_user_by_hand():
  s = Sessions(["u"], [[10, 11, 12, 13, 14, 15]])
  train = leave_one_out(s, "train")
  assert train.target.tolist() == [11, 12, 13]
  assert [h.tolist() for h in train.history] == [[10], [10, 11], [10, 11, 12]]
  val, test = leave_one_out(s, "validation"), leave_one_out(s, "test")
  assert val.target.tolist() == [14] and val.history[0].tolist() == [10, 11, 12, 13]
  assert test.target.tolist() == [15] and test.history[0].tolist() == [10, 11, 12, 13, 14]


def test_history_keeps_the_most_recent_items():
  s = Sessions(["u"], [list(range(30))])
  test = leave_one_out(s, "test", max_history=20)
  assert test.history[0].tolist() == list(range(9, 29))
  train = leave_one_out(s, "train", max_history=20)
  assert len(train) == 27 and train.history[-1].tolist() == list(range(7, 27))
  assert max(len(h) for h in train.history) == 20


def test_three_item_user_has_no_training_example_and_short_users_fail():
  s = Sessions(["a", "b"], [[1, 2, 3], [4, 5, 6, 7]])
  train = leave_one_out(s, "train")
  assert train.user_index.tolist() == [1] and train.target.tolist() == [5]
  with pytest.raises(ValueError, match="'c' has 2 items"):
    leave_one_out(Sessions(["c"], [[1, 2]]), "test")
  with pytest.raises(ValueError, match="unknown split"):
    leave_one_out(s, "dev")


def test_beauty_example_counts():
  ds = load_dataset(bundled_dataset_dir("beauty"))
  train = leave_one_out(ds.sessions, "train")
  assert len(train) == 131413 == sum(len(s) - 3 for s in ds.sessions.sequences)
  assert len(leave_one_out(ds.sessions, "validation")) == len(leave_one_out(ds.sessions, "test")) == 22363
  assert np.all(np.diff(train.user_index) >= 0)
