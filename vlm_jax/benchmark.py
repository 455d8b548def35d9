"""Times the training step of a config on random inputs and prints one JSON line.

    python -m vlm_jax.benchmark --config configs/bench_small.py [--steps 10] [--warmup 2]
    python -m vlm_jax.benchmark --config configs/bench_ti16.py --config.batch_size=16

The step is `trainer.make_train_step` itself (loss, gradients, global-norm clipping, AdamW, the non-finite
guard), compiled and warmed up before the clock starts; inputs are random images (normal) and random
token ids with an EOS at a random position. No data set and no tokenizer: the vocabulary size comes from
`config.bench_vocab_size` (the bench configs set it) or --vocab_size.

Printed keys: img_per_s (batch / step_s), step_s (median of the timed steps; step_s_min too),
cpu_s_per_step (CPU time of this process per step, all threads: a check on contention),
tflops_per_device and mfu (FLOPs counted by `flops.train_flops_per_step`, divided by the peak),
matmul_peak_tflops (this machine's measured float32 matmul peak on CPU, the table's peak elsewhere),
compile_s (the warm-up steps' wall time), train_step_compile_s and train_step_cache (the step's trace, lowering
and XLA seconds and the persistent cache's part, vlm_jax/compile_log.py), peak_memory_bytes (the devices'
allocator peak, None where the device reports none: CPU), the shape and thread settings used, and host_malloc
("kept": glibc's malloc set to reuse freed memory on the CPU backend, as the trainer's CLI sets it, see
vlm_jax/host_malloc.py; "system": its defaults, e.g. with VLM_JAX_HOST_MALLOC=system).

CPU threading: XLA:CPU runs each op on its own Eigen thread pool as wide as the host's cores. This
module leaves XLA_FLAGS as it finds it (tests set a simulated device count there); --xla_flags adds flags
before jax starts, e.g. --xla_flags=--xla_cpu_multi_thread_eigen=false to measure single-threaded ops.
"""

import os
import sys


def _early_flags(argv) -> None:
  """Applies --xla_flags=... before jax is imported (XLA reads XLA_FLAGS once, at backend start)."""
  for arg in argv:
    if arg.startswith("--xla_flags="):
      extra = arg.split("=", 1)[1]
      os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") + " " + extra).strip()


if __name__ == "__main__":
  _early_flags(sys.argv)

import json  # noqa: E402
import time  # noqa: E402

import flax.linen as nn  # noqa: E402
import jax  # noqa: E402
import numpy as np  # noqa: E402
from absl import app, flags, logging  # noqa: E402
from ml_collections import config_flags  # noqa: E402

from vlm_jax import compile_log, flops, host_malloc, models, run_config, sharding, train_state, trainer  # noqa: E402
from vlm_jax.errors import UserError  # noqa: E402
from vlm_jax.models import towers  # noqa: E402

PAD_ID, BOS_ID, EOS_ID = 0, 1, 2
STEP_PROGRAM = "benchmark_train_step"  # the step's name in compile_log

config_flags.DEFINE_config_file("config", None, "Benchmark config, e.g. configs/bench_small.py.", lock_config=False)
flags.DEFINE_integer("steps", 10, "Timed steps (after the warm-up).")
flags.DEFINE_integer("warmup", 2, "Untimed steps first: the first compiles.")
flags.DEFINE_integer("vocab_size", 0, "Vocabulary size; 0: config.bench_vocab_size.")
flags.DEFINE_string("xla_flags", "", "Extra XLA_FLAGS, applied before jax starts (only when run as a module).")
flags.DEFINE_string("profile_dir", "", "If set, a jax profiler trace of the timed steps is written there.")
FLAGS = flags.FLAGS


def random_batch(features, batch_size: int, image_size: int, max_len: int, vocab_size: int, seed: int = 0) -> dict:
  """The model's batch `features` at random: normal images; token ids BOS, random tokens, EOS at a random
  position, then padding; prompts a quarter of the text long; random labels below 10."""
  rng = np.random.default_rng(seed)
  batch = {"image": rng.normal(size=(batch_size, image_size, image_size, 3)).astype(np.float32)}
  text = rng.integers(EOS_ID + 1, vocab_size, size=(batch_size, max_len), dtype=np.int32)
  text[:, 0] = BOS_ID
  ends = rng.integers(max_len // 2, max_len, size=batch_size)
  for row, end in enumerate(ends):
    text[row, end] = EOS_ID
    text[row, end + 1:] = PAD_ID
  batch.update(text=text, caption=text.copy(), prefix_len=np.full((batch_size,), max_len // 4, np.int32),
               label=rng.integers(0, 10, size=batch_size).astype(np.int32))
  positions = np.arange(max_len)[None, :]
  batch["answer_mask"] = ((positions >= batch["prefix_len"][:, None]) & (text != PAD_ID)).astype(np.int32)
  return {name: batch[name] for name in features}


def prepare_step(config, vocab_size: int = 0) -> dict:
  """What a timed step needs, built as the trainer builds it: {"step_fn" (trainer.make_train_step, jitted and
  named STEP_PROGRAM in compile_log), "state", "host_batch" (random_batch of the config's shape), "mesh",
  "rules", "vocab_size", "model_module"}. benchmarks/profile_ops.py profiles this same step."""
  run_config.validate(config)
  vocab_size = vocab_size or int(config.get("bench_vocab_size", 0) or 0)
  if vocab_size <= EOS_ID + 1:
    raise UserError("the benchmark needs a vocabulary size: set config.bench_vocab_size or --vocab_size")
  mesh = sharding.make_mesh(config.mesh)
  rules = sharding.logical_rules(config)
  model_module = models.get(config.model.name)
  model = models.build_model(config.model, vocab_size=vocab_size, max_len=config.data.max_text_len,
                             eos_id=EOS_ID, pad_id=PAD_ID)
  tx = train_state.make_optimizer(config)
  sample = models.sample_batch(model_module.FEATURES, 2, config.data.image_size, config.data.max_text_len)
  state, shardings = train_state.create_train_state(model, tx, sample, jax.random.key(config.seed), mesh, rules,
                                                    towers.param_dtype_of(config.model))
  compile_log.LOG.programs.pop(STEP_PROGRAM, None)  # this call's compile only, not an earlier call's
  step_fn = compile_log.named(STEP_PROGRAM, trainer.make_train_step(model, config, PAD_ID, shardings, mesh))
  host_batch = random_batch(model_module.FEATURES, config.batch_size, config.data.image_size,
                            config.data.max_text_len, vocab_size)
  return dict(step_fn=step_fn, state=state, host_batch=host_batch, mesh=mesh, rules=rules, vocab_size=vocab_size,
              model_module=model_module)


def timed_steps(step_fn, state, batch, steps: int):
  """`steps` calls of step_fn(state, batch) -> (state, metrics) one after the other, each waited for: (the last
  state, its metrics, the wall seconds of each step, the process's CPU seconds per step, all threads)."""
  times, cpu_start = [], time.process_time()
  for _ in range(steps):
    start = time.perf_counter()
    state, metrics = step_fn(state, batch)
    jax.block_until_ready((state, metrics))
    times.append(time.perf_counter() - start)
  return state, metrics, times, (time.process_time() - cpu_start) / steps


def run_benchmark(config, *, steps: int = 10, warmup: int = 2, vocab_size: int = 0, profile_dir: str = "") -> dict:
  if steps < 1 or warmup < 1:
    raise UserError("--steps and --warmup must be at least 1")
  prepared = prepare_step(config, vocab_size)
  step_fn, state, host_batch, mesh, rules = (prepared[k] for k in ("step_fn", "state", "host_batch", "mesh", "rules"))
  vocab_size, model_module = prepared["vocab_size"], prepared["model_module"]
  device = jax.devices()[0]
  peak = flops.peak_flops_per_device(device)  # measured on CPU: before the step runs, on an idle pool

  with jax.set_mesh(mesh), nn.logical_axis_rules(rules):
    batch = sharding.global_batch(host_batch, mesh)
    start = time.perf_counter()
    for _ in range(warmup):
      state, metrics = step_fn(state, batch)
    jax.block_until_ready((state, metrics))
    compile_s = time.perf_counter() - start
    if not bool(metrics["finite"]):
      raise UserError(f"non-finite loss in the benchmark step: {float(metrics['loss'])}")
    if profile_dir:
      jax.profiler.start_trace(profile_dir, create_perfetto_trace=True)
    state, metrics, times, cpu_s = timed_steps(step_fn, state, batch, steps)
    if profile_dir:
      jax.profiler.stop_trace()

  step_s, step_s_min = float(np.median(times)), float(np.min(times))
  compiled = compile_log.LOG.programs.get(STEP_PROGRAM)
  step_flops = flops.train_flops_per_step(model_module.forward_flops(config, vocab_size, config.batch_size),
                                          config.batch_size)
  matmul_peak = peak * jax.local_device_count() if device.platform == "cpu" else peak
  tflops = step_flops / step_s / jax.device_count() / 1e12
  m = config.model
  return {
      "benchmark": "vlm_jax", "model": m.name, "batch_size": config.batch_size,
      "image_size": config.data.image_size, "patch_size": m.vision.patch_size,
      "vision": f"w{m.vision.width}-d{m.vision.depth}-h{m.vision.num_heads}-mlp{m.vision.mlp_dim}",
      "text": f"w{m.text.width}-d{m.text.depth}-h{m.text.num_heads}-mlp{m.text.mlp_dim}-ctx{config.data.max_text_len}",
      "vocab_size": vocab_size, "dtype": m.dtype, "param_dtype": m.get("param_dtype", "float32"),
      "attention": m.get("attention", "auto"), "steps": steps,
      "img_per_s": config.batch_size / step_s, "step_s": step_s, "step_s_min": step_s_min,
      "cpu_s_per_step": cpu_s, "compile_s": compile_s, "gflops_per_step": step_flops / 1e9,
      "train_step_compile_s": compiled.compile_s if compiled else None,
      "train_step_cache": compiled.cache if compiled else None,
      "peak_memory_bytes": peak_memory_bytes(),
      "tflops_per_device": tflops, "mfu": tflops * 1e12 / peak, "matmul_peak_tflops": matmul_peak / 1e12,
      "loss": float(metrics["loss"]), "devices": jax.device_count(), "platform": device.platform,
      "cpu_count": os.cpu_count(), "xla_flags": os.environ.get("XLA_FLAGS", ""),
  }


def peak_memory_bytes() -> int | None:
  """The largest allocator peak (memory_stats' peak_bytes_in_use) over this process's devices since it started;
  None where the devices report no memory statistics (CPU)."""
  peaks = [(d.memory_stats() or {}).get("peak_bytes_in_use") for d in jax.local_devices()]
  peaks = [p for p in peaks if p is not None]
  return max(peaks) if peaks else None


def _main(argv):
  del argv
  logging.set_verbosity(logging.WARNING)
  try:
    if FLAGS.config is None:
      raise UserError("--config is required, e.g. --config configs/bench_small.py")
    # As the trainer's CLI does (vlm_jax/cli.py), so that the step timed is the step a training run takes.
    kept = host_malloc.keep_freed_memory_on_cpu()
    result = run_benchmark(FLAGS.config, steps=FLAGS.steps, warmup=FLAGS.warmup, vocab_size=FLAGS.vocab_size,
                           profile_dir=FLAGS.profile_dir)
    result["host_malloc"] = "kept" if kept else "system"
  except UserError as e:
    print(f"vlm_jax.benchmark: error: {e}", file=sys.stderr, flush=True)
    sys.exit(1)
  print(json.dumps(result), flush=True)


if __name__ == "__main__":
  app.run(_main)
