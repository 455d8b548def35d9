"""One trainer for every objective, driven by the config.

    python -m vlm_jax.train --config configs/shapes_coca.py --workdir /tmp/coca

Re-running the same command resumes from the latest checkpoint in DIR/checkpoints/.
"""

import json
import os
import re
import time

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
from flax import serialization
from flax.training import train_state
from jax.experimental import multihost_utils

from vlm_jax import checkpointing, flops, losses, metrics_writer, preemption, run_config, sharding
from vlm_jax import evaluate as evaluate_lib
from vlm_jax.data import pipeline, tokenizer as tokenizer_lib
from vlm_jax.errors import UserError
from vlm_jax.models import build_model, layers

TASKS = {"two_tower": "contrastive_caption", "coca": "contrastive_caption", "prefix_lm": "vqa",
         "causal_lm": "contrastive_caption", "vit_classifier": "classification"}


class TrainState(train_state.TrainState):
  pass


def param_path(path) -> str:
  """"vision/encoder/block_00/mlp/fc1/kernel" for a pytree key path (box wrappers skipped)."""
  return "/".join(str(k.key) for k in path if isinstance(k, jax.tree_util.DictKey))


def frozen_mask(params, patterns) -> object:
  """A pytree of bools like `params`: True where a path fully matches one of the regexes in `patterns`."""
  compiled = [re.compile(p) for p in patterns]
  return jax.tree_util.tree_map_with_path(
      lambda path, _: any(c.fullmatch(param_path(path)) for c in compiled), params)


def flop_multipliers(config, params) -> dict:
  """Backward-pass cost of frozen towers for the FLOP count: a frozen ViT at the input runs forward only;
  a frozen decoder still passes gradients back to a trained projector (2x instead of 3x)."""
  if not config.freeze:
    return {}
  mask = frozen_mask(params, config.freeze)
  all_frozen = lambda key: key in mask and all(jax.tree.leaves(mask[key]))
  multipliers = {}
  if all_frozen("vision"):
    multipliers["vision"] = 1
  if all_frozen("decoder"):
    multipliers["decoder"] = 1 if all_frozen("projector") else 2
  if all_frozen("text"):
    multipliers["text"] = 1
  return multipliers


def make_optimizer(config) -> optax.GradientTransformation:
  """AdamW with linear warmup then cosine decay to 0 over total_steps; decay only on matrices.

  Parameters matching config.freeze get `set_to_zero`, which keeps no state: no Adam moments for them.
  """
  o = config.optimizer
  warmup = min(o.warmup_steps, config.total_steps // 2)  # a short run still gets a decay phase
  schedule = optax.warmup_cosine_decay_schedule(
      0.0, o.learning_rate, warmup, config.total_steps, end_value=0.0)
  decay_mask = lambda params: jax.tree.map(lambda p: p.ndim >= 2, params)
  adamw = optax.chain(
      optax.clip_by_global_norm(o.grad_clip_norm),
      optax.adamw(schedule, b1=o.b1, b2=o.b2, weight_decay=o.weight_decay, mask=decay_mask))
  if not config.freeze:
    return adamw
  labels = lambda params: jax.tree.map(lambda f: "frozen" if f else "trained", frozen_mask(params, config.freeze))
  return optax.multi_transform({"trained": adamw, "frozen": optax.set_to_zero()}, labels)


def prepare_workdir(workdir: str) -> str:
  workdir = os.path.abspath(os.path.expanduser(workdir))
  try:
    os.makedirs(workdir, exist_ok=True)
    probe = os.path.join(workdir, ".write_test")
    with open(probe, "w") as f:
      f.write("ok")
    os.remove(probe)
  except OSError as e:
    raise UserError(f"workdir {workdir} cannot be written: {e.strerror or e}") from None
  return workdir


def with_legacy_defaults(saved_model: dict) -> dict:
  """A saved config.model completed with the keys added since: model.scan (absent: the loop layout of
  runs written before it) and the text block fields (absent: the values that reproduce those runs)."""
  model = {"scan": False, **saved_model}
  text = json.loads(run_config.base_config().model.text.to_json())
  model["text"] = {**text, **model.get("text", {})}
  return model


def check_same_model(config, workdir: str) -> None:
  """Refuse to resume a workdir whose saved config describes another model (nothing is touched).

  A run saved with config.model.scan False (or before it existed) resumes with scan True: Run.restore_latest
  converts its checkpoints to the scanned layout. The other way round is refused.
  """
  path = os.path.join(workdir, "config.json")
  if os.path.exists(path) and os.path.isdir(os.path.join(workdir, "checkpoints")):
    with open(path) as f:
      saved = json.load(f)
    if "model" in saved:
      saved["model"] = with_legacy_defaults(saved["model"])
      if not saved["model"]["scan"] and config.model.get("scan", True):
        saved["model"]["scan"] = True
    for section in ("model", "data"):
      current = json.loads(config[section].to_json())
      if saved.get(section) != current:
        changed = sorted(k for k in set(current) | set(saved.get(section, {}))
                         if current.get(k) != saved.get(section, {}).get(k))
        raise UserError(f"workdir {workdir} holds checkpoints of a different {section} config "
                        f"(config.{section}.{changed[0] if changed else '?'} differs); use another --workdir")


def sample_batch(task: str, batch_size: int, image_size: int, max_len: int) -> dict:
  if task == "classification":
    return {"image": np.zeros((batch_size, image_size, image_size, 3), np.float32),
            "label": np.zeros((batch_size,), np.int32)}
  batch = {"image": np.zeros((batch_size, image_size, image_size, 3), np.float32),
           "text": np.zeros((batch_size, max_len), np.int32)}
  batch["text"][:, 0] = 1
  if task == "vqa":
    batch["prefix_len"] = np.ones((batch_size,), np.int32)
  else:
    batch["caption"] = batch["text"].copy()
  return batch


def create_train_state(model, tx, batch: dict, rng, mesh, rules):
  """Initialises the state already sharded: jit of init with out_shardings from its abstract shape."""
  def init(rng):
    params = model.init(rng, batch)["params"]
    return TrainState.create(apply_fn=model.apply, params=params, tx=tx)

  with nn.logical_axis_rules(rules):
    abstract = jax.eval_shape(init, rng)
    shardings = sharding.state_shardings(abstract, mesh, rules)
    sharding.check_divisible(nn.meta.unbox(abstract), shardings)
    state = jax.jit(init, out_shardings=shardings)(rng)
  return nn.meta.unbox(state), shardings


def make_loss_and_grads(model, config, pad_id: int):
  """(params, batch) -> (grads, metrics): the gradient of the config's objective on one batch.

  With config.grad_accum_steps = k > 1 the batch is split into k micro-batches whose gradients are
  averaged (a scan, so activations of one micro-batch are live at a time). Contrastive losses then see
  only their micro-batch as negatives: a smaller effective contrastive batch, the usual price.
  """
  def loss_fn(params, batch):
    if config.freeze:  # no gradient flows into frozen parameters, so XLA drops their weight gradients
      params = jax.tree.map(lambda p, frozen: jax.lax.stop_gradient(p) if frozen else p,
                            params, frozen_mask(params, config.freeze))
    outputs, _ = model.apply({"params": params}, batch)
    return losses.compute_loss(config.loss, outputs, batch, pad_id)

  grad_fn = jax.grad(loss_fn, has_aux=True)
  k = config.grad_accum_steps
  if k == 1:
    return grad_fn

  def accumulated(params, batch):
    micro = jax.tree.map(lambda x: x.reshape(k, x.shape[0] // k, *x.shape[1:]), batch)

    def body(total, micro_batch):
      grads, metrics = grad_fn(params, micro_batch)
      return jax.tree.map(jnp.add, total, (grads, metrics)), None

    zeros = jax.tree.map(jnp.zeros_like, jax.eval_shape(grad_fn, params, jax.tree.map(lambda x: x[0], micro)))
    total, _ = jax.lax.scan(body, zeros, micro)
    return jax.tree.map(lambda x: x / k, total)

  return accumulated


def make_train_step(model, config, pad_id: int, state_shardings, mesh):
  """The jitted step: (state, batch) -> (state, metrics), the state donated and sharded as initialised.

  A non-finite loss or gradient never reaches the parameters: the update is skipped in the graph and
  metrics["finite"] is 0, so the host can stop (config.nonfinite="stop") or count it ("skip").
  """
  loss_and_grads = make_loss_and_grads(model, config, pad_id)

  def train_step(state, batch):
    grads, metrics = loss_and_grads(state.params, batch)
    grad_norm = optax.tree.norm(grads)
    finite = jnp.isfinite(metrics["loss"]) & jnp.isfinite(grad_norm)
    new_state = state.apply_gradients(grads=grads)
    state = jax.tree.map(lambda new, old: jnp.where(finite, new, old), new_state, state)
    return state, {**metrics, "grad_norm": grad_norm, "finite": finite}

  return jax.jit(train_step, in_shardings=(state_shardings, sharding.batch_sharding(mesh)),
                 out_shardings=(state_shardings, sharding.replicated(mesh)), donate_argnums=0)


def _format_duration(seconds: float) -> str:
  seconds = int(max(seconds, 0))
  return f"{seconds // 60}m{seconds % 60:02d}s"


class Run:
  """Everything a config builds: data, tokenizer, model, state, checkpoints. Shared by train and evaluate."""

  def __init__(self, config, workdir: str, *, for_training: bool):
    run_config.validate(config)
    self.config = config
    self.workdir = prepare_workdir(workdir)
    self.mesh = sharding.make_mesh(config.mesh)
    self.rules = sharding.logical_rules(config)
    if config.batch_size % jax.process_count() or (config.batch_size // jax.process_count()) % jax.local_device_count():
      raise UserError(f"config.batch_size={config.batch_size} must be divisible by the {jax.device_count()} devices")
    data_dir = os.path.expanduser(config.data.data_dir)
    if jax.process_index() == 0:  # one writer; the others wait for it
      pipeline.prepare_data(config.data)
    if jax.process_count() > 1:
      multihost_utils.sync_global_devices("vlm_jax: data prepared")
    self.tokenizer = tokenizer_lib.load_tokenizer(config.data.tokenizer, data_dir, config.data.builder_config,
                                                  dataset=config.data.name)
    self.task = TASKS[config.model.name]
    self.model = build_model(config.model, vocab_size=self.tokenizer.vocab_size, max_len=config.data.max_text_len,
                             eos_id=self.tokenizer.eos_id, pad_id=self.tokenizer.pad_id)
    self.data_iterator = None
    if for_training:
      self.data_iterator = pipeline.train_iterator(
          config.data, self.tokenizer, batch_size=config.batch_size, seed=config.seed, task=self.task,
          process_index=jax.process_index(), process_count=jax.process_count())
    self.tx = make_optimizer(config)
    batch = sample_batch(self.task, 2, config.data.image_size, config.data.max_text_len)
    self.state, self.state_shardings = create_train_state(
        self.model, self.tx, batch, jax.random.key(config.seed), self.mesh, self.rules)
    self.checkpoints = checkpointing.Checkpoints(self.workdir, config.keep_checkpoints)

  def restore_latest(self) -> int:
    """Restores the newest readable checkpoint (state and data iterator); returns its step, 0 if none.

    A newest checkpoint that cannot be read (cut short, corrupted) is reported by name and skipped; the
    one before it is restored. Nothing is deleted.
    """
    for step in sorted(self.checkpoints.all_steps(), reverse=True):
      try:
        if layers.in_loop_layout(self.checkpoints.saved_params(step), self.state.params):
          self.state = self._restore_loop_layout(step)
          print(f"converted checkpoint {self.checkpoints.directory}/{step} from the loop layout "
                "(block_NN) to config.model.scan's stacked layout", flush=True)
        else:
          self.state = self.checkpoints.restore(step, self.state, self.data_iterator)
        return int(step)
      except Exception as e:  # orbax/tensorstore raise many kinds for a damaged checkpoint
        print(f"warning: checkpoint {self.checkpoints.directory}/{step} is unreadable "
              f"({type(e).__name__}: {str(e).splitlines()[0][:200]}); trying the previous one", flush=True)
    if self.checkpoints.all_steps():
      raise UserError(f"no readable checkpoint in {self.checkpoints.directory}; move it away to start afresh")
    return 0


  def _restore_loop_layout(self, step: int):
    """Checkpoint `step`, written with the blocks as a loop (scan=False, or before config.model.scan),
    restored into this run's scanned state: each block_NN subtree (params and optimizer moments alike)
    stacked into the layers.Stack layout, then placed on this run's shardings."""
    loop_config = ml_collections.ConfigDict(self.config.model.to_dict())
    loop_config.scan = False
    loop_model = build_model(loop_config, vocab_size=self.tokenizer.vocab_size,
                             max_len=self.config.data.max_text_len, eos_id=self.tokenizer.eos_id,
                             pad_id=self.tokenizer.pad_id)
    batch = sample_batch(self.task, 2, self.config.data.image_size, self.config.data.max_text_len)
    init = lambda rng: TrainState.create(apply_fn=loop_model.apply, params=loop_model.init(rng, batch)["params"],
                                         tx=self.tx)
    replicated = sharding.replicated(self.mesh)
    abstract = jax.tree.map(lambda a: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=replicated),
                            nn.meta.unbox(jax.eval_shape(init, jax.random.key(0))))
    restored = self.checkpoints.restore(step, abstract, self.data_iterator)
    converted = layers.to_scanned_layout(serialization.to_state_dict(restored),
                                         serialization.to_state_dict(self.state))
    state = serialization.from_state_dict(self.state, converted)
    return jax.tree.map(jax.device_put, state, self.state_shardings)


def _subtree(tree, path: str, where: str):
  for key in filter(None, path.split("/")):
    if not isinstance(tree, dict) or key not in tree:
      raise UserError(f"{where}: no parameter subtree {path!r} (keys there: {sorted(tree)[:8]})")
    tree = tree[key]
  return tree


def initialize_from(params, shardings, init_from) -> dict:
  """Replaces subtrees of `params` by subtrees of other runs' latest checkpoints (shapes must match)."""
  params = jax.tree.map(lambda x: x, params)  # a copy of the containers we then edit in place
  for target, workdir, source in init_from:
    step, loaded = checkpointing.read_params(workdir)
    loaded = _subtree(loaded, source, f"config.init_from {workdir} (step {step})")
    *parents, last = [k for k in target.split("/") if k] or [None]
    container = _subtree(params, "/".join(parents), "config.init_from target")
    current = container[last] if last else params
    if layers.in_loop_layout(loaded, current):  # a run written with the blocks as a loop
      loaded = layers.to_scanned_layout(loaded, current)
    if jax.tree.structure(current) != jax.tree.structure(loaded):
      raise UserError(f"config.init_from: {workdir}/{source or '(all)'} has another parameter layout than "
                      f"{target or '(all)'} of this model")
    for (path, a), b in zip(jax.tree_util.tree_leaves_with_path(current), jax.tree.leaves(loaded)):
      if a.shape != b.shape:
        raise UserError(f"config.init_from: {target}/{param_path(path)} has shape {a.shape} here but "
                        f"{b.shape} in {workdir}")
    sharding_tree = _subtree(shardings, target, "shardings")
    placed = jax.tree.map(lambda b, a, sh: jax.device_put(b.astype(a.dtype), sh), loaded, current, sharding_tree)
    if last:
      container[last] = placed
    else:
      params = placed
    print(f"initialised {target or 'all parameters'} from {workdir} step {step} ({source or 'all'})", flush=True)
  return params


def train_and_evaluate(config, workdir: str) -> dict:
  """Trains for config.total_steps (resuming if DIR holds checkpoints), then scores the test split."""
  check_same_model(config, prepare_workdir(workdir))
  run = Run(config, workdir, for_training=True)
  workdir, is_main = run.workdir, jax.process_index() == 0
  if is_main:
    with open(os.path.join(workdir, "config.json"), "w") as f:
      f.write(config.to_json(indent=1))
  writer = metrics_writer.MetricsWriter(workdir, enabled=is_main)
  start_step = run.restore_latest()
  if start_step:
    print(f"resumed from {run.checkpoints.directory}/{start_step}", flush=True)
    writer.truncate_after(start_step)
  elif config.init_from:
    run.state = run.state.replace(params=initialize_from(run.state.params, run.state_shardings.params,
                                                         config.init_from))
  n_params = sum(x.size for x in jax.tree.leaves(run.state.params))
  print(f"model {config.model.name}: {n_params / 1e6:.2f}M parameters; mesh {dict(run.mesh.shape)}; "
        f"{config.total_steps} steps of batch {config.batch_size}", flush=True)

  step_flops = flops.train_flops_per_step(config, run.tokenizer.vocab_size, flop_multipliers(config, run.state.params))
  peak = flops.peak_flops_per_device(jax.devices()[0])
  train_step = make_train_step(run.model, config, run.tokenizer.pad_id, run.state_shardings, run.mesh)
  evaluator = evaluate_lib.Evaluator(run.model, config, run.tokenizer)
  eval_specs = evaluate_lib.eval_specs(config)
  state, step, skipped = run.state, start_step, 0
  window_start, window_steps, train_start = time.time(), 0, time.time()
  stop = preemption.StopRequest()
  with stop, jax.set_mesh(run.mesh), nn.logical_axis_rules(run.rules):
    while step < config.total_steps:
      batch = sharding.global_batch(next(run.data_iterator), run.mesh)
      state, metrics = train_step(state, batch)
      step += 1
      window_steps += 1
      if not bool(metrics["finite"]):
        skipped += 1
        if config.nonfinite == "stop":
          run.checkpoints.close()
          raise UserError(f"non-finite loss or gradient at step {step} (loss {float(metrics['loss'])}); the update "
                          f"was not applied and the last good checkpoint is kept ({run.checkpoints.latest_step()}); "
                          "lower config.optimizer.learning_rate or set config.nonfinite='skip'")
      if step % config.log_every_steps == 0 or step == config.total_steps or step == start_step + 1:
        metrics = jax.device_get(metrics)
        elapsed = time.time() - window_start
        images_per_second = window_steps * config.batch_size / max(elapsed, 1e-9)
        eta = (config.total_steps - step) * elapsed / window_steps
        tflops = window_steps * step_flops / max(elapsed, 1e-9) / jax.device_count() / 1e12
        writer.write(step, {**metrics, "images_per_second": images_per_second,
                            "tokens_per_second": images_per_second * flops.tokens_per_example(config),
                            "tflops_per_device": tflops, "mfu": tflops * 1e12 / peak, "skipped_steps": skipped,
                            "truncated_texts": pipeline.TRUNCATIONS.truncated,
                            "skipped_records": pipeline.BAD_RECORDS.truncated})
        speed = (f"compiled and ran in {elapsed:.1f} s" if step == start_step + 1 else
                 f"{images_per_second:.0f} img/s | {tflops:.3f} TFLOP/s/device | MFU {tflops * 1e12 / peak:.1%} | "
                 f"ETA {_format_duration(eta)}")
        print(f"step {step}/{config.total_steps} | loss {metrics['loss']:.4f} | {speed}", flush=True)
        window_start, window_steps = time.time(), 0
      if stop.agreed():
        run.checkpoints.save(step, state, run.data_iterator)
        run.checkpoints.close()
        print(f"stopped by {stop.signal_name} at step {step}: checkpoint saved in {run.checkpoints.directory}/{step}; "
              "run the same command to resume", flush=True)
        writer.close()
        return None
      if step % config.checkpoint_every_steps == 0 or step == config.total_steps:
        run.checkpoints.save(step, state, run.data_iterator)
      scores = {}
      if step < config.total_steps:
        scores = evaluate_lib.periodic_scores(evaluator, state.params, config, step, eval_specs)
      if scores:
        split = config.eval.periodic_split
        writer.write(step, {f"{split}/{k}": v for k, v in scores.items()})
        print(f"eval on {split} at step {step}:\n" + evaluate_lib.format_metrics(scores), flush=True)
        window_start, window_steps = time.time(), 0
    train_seconds = time.time() - train_start
    run.checkpoints.wait()
    scores = evaluate_lib.evaluate_splits(evaluator, state.params, config)
  run.checkpoints.close()
  if is_main:
    path = evaluate_lib.write_eval_json(workdir, step, scores)
    writer.write(step, {f"{config.eval.split}/{k}": v for k, v in scores.items()})
    print(f"trained {step - start_step} steps in {_format_duration(train_seconds)}; "
          f"held-out {config.eval.split} scores (written to {path}):\n" + evaluate_lib.format_metrics(scores),
          flush=True)
  writer.close()
  return scores


def evaluate_checkpoint(config, workdir: str) -> dict:
  """Restores the latest checkpoint in DIR and scores the test split into DIR/eval.json."""
  workdir = os.path.abspath(os.path.expanduser(workdir))
  if not os.path.isdir(os.path.join(workdir, "checkpoints")):
    raise UserError(f"no checkpoints in {workdir}/checkpoints: train first with python -m vlm_jax.train")
  check_same_model(config, workdir)
  run = Run(config, workdir, for_training=False)
  step = run.restore_latest()
  if not step:
    raise UserError(f"no checkpoint found in {run.checkpoints.directory}")
  evaluator = evaluate_lib.Evaluator(run.model, config, run.tokenizer)
  with jax.set_mesh(run.mesh), nn.logical_axis_rules(run.rules):
    scores = evaluate_lib.evaluate_splits(evaluator, run.state.params, config)
  run.checkpoints.close()
  if jax.process_index() == 0:
    path = evaluate_lib.write_eval_json(run.workdir, step, scores)
    print(f"checkpoint {step}: {config.eval.split} scores (written to {path}):\n"
          + evaluate_lib.format_metrics(scores), flush=True)
  return scores


if __name__ == "__main__":
  from vlm_jax import cli
  cli.main("train")
