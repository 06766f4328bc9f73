"""benchmarks.rqvae_speed: how --set and --variant overrides are read."""
import pytest

from benchmarks import rqvae_speed


def test_overrides_keep_bracketed_values_whole_and_read_python_literals():
  got = rqvae_speed._overrides("hidden_dims=(512,256),beta=0.5, compute_dtype=bfloat16,num_epochs=5000")
  assert got == {"hidden_dims": (512, 256), "beta": 0.5, "compute_dtype": "bfloat16", "num_epochs": 5000}
  assert rqvae_speed._overrides("") == {}


def test_an_item_without_a_value_names_itself():
  with pytest.raises(SystemExit, match="'num_epochs' in --set or --variant is not key=value"):
    rqvae_speed._overrides("beta=0.5,num_epochs")
