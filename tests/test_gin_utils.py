"""t5x-style flags: the --gin. shorthand, file order, search paths, includes and distributed set-up."""
import os
import re

import gin
import pytest

from tiger_jax import gin_utils

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture(autouse=True)
def clean_gin():
  gin.clear_config(clear_constants=True)
  yield
  gin.clear_config(clear_constants=True)


def _fn(a=0, b=0):
  return a, b


def test_rewrite_gin_args():
  args = ["--gin_file=x.gin", '--gin.MODEL_DIR="/tmp/m"', "--gin.TRAIN_STEPS", "7", "--other=1"]
  assert gin_utils.rewrite_gin_args(args) == [
      "--gin_file=x.gin", '--gin_bindings=MODEL_DIR = "/tmp/m"', "--gin_bindings=TRAIN_STEPS = 7",
      "--other=1"]
  # The value may itself contain '='.
  assert gin_utils.rewrite_gin_args(["--gin.f.x='a=b'"]) == ["--gin_bindings=f.x = 'a=b'"]
  with pytest.raises(ValueError, match="needs a value"):
    gin_utils.rewrite_gin_args(["--gin.X"])


def test_parse_flags_defaults_and_multiprocess():
  flags = gin_utils.parse_flags(["--gin_file=a.gin", "--gin_file=b.gin", "--gin.X=1", "--gin_bindings=Y = 2",
                                 "--multiprocess_gpu", "--coordinator_address=10.0.0.1:1234",
                                 "--process_count=2", "--process_index=1", "--alsologtostderr"])
  assert flags.gin_file == ["a.gin", "b.gin"]
  assert flags.gin_bindings == ["X = 1", "Y = 2"]
  assert flags.gin_search_paths == list(gin_utils.DEFAULT_GIN_SEARCH_PATHS)
  assert flags.multiprocess_gpu is True
  assert (flags.coordinator_address, flags.process_count, flags.process_index) == ("10.0.0.1:1234", 2, 1)
  flags = gin_utils.parse_flags(["--gin_search_paths=/a,/b", "--multiprocess_gpu=false"])
  assert flags.gin_search_paths[:2] == ["/a", "/b"]
  assert gin_utils.REPO_GIN_DIR in flags.gin_search_paths
  assert flags.multiprocess_gpu is False
  with pytest.raises(SystemExit):
    gin_utils.parse_flags(["--no_such_flag=1"])


def test_later_files_and_bindings_override(tmp_path):
  gin.external_configurable(_fn, "test_fn")
  (tmp_path / "a.gin").write_text("test_fn.a = 1\ntest_fn.b = 1\n")
  (tmp_path / "b.gin").write_text("test_fn.b = 2\n")
  gin_utils.parse_gin_flags([str(tmp_path)], ["a.gin", str(tmp_path / "b.gin")], ["test_fn.a = 3"])
  assert gin.get_configurable("test_fn")() == (3, 2)


def test_include_through_search_path_and_macros(tmp_path):
  sub = tmp_path / "configs" / "runs"
  sub.mkdir(parents=True)
  (sub / "base.gin").write_text(
      "from __gin__ import dynamic_registration\n"
      "from tiger_jax import gin_utils\n"
      "N = %gin.REQUIRED\n"
      "gin_utils.sum_fn.var1 = %N\n")
  (tmp_path / "exp.gin").write_text("include 'runs/base.gin'\nN = 5\n")
  gin_utils.parse_gin_flags([str(tmp_path / "configs")], [str(tmp_path / "exp.gin")],
                            ["gin_utils.sum_fn.var2 = 4"])
  assert gin.get_configurable(gin_utils.sum_fn)() == 9


def test_missing_required_macro_is_reported(tmp_path):
  (tmp_path / "a.gin").write_text("from __gin__ import dynamic_registration\n"
                                  "from tiger_jax import gin_utils\n"
                                  "M = %gin.REQUIRED\n"
                                  "gin_utils.bool_fn.var1 = %M\n")
  with pytest.raises(ValueError, match="M.*gin.REQUIRED"):
    gin_utils.parse_gin_flags([str(tmp_path)], ["a.gin"], [])


def test_missing_file_names_search_paths(tmp_path):
  with pytest.raises(FileNotFoundError, match="nope.gin"):
    gin_utils.parse_gin_flags([str(tmp_path)], ["nope.gin"], [])


def test_repo_run_file_parses():
  """gin/runs/train.gin resolves from any directory and declares t5x's macros."""
  gin_utils.parse_gin_flags(gin_utils.DEFAULT_GIN_SEARCH_PATHS, ["gin/runs/train.gin", "gin/models/tiger_t5.gin"],
                            ["MODEL_DIR = '/tmp/x'", "MIXTURE_OR_TASK_NAME = 't'", "TRAIN_STEPS = 1"],
                            finalize_config=False)
  text = gin.config_str()
  for macro in ("MODEL_DIR", "MIXTURE_OR_TASK_NAME", "TASK_FEATURE_LENGTHS", "TRAIN_STEPS", "BATCH_SIZE",
                "USE_CACHED_TASKS", "EVAL_PERIOD", "RANDOM_SEED", "DROPOUT_RATE"):
    assert f"{macro} =" in text
  for scope in ("train/utils.DatasetConfig", "train_eval/utils.DatasetConfig",
                "infer_eval/utils.DatasetConfig"):
    assert scope in text


def test_run_parses_gin_and_calls_main(tmp_path, monkeypatch):
  gin.external_configurable(_fn, "test_fn2")
  (tmp_path / "a.gin").write_text("test_fn2.a = 1\n")
  calls = []
  monkeypatch.setattr("jax.distributed.initialize", lambda **kw: calls.append(kw))
  out = gin_utils.run(lambda flags: gin.get_configurable("test_fn2")(),
                      [f"--gin_file={tmp_path / 'a.gin'}", "--gin.test_fn2.b=2", "--multiprocess_gpu",
                       "--coordinator_address=h:1", "--process_count=1", "--process_index=0"])
  assert out == (1, 2)
  assert calls == [{"coordinator_address": "h:1", "num_processes": 1, "process_id": 0}]


def test_run_reports_a_missing_checkpoint_in_one_line_with_exit_code_2(tmp_path, capsys):
  """A stage run before the one that writes its input (eval before train) names the path, not a traceback."""
  from tiger_jax import checkpoints  # pylint: disable=g-import-not-at-top
  model_dir = str(tmp_path / "model")
  with pytest.raises(SystemExit) as exit_info:
    gin_utils.run(lambda flags: checkpoints.restore_params(model_dir, "best"), [])
  assert exit_info.value.code == 2
  err = capsys.readouterr().err
  errors = [line for line in err.splitlines() if line.startswith("error:")]
  assert "Traceback" not in err and len(errors) == 1, err
  assert errors[0].startswith(f"error: {model_dir}: no checkpoint (best)"), errors


def test_write_config(tmp_path):
  gin.external_configurable(_fn, "test_fn3")
  gin.parse_config("test_fn3.a = 4")
  path = gin_utils.write_config(str(tmp_path))
  assert path == os.path.join(str(tmp_path), "config.gin")
  assert "test_fn3.a = 4" in open(path).read()


@pytest.mark.parametrize("name,steps", [("beauty_quick", 1000), ("beauty", 200000), ("sports", 200000),
                                        ("toys", 100000)])
def test_experiment_files_parse_for_training_and_for_data_stages(name, steps):
  gin_utils.parse_gin_flags(gin_utils.DEFAULT_GIN_SEARCH_PATHS, [f"gin/{name}.gin"],
                            ['MODEL_DIR = "/tmp/m"'])
  assert gin.query_parameter("%TRAIN_STEPS") == steps
  assert gin.query_parameter("%BATCH_SIZE") == (64 if name == "beauty_quick" else 256)
  from tiger_jax import train  # pylint: disable=g-import-not-at-top
  assert gin.get_configurable(train.train) is not None
  assert gin.query_parameter("make_semantic_ids.collaborative") is False  # the paper's text IDs
  gin.clear_config(clear_constants=True)
  # Data stages (embed, semantic ids) read the same file but must not trip over the trainer's bindings.
  flags = gin_utils.parse_stage_flags([f"--gin_file=gin/{name}.gin", "--data_dir=d", "--work_dir=w"], "stage")
  assert flags.data_dir == "d" and gin.query_parameter("%TRAIN_STEPS") == steps


@pytest.mark.parametrize("name,steps,width,smoothing,ema", [("beauty_tuned", 20000, (128, 1024), 0.2, None),
                                                            ("sports_tuned", 10000, (256, 2048), 0.2, 0.999)])
def test_refit_files_train_on_train_and_validation_without_validation_metrics(name, steps, width, smoothing, ema):
  gin_utils.parse_gin_flags(gin_utils.DEFAULT_GIN_SEARCH_PATHS, [f"gin/{name}.gin"], ['MODEL_DIR = "/tmp/m"'])
  assert gin.query_parameter("%TRAIN_STEPS") == steps
  assert gin.query_parameter("%LABEL_SMOOTHING") == smoothing
  assert gin.query_parameter("%EMA_DECAY") == ema
  assert (gin.query_parameter("network.T5Config.emb_dim"), gin.query_parameter("network.T5Config.mlp_dim")) == width
  heads = (gin.query_parameter("network.T5Config.num_heads"), gin.query_parameter("network.T5Config.head_dim"))
  assert heads == (6, 64)
  assert gin.query_parameter("train/utils.DatasetConfig.split") == "train+validation"
  assert gin.query_parameter("infer_eval/utils.DatasetConfig.split") == "validation"
  from tiger_jax import train  # pylint: disable=g-import-not-at-top
  assert gin.query_parameter("train_script.train.eval_metric_fns") == []
  assert gin.query_parameter("train_script.train.best_metric") is None
  assert gin.get_configurable(train.train) is not None
  assert gin.query_parameter("make_semantic_ids.collaborative") is True
  gin.clear_config(clear_constants=True)


EXPERIMENT_FILES = sorted(f[:-len(".gin")] for f in os.listdir(os.path.join(REPO, "gin")) if f.endswith(".gin"))


@pytest.mark.parametrize("name", EXPERIMENT_FILES)
def test_experiment_files_are_shallow_and_say_what_they_are(name):
  """A header of three lines at most, no history, and includes of a run file, a model file and one other."""
  with open(os.path.join(REPO, "gin", f"{name}.gin")) as f:
    lines = f.read().splitlines()
  header = []
  for line in lines:
    if not line.startswith("#"):
      break
    header.append(line)
  assert 1 <= len(header) <= 3, header
  assert not re.search(r"20\d\d-\d\d|H100|H200|plan|issue|gpu_jobs", "\n".join(lines), re.I)
  includes = [re.match(r"include '(.*)'", line).group(1) for line in lines if line.startswith("include ")]
  runs = [i for i in includes if i.startswith("gin/runs/")]
  models = [i for i in includes if i.startswith("gin/models/")]
  others = [i for i in includes if i not in runs + models]
  assert len(runs) <= 1 and len(models) <= 1 and len(others) <= 1, includes
  for other in others:  # the other file is an experiment or a Semantic-ID recipe, never a chain of them
    assert other.startswith("gin/rqvae/") or other.count("/") == 1, other


@pytest.mark.parametrize("binding,message", [
    ("TRAIN_STEP = 5", "TRAIN_STEP (did you mean TRAIN_STEPS"),
    ("RQVAEConfg.num_epochs = 5", "unknown configurable 'RQVAEConfg' (did you mean RQVAEConfig?)"),
    ("RQVAEConfig.num_epoch = 5", "has no parameter 'num_epoch' (did you mean num_epochs?)"),
    ("embed_item.model_name = 'x'", "unknown configurable 'embed_item' (did you mean embed_items?)"),
    ("TRAIN_STEPS = abc", "--gin.TRAIN_STEPS=abc: 'abc' is not a gin value"),
    ("MODEL_DIR = /tmp/x", "a string needs quotes, e.g. --gin.MODEL_DIR=\"'/tmp/x'\""),
])
def test_unknown_names_and_unreadable_values_are_errors_that_name_the_flag(binding, message):
  with pytest.raises(gin_utils.GinConfigError, match=re.escape(message)):
    gin_utils.parse_gin_flags(gin_utils.DEFAULT_GIN_SEARCH_PATHS, ["gin/beauty_quick.gin"],
                              ['MODEL_DIR = "/tmp/m"', binding])


def test_data_stage_rejects_a_misspelt_binding_with_one_line_and_exit_code_2(capsys):
  with pytest.raises(SystemExit) as e:
    gin_utils.parse_stage_flags(["--gin_file=gin/beauty_quick.gin", "--data_dir=d", "--work_dir=w",
                                 "--gin.RQVAEConfg.num_epochs=5"], "stage")
  assert e.value.code == 2
  err = capsys.readouterr().err.strip()
  assert len(err.splitlines()) == 1 and "did you mean RQVAEConfig?" in err


def test_a_macro_only_a_gin_file_sets_and_nothing_reads_is_an_error(tmp_path):
  (tmp_path / "exp.gin").write_text("include 'gin/beauty_quick.gin'\nEVAL_PERIODS = 10\n")
  with pytest.raises(gin_utils.GinConfigError, match="EVAL_PERIODS"):
    gin_utils.parse_gin_flags(gin_utils.DEFAULT_GIN_SEARCH_PATHS, [str(tmp_path / "exp.gin")],
                              ['MODEL_DIR = "/tmp/m"'])


def test_a_model_file_parses_alone_although_only_a_run_file_reads_its_model_macro():
  """Benchmarks build just the network from gin/models/*.gin; MODEL is t5x's macro for the run file."""
  from benchmarks import train_speed  # pylint: disable=g-import-not-at-top
  model = train_speed.make_model("gin/models/tiger_t5.gin", "bfloat16", 0.1, True,
                                 bindings=["network.T5Config.dropout_impl = 'hash'"])
  assert model.module.config.dropout_impl == "hash" and model.module.config.one_hot_lookups
  # A flag that sets MODEL and nothing reads is still the error it was.
  with pytest.raises(gin_utils.GinConfigError, match="MODEL"):
    gin_utils.parse_gin_flags(gin_utils.DEFAULT_GIN_SEARCH_PATHS, ["gin/models/tiger_t5.gin"],
                              ["MODEL = @models.EncoderDecoderModel()"], finalize_config=False)
