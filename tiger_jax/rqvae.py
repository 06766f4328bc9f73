"""RQ-VAE (TIGER, Rajput et al. 2023, Sec. 3.1): item content embeddings -> 3 codes per item.

Model: MLP encoder d -> 512 -> 256 -> 128 -> 32 (ReLU), residual quantisation with one
codebook of 256 x 32 per level (3 levels), MLP decoder mirroring the encoder. Loss per item:

  ||x - x_hat||^2 + sum_l ( ||sg[r_l] - e_l||^2 + beta * ||r_l - sg[e_l]||^2 ),   beta = 0.25

with r_0 = encoder(x), e_l = nearest codeword of level l to r_l, r_{l+1} = r_l - e_l, and the
decoder fed z + sg(sum_l e_l - z) (straight-through) so reconstruction gradients reach the encoder.
Codebooks start as k-means centroids of the first batch's residuals, level by level. Adagrad,
learning rate 0.4, batch 1024, averaged over the batch.

Two choices the paper leaves open, both measured on Beauty (experiments/results/rqvae_*):
* Adagrad's initial accumulator is 10 (optax's 0.1 diverges in five steps at lr 0.4 with the
  squared-norm loss; a per-dimension mean loss is stable but the model then learns nothing but
  the mean embedding in hundreds of epochs; PyTorch's 0 collapses the codebooks at once).
* Dead codes: the encoder's output drifts away from the k-means codewords early on and up to
  70% of level-1 codewords stop being chosen (never to recover, since only chosen codewords get
  gradients). Every `dead_code_reset_every` epochs, codewords that no catalogue item selects are
  replaced by randomly chosen current residuals of their level (`Trainer._reset_dead_codes`).

Speed: the whole schedule runs inside jit. The embeddings live on the device; each dispatch
runs up to `epochs_per_dispatch` epochs with `lax.scan` (shuffle per epoch inside, fixed-shape
batches with a mask for the last partial batch), so the paper's 20k epochs are a few dozen
dispatches.

The Semantic-ID stage (`python -m tiger_jax.semantic_ids`) trains this model and turns its codes into
IDs; this module is the model and its trainer only. It needs jax, flax, optax, numpy and gin-config.
"""
from __future__ import annotations

import dataclasses
import importlib.util  # noqa: F401  (gin-config 0.5.0 needs it imported on Python 3.11)
import time
from typing import Any, Callable, Optional, Sequence

import flax.linen as nn
import gin
import jax
import jax.numpy as jnp
import numpy as np
import optax

from tiger_jax import compilation
from tiger_jax.embed import check_embeddings

Array = jax.Array
PyTree = Any


# ----------------------------------------------------------------------------- configuration
@gin.configurable
@dataclasses.dataclass(frozen=True)
class RQVAEConfig:
  """Architecture and training schedule; the paper's values are the defaults except epochs."""
  hidden_dims: tuple = (512, 256, 128)
  latent_dim: int = 32
  num_levels: int = 3
  codebook_size: int = 256
  beta: float = 0.25
  learning_rate: float = 0.4
  batch_size: int = 1024
  num_epochs: int = 20000
  seed: int = 0
  kmeans_iters: int = 50
  epochs_per_dispatch: int = 500
  # Dead codes: every this many epochs (0 = never), codewords no item selects are re-seeded
  # from current residuals of their level; only up to this fraction of the schedule.
  dead_code_reset_every: int = 100
  dead_code_reset_until: float = 1.0
  # "sum": squared norms as written in the paper; "mean": divided by the vector dimension.
  loss_reduction: str = "sum"
  # Adagrad's starting accumulator. optax/TF's 0.1 diverges within 5 steps at lr 0.4 on the
  # summed loss, PyTorch's 0 collapses the codebooks; 10 is stable (experiments/results/rqvae_*).
  adagrad_initial_accumulator: float = 10.0
  adagrad_eps: float = 1e-7
  # Dtype of the encoder's and decoder's matrix products ("float32" or "bfloat16"); parameters,
  # codebooks, distances and losses stay float32.
  compute_dtype: str = "float32"

  def __post_init__(self):
    object.__setattr__(self, "hidden_dims", tuple(int(h) for h in self.hidden_dims))
    for field, allowed in _CHOICES.items():  # when the config is made (e.g. from gin), not at training
      if getattr(self, field) not in allowed:
        raise ValueError(f"RQVAEConfig.{field} must be one of {allowed}, got {getattr(self, field)!r}")

  def to_dict(self) -> dict:
    """The fields as JSON; compute_dtype only when not float32, so Semantic IDs made before the
    field existed keep their input hash and are not trained again."""
    d = dataclasses.asdict(self)
    d["hidden_dims"] = list(d["hidden_dims"])
    if d["compute_dtype"] == "float32":
      del d["compute_dtype"]
    return d


_CHOICES = {"compute_dtype": ("float32", "bfloat16"), "loss_reduction": ("sum", "mean")}


# ----------------------------------------------------------------------------- model
class MLP(nn.Module):
  """Dense layers with ReLU between them (none after the last: latents and outputs are linear)."""
  features: Sequence[int]
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x: Array) -> Array:
    for i, f in enumerate(self.features):
      x = nn.Dense(f, dtype=self.dtype, name=f"dense_{i}")(x)
      if i < len(self.features) - 1:
        x = nn.relu(x)
    return x


def pairwise_sq_dists(r: Array, codebook: Array) -> Array:
  """||r_i - c_k||^2 for r [B, D], codebook [K, D] -> [B, K], at full fp32 precision.

  HIGHEST precision keeps GPU TF32 matmuls from flipping nearest-codeword choices.
  """
  dots = jnp.matmul(r, codebook.T, precision=jax.lax.Precision.HIGHEST)
  return (jnp.sum(r * r, -1, keepdims=True) - 2.0 * dots + jnp.sum(codebook * codebook, -1)[None])


def residual_quantize(z: Array, codebooks: Array) -> tuple[Array, Array, Array]:
  """Greedy residual quantisation of z [B, D] with codebooks [L, K, D].

  Returns codes [B, L] (int32), codewords [B, L, D] (e_l) and residuals [B, L, D] (r_l, the
  input of level l; r_0 = z). Gradients flow through e_l into the codebooks and through r_l
  into z; the caller places the stop-gradients the loss needs.
  """
  codes, codewords, residuals = [], [], []
  r = z
  for level in range(codebooks.shape[0]):
    c = jnp.argmin(pairwise_sq_dists(r, codebooks[level]), axis=-1).astype(jnp.int32)
    e = codebooks[level][c]
    codes.append(c)
    codewords.append(e)
    residuals.append(r)
    r = r - e
  return jnp.stack(codes, 1), jnp.stack(codewords, 1), jnp.stack(residuals, 1)


class RQVAE(nn.Module):
  """Encoder, residual quantiser and decoder; `__call__` returns everything the loss needs."""
  input_dim: int
  hidden_dims: tuple = (512, 256, 128)
  latent_dim: int = 32
  num_levels: int = 3
  codebook_size: int = 256
  compute_dtype: Any = jnp.float32

  def setup(self):
    self.encoder = MLP(tuple(self.hidden_dims) + (self.latent_dim,), dtype=self.compute_dtype)
    self.decoder = MLP(tuple(reversed(self.hidden_dims)) + (self.input_dim,), dtype=self.compute_dtype)
    # Overwritten by k-means before training; the normal init only fixes shape and dtype.
    self.codebooks = self.param("codebooks", nn.initializers.normal(1.0),
                                (self.num_levels, self.codebook_size, self.latent_dim))

  def encode(self, x: Array) -> Array:
    return self.encoder(x).astype(jnp.float32)

  def decode(self, z: Array) -> Array:
    return self.decoder(z).astype(jnp.float32)

  def quantize(self, z: Array):
    return residual_quantize(z, self.codebooks)

  def __call__(self, x: Array) -> dict:
    z = self.encode(x)
    codes, codewords, residuals = self.quantize(z)
    z_q = jnp.sum(codewords, axis=1)
    z_st = z + jax.lax.stop_gradient(z_q - z)  # Straight-through estimator.
    return {"z": z, "z_q": z_q, "codes": codes, "codewords": codewords,
            "residuals": residuals, "x_hat": self.decode(z_st)}


def make_model(input_dim: int, cfg: RQVAEConfig) -> RQVAE:
  return RQVAE(input_dim=input_dim, hidden_dims=cfg.hidden_dims, latent_dim=cfg.latent_dim,
               num_levels=cfg.num_levels, codebook_size=cfg.codebook_size,
               compute_dtype=jnp.dtype(cfg.compute_dtype))


def per_item_losses(out: dict, x: Array, beta: float, reduction: str = "sum") -> dict:
  """Per-item reconstruction and RQ losses [B]: squared norms, or per-dimension means."""
  sg = jax.lax.stop_gradient
  reduce = {"sum": jnp.sum, "mean": jnp.mean}[reduction]
  recon = reduce((x - out["x_hat"]) ** 2, -1)
  r, e = out["residuals"], out["codewords"]
  codebook_term = jnp.sum(reduce((sg(r) - e) ** 2, -1), -1)  # Summed over levels.
  commit_term = jnp.sum(reduce((r - sg(e)) ** 2, -1), -1)
  rq = codebook_term + beta * commit_term
  return {"recon": recon, "rq": rq, "loss": recon + rq}


# ----------------------------------------------------------------------------- k-means
def kmeans(points: Array, k: int, rng: Array, num_iters: int) -> Array:
  """k-means++ seeding then `num_iters` Lloyd steps; returns centroids [k, D].

  An empty cluster keeps its previous centroid (k-means++ seeds are data points, so this is rare).
  """
  n = points.shape[0]
  seed_rng, rng = jax.random.split(rng)
  first = jax.random.randint(seed_rng, (), 0, n)
  cents = jnp.zeros((k, points.shape[1]), points.dtype).at[0].set(points[first])
  d2 = jnp.sum((points - points[first]) ** 2, -1)

  def seed_step(i, carry):
    cents, d2, rng = carry
    rng, sub = jax.random.split(rng)
    total = jnp.sum(d2)
    p = jnp.where(total > 0, d2 / jnp.where(total > 0, total, 1.0), 1.0 / n)
    j = jax.random.choice(sub, n, p=p)
    cents = cents.at[i].set(points[j])
    d2 = jnp.minimum(d2, jnp.sum((points - points[j]) ** 2, -1))
    return cents, d2, rng

  cents, _, _ = jax.lax.fori_loop(1, k, seed_step, (cents, d2, rng))

  def lloyd(_, cents):
    assign = jnp.argmin(pairwise_sq_dists(points, cents), -1)
    sums = jax.ops.segment_sum(points, assign, num_segments=k)
    counts = jax.ops.segment_sum(jnp.ones((n,), points.dtype), assign, num_segments=k)
    return jnp.where(counts[:, None] > 0, sums / jnp.maximum(counts, 1)[:, None], cents)

  return jax.lax.fori_loop(0, num_iters, lloyd, cents)


def kmeans_init_codebooks(z: Array, num_levels: int, k: int, rng: Array,
                          num_iters: int) -> Array:
  """Level l's codebook = k-means of the residuals left after levels < l (paper Sec. 3.1)."""
  books = []
  r = z
  for level in range(num_levels):
    c = kmeans(r, k, jax.random.fold_in(rng, level), num_iters)
    books.append(c)
    r = r - c[jnp.argmin(pairwise_sq_dists(r, c), -1)]
  return jnp.stack(books)


# ----------------------------------------------------------------------------- training
@dataclasses.dataclass
class TrainState:
  params: PyTree
  opt_state: PyTree
  epoch: int = 0


def validate_embeddings(x: np.ndarray, codebook_size: int, name: str = "embeddings") -> np.ndarray:
  """Rejects what would silently train garbage: wrong rank, non-finite rows, too few items."""
  x = check_embeddings(x, name)
  if x.shape[0] < codebook_size:
    raise ValueError(f"{name}: {x.shape[0]} items are fewer than the {codebook_size} codewords "
                     "per level; k-means initialisation needs at least one item per codeword")
  return x


def one_off_jit(fn: Callable, **kwargs) -> Callable:
  """`jax.jit` for programs that run a few times per training (k-means initialisation, evaluation, dead-code
  resets, code assignment): their matrix products are cuBLAS calls. On a GPU, XLA would otherwise time Triton
  candidates for each product while compiling, seconds of compile for microseconds of run time; the epoch
  loop, which runs every training step, keeps the autotuned kernels. Other backends ignore the option."""
  return jax.jit(fn, compiler_options=compilation.ONE_OFF_COMPILER_OPTIONS, **kwargs)


class Trainer:
  """Owns the model, optimiser and the jitted multi-epoch step; used by `train_rqvae`."""

  def __init__(self, input_dim: int, num_items: int, cfg: RQVAEConfig):
    self.cfg = cfg
    self.model = make_model(input_dim, cfg)
    self.tx = optax.adagrad(cfg.learning_rate,
                            initial_accumulator_value=cfg.adagrad_initial_accumulator,
                            eps=cfg.adagrad_eps)
    self.num_items = num_items
    self.batch_size = min(cfg.batch_size, num_items)
    if self.batch_size < cfg.codebook_size:
      raise ValueError(f"RQVAEConfig.batch_size {cfg.batch_size} is smaller than codebook_size "
                       f"{cfg.codebook_size}: k-means on the first batch needs a point per "
                       "codeword")
    self.steps_per_epoch = -(-num_items // self.batch_size)
    donate = () if jax.default_backend() == "cpu" else (0, 1)  # CPU cannot donate; avoid warnings.
    # The compiled loop of `num_epochs` epochs: (params, opt_state, x, rng, num_epochs) -> (params, opt_state,
    # per-epoch metrics); params and opt_state are donated on accelerators.
    self.run_epochs = jax.jit(self._run_epochs, static_argnums=(4,), donate_argnums=donate,
                              compiler_options=compilation.DEVICE_LOOP_COMPILER_OPTIONS)
    self._init = one_off_jit(self._init_impl)
    self._evaluate = one_off_jit(self._evaluate_impl)
    self._reset = one_off_jit(self._reset_dead_codes)

  # -- pieces
  def init(self, x: Array, rng: Array) -> TrainState:
    """Random MLP weights, then k-means codebooks on the first (shuffled) batch."""
    params = self._init(x, rng)
    return TrainState(params=params, opt_state=self.tx.init(params))

  def _init_impl(self, x, rng):
    init_rng, perm_rng, km_rng = jax.random.split(rng, 3)
    params = self.model.init(init_rng, x[:1])
    first = jax.random.permutation(perm_rng, self.num_items)[:self.batch_size]
    z = self.model.apply(params, x[first], method=RQVAE.encode)
    books = kmeans_init_codebooks(z, self.cfg.num_levels, self.cfg.codebook_size, km_rng,
                                  self.cfg.kmeans_iters)
    params = jax.tree_util.tree_map(lambda a: a, params)  # Shallow copy of the nested dicts.
    params["params"]["codebooks"] = books
    return params

  def _loss(self, params, xb, w):
    out = self.model.apply(params, xb)
    losses = per_item_losses(out, xb, self.cfg.beta, self.cfg.loss_reduction)
    denom = jnp.sum(w)
    means = {k: jnp.sum(v * w) / denom for k, v in losses.items()}
    return means["loss"], means

  def _run_epochs(self, params, opt_state, x, rng, num_epochs: int):
    """`num_epochs` epochs: per epoch a fresh permutation, padded to whole batches with a mask."""
    n, b, s = self.num_items, self.batch_size, self.steps_per_epoch
    pad = s * b - n
    mask = jnp.concatenate([jnp.ones((n,), jnp.float32), jnp.zeros((pad,), jnp.float32)])
    grad_fn = jax.value_and_grad(self._loss, has_aux=True)

    def step(carry, batch):
      params, opt_state = carry
      idx, w = batch
      (_, metrics), grads = grad_fn(params, x[idx], w)
      updates, opt_state = self.tx.update(grads, opt_state, params)
      params = optax.apply_updates(params, updates)
      return (params, opt_state), metrics

    def epoch(carry, key):
      perm = jax.random.permutation(key, n)
      idx = jnp.concatenate([perm, perm[:pad]]).reshape(s, b)
      carry, metrics = jax.lax.scan(step, carry, (idx, mask.reshape(s, b)))
      return carry, jax.tree_util.tree_map(jnp.mean, metrics)

    (params, opt_state), history = jax.lax.scan(
        epoch, (params, opt_state), jax.random.split(rng, num_epochs))
    return params, opt_state, history

  def _evaluate_impl(self, params, x):
    out = self.model.apply(params, x)
    losses = per_item_losses(out, x, self.cfg.beta, self.cfg.loss_reduction)
    return out["codes"], {k: jnp.mean(v) for k, v in losses.items()}

  def _reset_dead_codes(self, params, x, rng):
    """Replaces codewords no item selects by random residuals of their level (full catalogue)."""
    z = self.model.apply(params, x, method=RQVAE.encode)
    books = params["params"]["codebooks"]
    k = self.cfg.codebook_size
    r = z
    new_books, num_dead = [], []
    for level in range(self.cfg.num_levels):
      c = jnp.argmin(pairwise_sq_dists(r, books[level]), -1)
      counts = jnp.zeros((k,), jnp.int32).at[c].add(1)
      dead = counts == 0
      pick = jax.random.choice(jax.random.fold_in(rng, level), r.shape[0], (k,), replace=False)
      book = jnp.where(dead[:, None], r[pick], books[level])
      new_books.append(book)
      num_dead.append(jnp.sum(dead))
      # Later levels see residuals under the repaired codebook, as training will.
      r = r - book[jnp.argmin(pairwise_sq_dists(r, book), -1)]
    params = jax.tree_util.tree_map(lambda a: a, params)
    params["params"]["codebooks"] = jnp.stack(new_books)
    return params, jnp.stack(num_dead)

  # -- public
  @property
  def dispatch_epochs(self) -> int:
    """Epochs per compiled dispatch: `epochs_per_dispatch`, cut to the dead-code reset period."""
    if self.cfg.dead_code_reset_every > 0:
      return min(self.cfg.epochs_per_dispatch, self.cfg.dead_code_reset_every)
    return self.cfg.epochs_per_dispatch

  def evaluate(self, params, x) -> tuple[np.ndarray, dict]:
    codes, losses = self._evaluate(params, x)
    return np.asarray(codes), {k: float(v) for k, v in losses.items()}

  def train(self, state: TrainState, x: Array, rng: Array, num_epochs: int,
            log_fn: Optional[Callable[[str], None]] = None) -> tuple[TrainState, dict]:
    cfg = self.cfg
    history: list[np.ndarray] = []
    resets: list[dict] = []
    usage: list[list[float]] = []
    dispatches: list[tuple[int, float]] = []  # (epochs, seconds) per dispatch, host sync included
    reset_until = int(cfg.dead_code_reset_until * num_epochs)
    period = self.dispatch_epochs
    done = 0
    t0 = time.time()
    while done < num_epochs:
      todo = min(period, num_epochs - done)
      if cfg.dead_code_reset_every > 0:  # Stop exactly on reset boundaries.
        todo = min(todo, cfg.dead_code_reset_every - done % cfg.dead_code_reset_every)
      rng, chunk_rng, reset_rng = jax.random.split(rng, 3)
      t_dispatch = time.time()
      state.params, state.opt_state, h = self.run_epochs(state.params, state.opt_state, x, chunk_rng, todo)
      done += todo
      state.epoch += todo
      history.append(np.stack([np.asarray(h["loss"]), np.asarray(h["recon"]),
                               np.asarray(h["rq"])], 1))
      # Usage over the full catalogue after every dispatch (before any reset): shows codes dying.
      codes, _ = self.evaluate(state.params, x)
      usage.append([done] + _usage(codes, cfg.codebook_size))
      if (cfg.dead_code_reset_every > 0 and done % cfg.dead_code_reset_every == 0
          and done <= reset_until and done < num_epochs):
        state.params, dead = self._reset(state.params, x, reset_rng)
        resets.append({"epoch": done, "dead": np.asarray(dead).tolist()})
      jax.block_until_ready(state.params)
      dispatches.append((todo, time.time() - t_dispatch))
      if log_fn is not None:
        last = history[-1][-1]
        log_fn(f"epoch {done}/{num_epochs} loss {last[0]:.6f} recon {last[1]:.6f} "
               f"rq {last[2]:.6f} usage {[round(u, 3) for u in usage[-1][1:]]} "
               f"({time.time() - t0:.1f}s)")
    hist = np.concatenate(history) if history else np.zeros((0, 3))
    return state, {"history": hist, "resets": resets, "usage": usage, "dispatches": dispatches}


def dispatch_timing(dispatches: Sequence[tuple[int, float]], steps_per_epoch: int) -> dict:
  """The first dispatch's seconds (it compiles the epoch loop) apart from the steady ms per step of the rest, so
  a short schedule's rate is not dominated by its compile."""
  if not dispatches:
    return {"first_dispatch_seconds": None, "steady_ms_per_step": None}
  rest = dispatches[1:]
  steps = sum(epochs for epochs, _ in rest) * steps_per_epoch
  return {"first_dispatch_seconds": dispatches[0][1],
          "steady_ms_per_step": 1000 * sum(sec for _, sec in rest) / steps if steps else None}


def _usage(codes: np.ndarray, k: int) -> list[float]:
  return [float(np.unique(codes[:, l]).size / k) for l in range(codes.shape[1])]


def train_rqvae(embeddings: np.ndarray, cfg: Optional[RQVAEConfig] = None,
                log_fn: Optional[Callable[[str], None]] = None) -> dict:
  """Trains on all items and returns params, codes [N, L] and statistics.

  Returned dict: `params`, `codes3` (np.int32 [N, num_levels]), `stats` (losses, usage,
  timings, k-means-init usage, dead-code resets), `history` ([epochs, 3]: loss, recon, rq), `trainer` (its
  compiled programs, for running or profiling more epochs without compiling them again).
  """
  cfg = cfg or RQVAEConfig()
  x_np = validate_embeddings(embeddings, cfg.codebook_size)
  n, d = x_np.shape
  trainer = Trainer(d, n, cfg)
  x = jax.device_put(x_np)
  rng = jax.random.PRNGKey(cfg.seed)
  init_rng, train_rng = jax.random.split(rng)
  t0 = time.time()
  state = trainer.init(x, init_rng)
  init_codes, init_losses = trainer.evaluate(state.params, x)
  t_init = time.time() - t0
  t1 = time.time()
  state, info = trainer.train(state, x, train_rng, cfg.num_epochs, log_fn)
  jax.block_until_ready(state.params)
  t_train = time.time() - t1
  codes, losses = trainer.evaluate(state.params, x)
  stats = {
      "num_items": n, "input_dim": d, "config": cfg.to_dict(),
      "steps_per_epoch": trainer.steps_per_epoch, "batch_size": trainer.batch_size,
      "train_steps": trainer.steps_per_epoch * cfg.num_epochs,
      "init_seconds": t_init, "train_seconds": t_train,
      **dispatch_timing(info["dispatches"], trainer.steps_per_epoch),
      "init_codebook_usage": _usage(init_codes, cfg.codebook_size),
      "init_reconstruction_loss": init_losses["recon"],
      "reconstruction_loss": losses["recon"], "rq_loss": losses["rq"], "loss": losses["loss"],
      "rqvae_codebook_usage": _usage(codes, cfg.codebook_size),
      "dead_code_resets": info["resets"],
      "usage_during_training": info["usage"],
      "backend": jax.default_backend(), "device": str(jax.devices()[0].device_kind),
  }
  return {"params": jax.device_get(state.params), "codes3": codes.astype(np.int32),
          "stats": stats, "history": info["history"], "trainer": trainer}


def assign_codes(params: PyTree, embeddings: np.ndarray, cfg: RQVAEConfig,
                 batch_size: int = 8192) -> np.ndarray:
  """Codes [N, num_levels] of any items under trained params: encoder, then greedy residual quantisation.

  This is how items the RQ-VAE was not fit on (cold start) get their codes.
  """
  x = check_embeddings(embeddings, "assign_codes(embeddings)")
  model = make_model(x.shape[1], cfg)
  encode = one_off_jit(lambda p, xb: model.apply(p, xb)["codes"])
  return np.concatenate([np.asarray(encode(params, x[i:i + batch_size]))
                         for i in range(0, len(x), batch_size)]).astype(np.int32)
