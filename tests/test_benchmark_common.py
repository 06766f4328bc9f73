"""benchmarks._common: what every benchmark stores beside its numbers."""
from benchmarks import _common


def test_run_metadata_names_the_command_revision_and_any_xla_flags(monkeypatch):
  monkeypatch.delenv("XLA_FLAGS", raising=False)
  monkeypatch.setenv("TIGER_GIT_REVISION", "abc1234+dirty")
  plain = _common.run_metadata([_common.__file__, "--x", "a b"], note="n")
  assert plain["command"] == "python -m benchmarks._common --x 'a b'"
  assert plain["git_revision"] == "abc1234+dirty" and plain["note"] == "n" and "xla_flags" not in plain
  monkeypatch.setenv("XLA_FLAGS", "--xla_gpu_autotune_level=0")
  assert _common.run_metadata(["x"])["xla_flags"] == "--xla_gpu_autotune_level=0"
