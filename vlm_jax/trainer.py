"""One trainer for every objective, driven by the config: `train_and_evaluate(config, workdir)`.

Re-running on the same workdir resumes from the latest checkpoint in DIR/checkpoints/. The command line
is `python -m vlm_jax.train` (vlm_jax/train.py, flags only).

Compile time: every jitted program the run compiles (a fresh run's initial state "init", "train_step", the
evaluators' and "generate") prints one line "compile: NAME 12.3 s (cache miss)" when it compiles, and
DIR/compile_times.json holds them all with time_to_first_step_s (vlm_jax/compile_log.py); the first
metrics.jsonl line has compile_s/train_step and time_to_first_step_s.
"""

import os
import time

import flax.linen as nn
import jax
import jax.numpy as jnp
import optax

from vlm_jax import (checkpointing, compile_log, evaluation, flops, losses, metrics_writer, models, preemption,
                     pretrained, sharding, train_state)
from vlm_jax import run as run_lib
from vlm_jax.data import pipeline, tokenizer as tokenizer_lib
from vlm_jax.errors import UserError
from vlm_jax.models import layers
from vlm_jax.evaluators import specs


def flop_multipliers(config, params) -> dict:
  """Backward-pass cost of frozen towers for the FLOP count: a frozen ViT at the input runs forward only;
  a frozen decoder still passes gradients back to a trained projector (2x instead of 3x)."""
  if not config.freeze:
    return {}
  mask = train_state.frozen_mask(params, config.freeze)
  all_frozen = lambda key: key in mask and all(jax.tree.leaves(mask[key]))
  multipliers = {}
  if all_frozen("vision"):
    multipliers["vision"] = 1
  if all_frozen("decoder"):
    multipliers["decoder"] = 1 if all_frozen("projector") else 2
  if all_frozen("text"):
    multipliers["text"] = 1
  return multipliers


def make_loss_and_grads(model, config, pad_id: int):
  """(params, batch) -> (grads, metrics): the gradient of the config's objective on one batch.

  With config.grad_accum_steps = k > 1 the batch is split into k micro-batches whose gradients are
  averaged (a scan, so activations of one micro-batch are live at a time). Contrastive losses then see
  only their micro-batch as negatives: a smaller effective contrastive batch, the usual price.
  """
  terms = models.get(config.model.name).LOSS_TERMS

  def loss_fn(params, batch):
    if config.freeze:  # no gradient flows into frozen parameters, so XLA drops their weight gradients
      params = jax.tree.map(lambda p, frozen: jax.lax.stop_gradient(p) if frozen else p,
                            params, train_state.frozen_mask(params, config.freeze))
    outputs, _ = model.apply({"params": params}, batch)
    return losses.compute_loss(config.loss, terms, outputs, batch, pad_id)

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


def _subtree(tree, path: str, where: str):
  for key in filter(None, path.split("/")):
    if not isinstance(tree, dict) or key not in tree:
      raise UserError(f"{where}: no parameter subtree {path!r} (keys there: {sorted(tree)[:8]})")
    tree = tree[key]
  return tree


HF_SOURCE = "hf:"  # an init_from source "hf:DIR": a transformers checkpoint directory, not a vlm_jax workdir


def _loop_layout(tree) -> bool:
  """Whether a params tree holds its blocks as "block_II" (config.model.scan False) rather than stacked."""
  return isinstance(tree, dict) and any(key.startswith("block_") or _loop_layout(value) for key, value in tree.items())


def _read_source(source: str, target_params, image_size) -> tuple:
  """(what to name it in messages, its params) of an init_from source: a workdir's latest checkpoint, or
  "hf:DIR" a CLIP / SigLIP (model or vision tower) or Llama directory read by vlm_jax.pretrained, with the
  blocks in the layout of `target_params` and a vision tower's positions at `image_size`."""
  if source.startswith(HF_SOURCE):
    directory = source[len(HF_SOURCE):]
    architecture, _, params = pretrained.read_params(directory, image_size, scan=not _loop_layout(target_params))
    return f"{architecture} {directory}", params
  step, params = checkpointing.read_params(source)
  return f"{source} step {step}", params


def _layout_difference(current, loaded, path: str = "") -> str:
  """The first parameter path present in one tree and not the other, for a one-line message."""
  if not isinstance(current, dict) or not isinstance(loaded, dict):
    return path or "(root)"
  for key in sorted(set(current) | set(loaded)):
    if key not in loaded:
      return f"{path}{key} (only in this model)"
    if key not in current:
      return f"{path}{key} (only in the source)"
    if jax.tree.structure(current[key]) != jax.tree.structure(loaded[key]):
      return _layout_difference(current[key], loaded[key], f"{path}{key}/")
  return path or "(root)"


def initialize_from(params, shardings, init_from, image_size=None) -> dict:
  """Replaces subtrees of `params` by subtrees of other runs' latest checkpoints or of Hugging Face
  checkpoints ("hf:DIR", see _read_source; image_size: config.data.image_size); shapes must match."""
  params = jax.tree.map(lambda x: x, params)  # a copy of the containers we then edit in place
  for target, workdir, source in init_from:
    *parents, last = [k for k in target.split("/") if k] or [None]
    container = _subtree(params, "/".join(parents), "config.init_from target")
    current = container[last] if last else params
    where, loaded = _read_source(workdir, current, image_size)
    loaded = _subtree(loaded, source, f"config.init_from {where}")
    if layers.in_loop_layout(loaded, current):  # a run written with the blocks as a loop
      loaded = layers.to_scanned_layout(loaded, current)
    if jax.tree.structure(current) != jax.tree.structure(loaded):
      raise UserError(f"config.init_from: {workdir}/{source or '(all)'} has another parameter layout than "
                      f"{target or '(all)'} of this model (first difference: "
                      f"{_layout_difference(current, loaded)})")
    for (path, a), b in zip(jax.tree_util.tree_leaves_with_path(current), jax.tree.leaves(loaded)):
      if a.shape != b.shape:
        raise UserError(f"config.init_from: {target}/{train_state.param_path(path)} has shape {a.shape} here but "
                        f"{b.shape} in {where}")
    sharding_tree = _subtree(shardings, target, "shardings")
    placed = jax.tree.map(lambda b, a, sh: jax.device_put(b.astype(a.dtype), sh), loaded, current, sharding_tree)
    if last:
      container[last] = placed
    else:
      params = placed
    print(f"initialised {target or 'all parameters'} from {where} ({source or 'all'})", flush=True)
  return params


def train_and_evaluate(config, workdir: str) -> dict:
  """Trains for config.total_steps (resuming if DIR holds checkpoints), then scores the test split (unless
  config.eval.at_end is False); returns the scores written to DIR/eval.json ({} without them)."""
  called = time.time()
  prepared = run_lib.prepare_workdir(workdir)
  run_lib.check_same_model(config, prepared)
  is_main = jax.process_index() == 0
  compile_log.LOG.start(os.path.join(prepared, COMPILE_TIMES) if is_main else None, echo=is_main)
  try:
    command_started = compile_log.command_started()
    since = (command_started, "the command started") if command_started else (called, "train_and_evaluate began")
    return _train_and_evaluate(config, workdir, since)
  finally:
    compile_log.LOG.stop()


COMPILE_TIMES = "compile_times.json"


def batch_features(config, model_module) -> tuple:
  """The batch fields the train step gets: the model's features, and where its contrastive loss uses them the hard
  negatives of its texts (config.data.hard_negatives) and the counts of ignore_true_counts."""
  features = tuple(model_module.FEATURES)
  if "contrastive" in model_module.LOSS_TERMS:
    if config.data.get("hard_negatives"):
      features += pipeline.HARD_NEGATIVE_FEATURES
    if config.data.get("ignore_true_counts"):
      features += pipeline.TRUE_COUNT_FEATURES
      if config.data.get("hard_negatives"):
        features += ("text_negative_count",)
  return features


def _train_and_evaluate(config, workdir: str, since: tuple) -> dict:
  """train_and_evaluate; `since` (time.time(), what it is) is where time to first step counts from."""
  run = run_lib.Run(config, workdir, for_training=True)  # the state's shape only: no init computed yet
  workdir, is_main = run.workdir, jax.process_index() == 0
  features = batch_features(config, run.model_module)
  if is_main:  # what inference needs besides the checkpoints: the workdir alone is then enough to predict
    with open(os.path.join(workdir, "config.json"), "w") as f:
      f.write(config.to_json(indent=1))
    tokenizer_lib.save_to_workdir(run.tokenizer, workdir)
  writer = metrics_writer.MetricsWriter(workdir, enabled=is_main)
  start_step = run.restore_latest()
  if start_step:
    print(f"resumed from {run.checkpoints.directory}/{start_step}", flush=True)
    writer.truncate_after(start_step)
  else:  # a fresh start: the initial state computed (a resumed run never compiles nor runs "init")
    compile_log.LOG.call("init", lambda: run.state)
    if config.init_from:
      run.state = run.state.replace(params=initialize_from(run.state.params, run.state_shardings.params,
                                                           config.init_from, config.data.image_size))
  n_params = sum(x.size for x in jax.tree.leaves(run.state.params))
  print(f"model {config.model.name}: {n_params / 1e6:.2f}M parameters; mesh {dict(run.mesh.shape)}; "
        f"{config.total_steps} steps of batch {config.batch_size}", flush=True)

  step_flops = flops.train_flops_per_step(
      run.model_module.forward_flops(config, run.tokenizer.vocab_size, config.batch_size), config.batch_size,
      flop_multipliers(config, run.state.params))
  peak = flops.peak_flops_per_device(jax.devices()[0])
  train_step = compile_log.named(
      "train_step", make_train_step(run.model, config, run.tokenizer.pad_id, run.state_shardings, run.mesh))
  evaluator = evaluation.Evaluator(run.model, config, run.tokenizer)
  eval_specs = specs.eval_specs(config)
  state, step, skipped = run.state, start_step, 0
  window_start, window_steps, train_start, first_metrics = time.time(), 0, time.time(), {}
  stop = preemption.StopRequest()
  with stop, jax.set_mesh(run.mesh), nn.logical_axis_rules(run.rules):
    while step < config.total_steps:
      local_batch = next(run.data_iterator)
      batch = sharding.global_batch({name: local_batch[name] for name in features}, run.mesh)
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
      if step == start_step + 1:  # step 1 includes compilation: time it apart from the steps after it
        # (bool(metrics["finite"]) above already waited for the step to finish)
        window_start, window_steps = time.time(), 0
        first_metrics = {"time_to_first_step_s": window_start - since[0],
                         "compile_s/train_step": compile_log.LOG.compile_s("train_step") or 0.0}
        compile_log.LOG.add(time_to_first_step_s=round(first_metrics["time_to_first_step_s"], 3))
        print(f"time to first step: {first_metrics['time_to_first_step_s']:.1f} s (since {since[1]}; "
              f"train_step compile {first_metrics['compile_s/train_step']:.1f} s of it)", flush=True)
      # The first line comes after the first compiled step, so its ETA is what this machine will take.
      first_line = step == min(start_step + 2, config.total_steps)
      if step % config.log_every_steps == 0 or step == config.total_steps or first_line:
        metrics = jax.device_get(metrics)
        elapsed = time.time() - window_start
        images_per_second = window_steps * config.batch_size / max(elapsed, 1e-9)
        eta = (config.total_steps - step) * elapsed / max(window_steps, 1)
        tflops = window_steps * step_flops / max(elapsed, 1e-9) / jax.device_count() / 1e12
        writer.write(step, {**metrics, **first_metrics, "images_per_second": images_per_second,
                            "tokens_per_second": images_per_second * flops.tokens_per_example(config, features),
                            "tflops_per_device": tflops, "mfu": tflops * 1e12 / peak, "skipped_steps": skipped,
                            "truncated_texts": pipeline.TRUNCATIONS.truncated,
                            "skipped_records": pipeline.SKIPPED_RECORDS.skipped})
        speed = (f"{images_per_second:.0f} img/s | {tflops:.3f} TFLOP/s/device | MFU {tflops * 1e12 / peak:.1%} | "
                 f"ETA {_format_duration(eta)}")
        if first_line:
          speed += " on this machine"
        print(f"step {step}/{config.total_steps} | loss {metrics['loss']:.4f} | {speed}", flush=True)
        window_start, window_steps, first_metrics = time.time(), 0, {}
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
        scores = evaluation.periodic_scores(evaluator, state.params, config, step, eval_specs)
      if scores:
        split = config.eval.periodic_split
        writer.write(step, {f"{split}/{k}": v for k, v in scores.items()})
        print(f"eval on {split} at step {step}:\n" + evaluation.format_metrics(scores), flush=True)
        window_start, window_steps = time.time(), 0
    train_seconds = time.time() - train_start
    run.checkpoints.wait()
    scores = evaluation.evaluate_splits(evaluator, state.params, config) if config.eval.at_end else None
  run.checkpoints.close()
  if is_main and scores is None:
    print(f"trained {step - start_step} steps in {_format_duration(train_seconds)}; no final evaluation "
          "(config.eval.at_end=False)", flush=True)
  elif is_main:
    path = evaluation.write_eval_json(workdir, step, scores)
    writer.write(step, {f"{config.eval.split}/{k}": v for k, v in scores.items()})
    print(f"trained {step - start_step} steps in {_format_duration(train_seconds)}; "
          f"held-out {config.eval.split} scores (written to {path}):\n" + evaluation.format_metrics(scores),
          flush=True)
  writer.close()
  return scores if scores is not None else {}
