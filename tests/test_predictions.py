"""tiger_jax/predictions.py: the one writer and checked reader of predictions.jsonl."""
import os

import pytest

from tiger_jax import eval as eval_lib
from tiger_jax import predictions
from tiger_jax.data.errors import DataFormatError


def test_written_lists_read_back_in_order_with_line_numbers_and_target_ranks(tmp_path):
  path = str(tmp_path / "eval_test" / predictions.FILE_NAME)
  os.makedirs(os.path.dirname(path))
  predictions.write(path, [predictions.Ranked("u1", "b", ["a", "b", "c"], [0.9, 0.51234567, 0.1]),
                           predictions.Ranked("u2", "z", ["a", "b"]),
                           predictions.Ranked(7, "a", ["a"], [1.0])])
  rows = predictions.read(path)
  assert [(r.user, r.target, r.topk, r.line) for r in rows] == [
      ("u1", "b", ["a", "b", "c"], 1), ("u2", "z", ["a", "b"], 2), ("7", "a", ["a"], 3)]
  assert rows[0].scores == [0.9, 0.51235, 0.1] and rows[1].scores is None  # rounded to 5 digits; none written
  assert predictions.target_ranks(rows) == [1, -1, 0]
  assert [name for name in os.listdir(os.path.dirname(path))] == [predictions.FILE_NAME]  # no temporary left


@pytest.mark.parametrize("text, message", [
    ('{"user": "u", "target": "a", "topk": ["a", 3]}\n', r"line 1, field 'topk': must be a list of asins"),
    ('{"user": "u", "target": "a", "topk": []}\n{"user": "v", "topk": []}\n', r"line 2, field 'target': missing"),
    ('{"user": "u", "target": "a", "topk": []}\n' * 2, r"line 2, field 'user': user 'u' appears a second time"),
    ("\n\n", r"holds no predictions"),
])
def test_bad_files_are_refused_naming_file_line_and_field(tmp_path, text, message):
  path = tmp_path / "p.jsonl"
  path.write_text(text)
  with pytest.raises(DataFormatError, match=message) as e:
    predictions.read(str(path))
  assert str(path) in str(e.value)
  # The independent checker of eval's metrics reads through the same rules.
  with pytest.raises(DataFormatError, match=message):
    eval_lib.metrics_from_predictions(str(path))
