"""tiger_jax/t5x_adapter.py and gin/t5x/: TIGER driven by the real t5x.

The first tests need no t5x: they check the adapter against t5x's protocols as t5x's EncoderDecoderModel
uses them (keywords of the module call, the `params_axes` collection read by flax's partitioning helpers,
the decode_fn call and its output layout) and parse gin/t5x/ against the project's own modules. The tests
marked `needs_t5x` run t5x itself (installed from its own source) and are skipped without it.
"""
import ast
import importlib
import importlib.util
import inspect
import json
import os
import re
import subprocess
import sys

import flax
from flax.linen import partitioning as flax_partitioning
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from tiger_jax import decoding
from tiger_jax import models
from tiger_jax import network
from tiger_jax import t5x_adapter
from tiger_jax import vocab as vocab_lib

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
LAYOUT = vocab_lib.DEFAULT_LAYOUT
TARGET_LENGTH = LAYOUT.num_levels + 1
T5X_AXIS_NAMES = {"vocab", "embed", "heads", "kv", "mlp", "relpos_buckets"}
needs_t5x = pytest.mark.skipif(importlib.util.find_spec("t5x") is None, reason="t5x is not installed")


def small_config(**overrides):
  base = dict(vocab_size=LAYOUT.vocab_size, emb_dim=32, num_heads=2, head_dim=8, num_encoder_layers=1,
              num_decoder_layers=2, mlp_dim=64, dropout_rate=0.0)
  base.update(overrides)
  return network.T5Config(**base)


def init_variables(config, batch=2, input_length=9):
  module = t5x_adapter.T5xTransformer(config)
  ones = jnp.ones((batch, input_length), jnp.int32)
  targets = jnp.ones((batch, TARGET_LENGTH), jnp.int32)
  # t5x's EncoderDecoderModel.get_initial_variables calls init with these keywords.
  return module, module.init(jax.random.PRNGKey(0), ones, targets, targets, encoder_positions=None,
                             decoder_positions=None, encoder_segment_ids=None, decoder_segment_ids=None,
                             decode=False, enable_dropout=False)


def test_casting_weights_once_is_refused_where_t5x_applies_the_module():
  with pytest.raises(ValueError, match="cast_weights_once applies only to tiger_jax's own trainer"):
    init_variables(small_config(dtype="bfloat16", cast_weights_once=True))


def random_inputs(rng, batch, length=9):
  tokens = rng.integers(LAYOUT.codeword_offset, LAYOUT.user_offset, size=(batch, length)).astype(np.int32)
  tokens[0, length - 3:] = 0  # a padded row
  return jnp.asarray(tokens)


def random_trie(rng, num_items):
  codes = set()
  while len(codes) < num_items:
    codes.add(tuple(int(c) for c in rng.integers(0, 8, size=LAYOUT.num_levels)))
  return decoding.SemanticIdTrie.from_codes(np.array(sorted(codes)), LAYOUT.codebook_size)


def test_the_library_imports_no_t5x():
  """t5x is optional: the adapter speaks its protocols without importing it, and nothing else mentions it."""
  for root, _, files in os.walk(os.path.join(REPO, "tiger_jax")):
    for name in (f for f in files if f.endswith(".py")):
      path = os.path.join(root, name)
      with open(path) as f:
        tree = ast.parse(f.read(), path)
      for node in ast.walk(tree):
        names = ([a.name for a in node.names] if isinstance(node, ast.Import)
                 else [node.module or ""] if isinstance(node, ast.ImportFrom) else [])
        assert not any(n.split(".")[0] == "t5x" for n in names), f"{path}:{node.lineno} imports t5x"


# ------------------------------------------------------------------------- logical axes


@pytest.mark.parametrize("overrides", [{}, {"mlp_activations": ("gelu", "linear"), "logits_via_embedding": False}])
def test_every_parameter_gets_logical_axis_names(overrides):
  _, variables = init_variables(small_config(**overrides))
  params = flax.traverse_util.flatten_dict(variables["params"], sep="/")
  # What t5x's train state does with the collection: flax's get_axis_names strips '_axes' and makes specs.
  specs = flax.traverse_util.flatten_dict(
      flax_partitioning.get_axis_names(variables["params_axes"]), sep="/",
      is_leaf=lambda _, x: isinstance(x, jax.sharding.PartitionSpec))
  assert set(specs) == set(params)
  for path, spec in specs.items():
    assert len(spec) == params[path].ndim, path
    assert set(spec) <= T5X_AXIS_NAMES, (path, spec)
  if overrides:
    assert tuple(specs["decoder/logits_dense/kernel"]) == ("embed", "vocab")
    assert tuple(specs["decoder/layers_0/mlp/wi_1/kernel"]) == ("embed", "mlp")
  assert tuple(specs["token_embedder/embedding"]) == ("vocab", "embed")
  assert tuple(specs["encoder/layers_0/attention/out/kernel"]) == ("heads", "kv", "embed")


def test_unknown_or_misshapen_parameter_is_refused():
  with pytest.raises(ValueError, match="encoder/extra/bias"):
    t5x_adapter.logical_axes({"encoder": {"extra": {"bias": np.zeros(3)}}})
  with pytest.raises(ValueError, match="decoder/layers_0/mlp/wo/kernel"):
    t5x_adapter.logical_axes({"decoder": {"layers_0": {"mlp": {"wo": {"kernel": np.zeros(3)}}}}})


def test_params_axes_only_at_initialisation_and_params_unchanged():
  config = small_config()
  module, variables = init_variables(config)
  plain = network.Transformer(config).init(jax.random.PRNGKey(0), jnp.ones((2, 9), jnp.int32),
                                           jnp.ones((2, TARGET_LENGTH), jnp.int32),
                                           jnp.ones((2, TARGET_LENGTH), jnp.int32), enable_dropout=False)
  assert jax.tree_util.tree_structure(plain["params"]) == jax.tree_util.tree_structure(variables["params"])
  rng = np.random.default_rng(0)
  enc, dec = random_inputs(rng, 2), random_inputs(rng, 2, TARGET_LENGTH)
  logits, state = module.apply({"params": variables["params"]}, enc, dec, dec, encoder_segment_ids=None,
                               decoder_segment_ids=None, encoder_positions=None, decoder_positions=None,
                               enable_dropout=False, mutable=True)
  assert "params_axes" not in state
  expected = network.Transformer(config).apply({"params": variables["params"]}, enc, dec, dec,
                                               enable_dropout=False)
  np.testing.assert_array_equal(np.asarray(logits), np.asarray(expected))


@pytest.mark.parametrize("field", ["encoder_segment_ids", "decoder_segment_ids", "encoder_positions",
                                   "decoder_positions"])
def test_packed_batch_is_refused(field):
  module, variables = init_variables(small_config())
  tokens = jnp.ones((2, 9), jnp.int32)
  targets = jnp.ones((2, TARGET_LENGTH), jnp.int32)
  with pytest.raises(ValueError, match=f"{field}.*pack = False"):
    module.apply({"params": variables["params"]}, tokens, targets, targets,
                 **{field: jnp.ones_like(tokens)}, enable_dropout=False)


# ------------------------------------------------------------------------- decode_fn


def t5x_protocol_decode(module, params, encoder_input_tokens, decode_fn, num_decodes):
  """Calls `decode_fn` the way t5x's EncoderDecoderModel.predict_batch_with_aux does (no prompt).

  The cache comes from a `decode=True` module call over dummy full-length targets, and tokens_to_logits
  runs `module.decode` one token at a time against encodings repeated once per beam.
  """
  batch = encoder_input_tokens.shape[0]
  dummy_targets = jnp.ones((batch, TARGET_LENGTH), jnp.int32)
  encoded = module.apply({"params": params}, encoder_input_tokens, enable_dropout=False, method=module.encode)
  _, initial = module.apply({"params": params}, encoder_input_tokens=jnp.ones_like(encoder_input_tokens),
                            decoder_input_tokens=dummy_targets, decoder_target_tokens=dummy_targets,
                            mutable=["cache"], decode=True, enable_dropout=False)
  expanded_encoded = jnp.repeat(encoded, num_decodes, axis=0)
  expanded_inputs = jnp.repeat(encoder_input_tokens, num_decodes, axis=0)

  def tokens_to_logits(state):
    logits, new = module.apply({"params": params, "cache": state.cache}, expanded_encoded, expanded_inputs,
                               state.cur_token, state.cur_token, enable_dropout=False, decode=True,
                               max_decode_length=TARGET_LENGTH, mutable=["cache"], method=module.decode)
    return logits[:, 0], new["cache"]

  return decode_fn(inputs=jnp.zeros((batch, TARGET_LENGTH), jnp.int32), cache=initial["cache"],
                   tokens_to_logits=tokens_to_logits, eos_id=vocab_lib.EOS_ID, num_decodes=num_decodes,
                   decode_rng=jax.random.PRNGKey(1), cache_offset=0)


@pytest.mark.parametrize("num_items,num_decodes", [(40, 6), (3, 5)])
def test_decode_fn_returns_t5x_layout_of_the_project_beam_search(num_items, num_decodes):
  rng = np.random.default_rng(num_items)
  config = small_config()
  module, variables = init_variables(config)
  params = variables["params"]
  trie = random_trie(rng, num_items)
  inputs = random_inputs(rng, 3)
  decodes, scores = jax.jit(lambda p, x: t5x_protocol_decode(
      module, p, x, t5x_adapter.make_decode_fn(trie), num_decodes))(params, inputs)
  assert decodes.shape == (3, num_decodes, TARGET_LENGTH) and scores.shape == (3, num_decodes)

  project = models.EncoderDecoderModel(network.Transformer(config))
  tokens, aux = project.predict_batch_with_aux(params, {"encoder_input_tokens": inputs},
                                               decoder_params={"trie": trie.to_device(), "constrain": True},
                                               num_decodes=num_decodes, return_all_decodes=True)
  # t5x orders decodes by ascending score (best last); the project best first.
  decodes, scores = np.asarray(decodes)[:, ::-1], np.asarray(scores)[:, ::-1]
  np.testing.assert_array_equal(decodes[..., :LAYOUT.num_levels], np.asarray(tokens))
  np.testing.assert_allclose(scores, np.asarray(aux["scores"]), rtol=1e-5, atol=1e-5)
  live = np.isfinite(scores)
  np.testing.assert_array_equal(decodes[..., LAYOUT.num_levels], np.where(live, vocab_lib.EOS_ID, 0))
  assert live.sum(axis=1).tolist() == [min(num_items, num_decodes)] * 3
  assert not decodes[~live].any()  # dead beams are all padding
  items = trie.lookup(LAYOUT.tokens_to_codes(decodes[..., :LAYOUT.num_levels]))
  assert (items[live] >= 0).all()


def test_decode_fn_refuses_scanned_layers_and_short_targets():
  rng = np.random.default_rng(0)
  decode_fn = t5x_adapter.make_decode_fn(random_trie(rng, 5))
  common = dict(cache={}, tokens_to_logits=None, eos_id=1, num_decodes=2)
  with pytest.raises(ValueError, match="cache_offset"):
    decode_fn(inputs=jnp.zeros((1, TARGET_LENGTH), jnp.int32), cache_offset=1, **common)
  with pytest.raises(ValueError, match="TASK_FEATURE_LENGTHS"):
    decode_fn(inputs=jnp.zeros((1, LAYOUT.num_levels), jnp.int32), **common)
  with pytest.raises(ValueError, match="SemanticIdTrie"):
    t5x_adapter.make_decode_fn(np.zeros((5, 4), np.int32))


# ------------------------------------------------------------------------- task metrics for t5x's evaluator


def test_retrieval_metrics_read_t5x_order_and_skip_dead_beams():
  from tasks import tiger_tasks
  target = "<c0_1> <c1_2> <c2_3> <c3_0>"
  other = ["<c0_9> <c1_9> <c2_9> <c3_%d>" % i for i in range(12)]
  # Ascending score: the target is the best (last) decode for user 0, 7th best for user 1 (after a dead beam
  # and a repeat, which do not count), absent for user 2.
  predictions = [other[:5] + [target],
                 [""] + [target] + [other[0]] * 2 + other[:5],
                 other[:10]]
  got = tiger_tasks.retrieval_metrics([target] * 3, predictions)
  assert got["recall@5"] == pytest.approx(1 / 3)
  assert got["recall@10"] == pytest.approx(2 / 3)
  assert got["ndcg@10"] == pytest.approx((1 + 1 / np.log2(5 + 2)) / 3)
  with pytest.raises(ValueError, match="return_all_decodes"):
    tiger_tasks.retrieval_metrics([target], [target])


def test_postprocessor_strips_eos_and_padding():
  from tasks import tiger_tasks
  assert tiger_tasks.semantic_id_postprocessor(b"<c0_1> <c1_2> <c2_3> <c3_0> </s>") == "<c0_1> <c1_2> <c2_3> <c3_0>"
  assert tiger_tasks.semantic_id_postprocessor(["<pad> <pad> <pad> <pad> <pad>", "<c0_4> </s> <c1_1>"]) == [
      "", "<c0_4>"]


def test_semantic_id_trie_holds_the_task_catalogue(tmp_path):
  from conftest import write_category_walk_dataset
  from tasks import tiger_tasks
  data_dir, asins = write_category_walk_dataset(tmp_path / "walk", np.random.default_rng(0), num_items=30,
                                                num_users=40, length_cycle=3, user_digits=2)
  tiger_tasks.register_tiger_task("tiger_t5x_walk", data_dir=data_dir, semantic_ids_path="random")
  trie = tiger_tasks.semantic_id_trie("tiger_t5x_walk")
  dataset = tiger_tasks._load(data_dir)
  tokens = tiger_tasks.item_tokens(dataset, tiger_tasks.resolve_semantic_ids(dataset, "random"))
  assert trie.num_items == len(asins)
  np.testing.assert_array_equal(trie.lookup(LAYOUT.tokens_to_codes(tokens)), np.arange(len(asins)))
  with pytest.raises(ValueError, match="not a task registered"):
    tiger_tasks.semantic_id_trie("tiger_nowhere")


# ------------------------------------------------------------------------- gin/t5x against the project

T5X_GIN = os.path.join(REPO, "gin", "t5x")
EXPERIMENTS = ["beauty.gin", "beauty_quick.gin", "sports.gin", "toys.gin"]
PROJECT_ROOTS = ("tiger_jax", "tasks")
# Modules the files may import that only exist with t5x installed (checked by the needs_t5x runs).
T5X_SIDE = ("t5x", "seqio", "__main__", "__gin__")


class _Ref:
  def __init__(self, name):
    self.name = name


class _Macro:
  def __init__(self, name):
    self.name = name


def _statements(path, seen=None):
  """Statements of a gin/t5x file and of the project files it includes (t5x's own run files are listed)."""
  from gin import config_parser

  class Delegate(config_parser.ParserDelegate):
    def configurable_reference(self, scoped_name, evaluate):
      return _Ref(scoped_name)

    def macro(self, name):
      return _Macro(name)

  seen = [] if seen is None else seen
  with open(path) as f:
    for statement in config_parser.ConfigParser(f, Delegate()):
      if isinstance(statement, config_parser.IncludeStatement):
        if statement.filename.startswith("t5x/"):
          seen.append(("t5x_include", statement.filename, path))
        else:
          _statements(os.path.join(REPO, statement.filename), seen)
      else:
        seen.append((type(statement).__name__, statement, path))
  return seen


def _values(value):
  if isinstance(value, (list, tuple)):
    for v in value:
      yield from _values(v)
  elif isinstance(value, dict):
    for v in value.values():
      yield from _values(v)
  else:
    yield value


def _resolve(name, aliases, where):
  """A project configurable named `[scope/]alias.attr` in a gin file, or None for t5x's side."""
  name = name.split("/")[-1]
  alias, _, attr = name.partition(".")
  module_name = aliases.get(alias)
  assert module_name is not None, f"{where}: {name!r} uses an alias no import defines"
  if not module_name.startswith(PROJECT_ROOTS):
    return None
  target = importlib.import_module(module_name)
  for part in attr.split("."):
    assert hasattr(target, part), f"{where}: {module_name} has no {attr!r}"
    target = getattr(target, part)
  return target


@pytest.mark.parametrize("name", EXPERIMENTS)
def test_t5x_experiment_files_parse_against_the_project(name):
  import seqio
  from tasks import tiger_tasks
  statements = _statements(os.path.join(T5X_GIN, name))
  includes = {s for kind, s, _ in statements if kind == "t5x_include"}
  assert includes == {"t5x/configs/runs/pretrain.gin"}
  aliases, macros = {}, {}
  for kind, statement, path in statements:
    where = f"{os.path.relpath(path, REPO)}:{getattr(statement, 'location', None) and statement.location.line_num}"
    if kind == "ImportStatement":
      module = statement.module
      if module.startswith(PROJECT_ROOTS):
        importlib.import_module(module)
      else:
        assert module.startswith(T5X_SIDE), f"{where}: unexpected import {module}"
      aliases[statement.bound_name()] = module
    elif kind == "BindingStatement":
      if statement.arg_name == "":  # a macro
        macros[statement.selector] = statement.value
      else:
        target = _resolve(statement.selector, aliases, where)
        if target is not None:
          params = inspect.signature(target).parameters
          assert statement.arg_name in params, f"{where}: {statement.selector} takes no {statement.arg_name!r}"
      for value in _values(statement.value):
        if isinstance(value, _Ref):
          _resolve(value.name, aliases, where)
  # What the project's side reads from the macros.
  assert macros["MIXTURE_OR_TASK_NAME"] in seqio.TaskRegistry.names()
  assert macros["TASK_FEATURE_LENGTHS"] == tiger_tasks.TASK_FEATURE_LENGTHS
  assert macros["USE_CACHED_TASKS"] is False  # the project's task cache is .npz, not a seqio cache
  assert isinstance(macros["DROPOUT_RATE"], float) and isinstance(macros["TRAIN_STEPS"], int)
  config_bindings = {s.arg_name: s.value for kind, s, _ in statements
                     if kind == "BindingStatement" and s.selector == "network.T5Config"}
  config_bindings = {k: macros[v.name] if isinstance(v, _Macro) else v for k, v in config_bindings.items()}
  config = network.T5Config(**config_bindings)
  assert config.vocab_size == LAYOUT.vocab_size and config.dropout_rate == macros["DROPOUT_RATE"]
  packs = {s.scope: s.value for kind, s, _ in statements
           if kind == "BindingStatement" and s.arg_name == "pack"}
  assert packs == {"train": False, "train_eval": False, "infer_eval": False}


@pytest.mark.parametrize("name,t5x_run_file", [("eval.gin", "t5x/configs/runs/eval.gin"),
                                                ("infer.gin", "t5x/configs/runs/infer.gin")])
def test_t5x_eval_and_infer_run_files_layer_over_t5x(name, t5x_run_file):
  statements = _statements(os.path.join(T5X_GIN, "models", "tiger_t5.gin")) + _statements(
      os.path.join(T5X_GIN, "runs", name))
  assert {s for kind, s, _ in statements if kind == "t5x_include"} == {t5x_run_file}
  macros = {s.selector: s.value for kind, s, _ in statements if kind == "BindingStatement" and not s.arg_name}
  assert macros["DROPOUT_RATE"] == 0.0
  assert macros["TASK_FEATURE_LENGTHS"] == {"inputs": 81, "targets": TARGET_LENGTH}


# ------------------------------------------------------------------------- with t5x installed


def _t5x_models(config, trie, num_decodes):
  from t5x import adafactor
  from t5x import models as t5x_models
  t5x_model = t5x_models.EncoderDecoderModel(
      module=t5x_adapter.T5xTransformer(config), input_vocabulary=vocab_lib.seqio_vocabulary(),
      output_vocabulary=vocab_lib.seqio_vocabulary(),
      optimizer_def=adafactor.Adafactor(decay_rate=0.8, step_offset=0,
                                        logical_factor_rules=adafactor.standard_logical_factor_rules()),
      decode_fn=t5x_adapter.make_decode_fn(trie), loss_normalizing_factor="NUM_REAL_TARGET_TOKENS",
      default_decoder_params=t5x_models.DecoderParams(num_decodes=num_decodes, return_all_decodes=True))
  return t5x_model, models.EncoderDecoderModel(network.Transformer(config))


def _batch(rng, batch=4):
  inputs = random_inputs(rng, batch)
  targets = np.array(random_inputs(rng, batch, TARGET_LENGTH))
  targets[:, -1] = vocab_lib.EOS_ID
  targets[1, 2:] = 0
  return {"encoder_input_tokens": inputs,
          "decoder_input_tokens": jnp.asarray(np.pad(targets[:, :-1], ((0, 0), (1, 0)))),
          "decoder_target_tokens": jnp.asarray(targets),
          "decoder_loss_weights": jnp.asarray((targets > 0).astype(np.int32))}


@needs_t5x
def test_t5x_train_state_and_partitioner_accept_the_axes():
  from t5x import partitioning
  from t5x import train_state as train_state_lib
  rng = np.random.default_rng(0)
  t5x_model, _ = _t5x_models(small_config(), random_trie(rng, 10), 4)
  shapes = {"encoder_input_tokens": (2, 9), "decoder_input_tokens": (2, TARGET_LENGTH)}
  variables = t5x_model.get_initial_variables(jax.random.PRNGKey(0), shapes)
  state = train_state_lib.FlaxOptimTrainState.create(t5x_model.optimizer_def, variables)
  axes = partitioning.PjitPartitioner(num_partitions=1).get_mesh_axes(state)
  assert jax.tree_util.tree_structure(axes.params) == jax.tree_util.tree_structure(state.params)


@needs_t5x
def test_t5x_loss_equals_the_project_loss():
  rng = np.random.default_rng(1)
  config = small_config(dropout_rate=0.1)
  t5x_model, project = _t5x_models(config, random_trie(rng, 10), 4)
  batch = _batch(rng)
  shapes = {k: v.shape for k, v in batch.items()}
  params = t5x_model.get_initial_variables(jax.random.PRNGKey(0), shapes)["params"]
  for dropout_rng in (None, jax.random.PRNGKey(7)):
    t5x_loss, _ = t5x_model.loss_fn(params, batch, dropout_rng)
    loss, _ = project.loss_fn(params, batch, dropout_rng)
    np.testing.assert_allclose(float(t5x_loss), float(loss), rtol=1e-6)


@needs_t5x
def test_t5x_predictions_equal_the_project_beam_search():
  rng = np.random.default_rng(2)
  config = small_config()
  trie = random_trie(rng, 50)
  t5x_model, project = _t5x_models(config, trie, 8)
  batch = _batch(rng)
  params = t5x_model.get_initial_variables(jax.random.PRNGKey(3), {k: v.shape for k, v in batch.items()})["params"]
  decodes, aux = jax.jit(t5x_model.predict_batch_with_aux)(params, batch)
  tokens, project_aux = project.predict_batch_with_aux(
      params, batch, decoder_params={"trie": trie.to_device(), "constrain": True}, num_decodes=8,
      return_all_decodes=True)
  decodes = np.asarray(decodes)[:, ::-1]
  np.testing.assert_array_equal(decodes[..., :LAYOUT.num_levels], np.asarray(tokens))
  assert (decodes[..., LAYOUT.num_levels] == vocab_lib.EOS_ID).all()
  np.testing.assert_allclose(np.asarray(aux["scores"])[:, ::-1], np.asarray(project_aux["scores"]), rtol=1e-5,
                             atol=1e-5)


def _run(args, log_path):
  env = dict(os.environ, PYTHONPATH=REPO + os.pathsep + os.environ.get("PYTHONPATH", ""), TF_CPP_MIN_LOG_LEVEL="2")
  with open(log_path, "w") as log:
    result = subprocess.run([sys.executable, "-m"] + args, cwd=REPO, env=env, stdout=log,
                            stderr=subprocess.STDOUT, timeout=1500)
  with open(log_path) as f:
    text = f.read()
  assert result.returncode == 0, text[-4000:]
  return text


@needs_t5x
@pytest.mark.slow
def test_t5x_train_then_infer_on_bundled_beauty(tmp_path):
  from tasks import tiger_tasks
  model_dir, infer_dir = tmp_path / "model", tmp_path / "infer"
  train_log = _run(["t5x.train", "--gin_file=gin/t5x/beauty_quick.gin", f'--gin.MODEL_DIR="{model_dir}"',
                    "--gin.TRAIN_STEPS=20", "--gin.EVAL_PERIOD=20", "--gin.CHECKPOINT_PERIOD=20",
                    "--gin.EVAL_STEPS=2", "--gin.EVAL_EXAMPLES=64", "--alsologtostderr"], tmp_path / "train.log")
  losses = [float(x) for x in re.findall(r"collection=train .*?\bloss=([0-9.]+)", train_log)]
  assert losses and np.isfinite(losses).all()
  for metric in ("recall@5", "ndcg@5", "recall@10", "ndcg@10"):
    assert re.search(rf"tiger_beauty/{re.escape(metric)} at step 20: [0-9.]+", train_log), metric
  assert (model_dir / "checkpoint_20").is_dir()

  _run(["t5x.infer", "--gin_file=gin/t5x/models/tiger_t5.gin", "--gin_file=gin/t5x/runs/infer.gin",
        "--gin.MIXTURE_OR_TASK_NAME='tiger_beauty'", f'--gin.CHECKPOINT_PATH="{model_dir}/checkpoint_20"',
        f'--gin.INFER_OUTPUT_DIR="{infer_dir}"', "--gin.ACTIVATION_DTYPE='float32'",
        "--gin.infer.num_shards=350", "--gin.utils.DatasetConfig.batch_size=64", "--alsologtostderr"],
       tmp_path / "infer.log")
  [output] = [p for p in infer_dir.iterdir() if re.fullmatch(r"tiger_beauty-predict\.jsonl-00000-of-00350", p.name)]
  lines = [json.loads(line) for line in output.read_text().splitlines()]
  assert len(lines) == 64  # shard 0 of 350 of the 22,363 test users
  trie = tiger_tasks.semantic_id_trie("tiger_beauty")
  for line in lines:
    assert {"user_index", "target_item"} <= set(line["inputs"])
    predictions = line["prediction"]
    assert len(predictions) == 20 and len(set(predictions)) == 20
    ids = [vocab_lib.encode_names(LAYOUT, p) for p in predictions]
    assert all(len(i) == TARGET_LENGTH and i[-1] == vocab_lib.EOS_ID for i in ids)
    items = trie.lookup(LAYOUT.tokens_to_codes(np.array([i[:-1] for i in ids])))
    assert (items >= 0).all()
