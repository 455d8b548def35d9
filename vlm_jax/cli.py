"""Command-line flags and error handling shared by `python -m vlm_jax.train`, `python -m vlm_jax.evaluate` and
`python -m vlm_jax.prepare` (the config's data prepared, nothing trained; no --workdir).

Library code never parses flags: this module, imported only by the entry modules train.py and evaluate.py,
turns them into calls of `trainer.train_and_evaluate` and `evaluation.evaluate_checkpoint`. A UserError
becomes one line on stderr and exit status 1, no traceback.
"""

import functools
import os
import sys
import time

_STARTED = time.time()  # the command's start, near enough (before jax is imported): time to first step counts from it

from absl import app, flags, logging
from ml_collections import config_flags

from vlm_jax import run_config
from vlm_jax.errors import UserError

config_flags.DEFINE_config_file("config", None, "Path to a config file, e.g. configs/shapes_coca.py.",
                                lock_config=True)
flags.DEFINE_string("workdir", None, "Directory for checkpoints, metrics.jsonl, TensorBoard and eval.json.")
flags.DEFINE_string("coordinator_address", None, "HOST:PORT of process 0, for multi-process runs off TPU pods.")
flags.DEFINE_integer("num_processes", None, "Number of processes in a multi-process run.")
flags.DEFINE_integer("process_id", None, "This process's index in a multi-process run.")
FLAGS = flags.FLAGS


def _initialize_distributed():
  import jax
  if FLAGS.coordinator_address or FLAGS.num_processes:
    if None in (FLAGS.coordinator_address, FLAGS.num_processes, FLAGS.process_id):
      raise UserError("--coordinator_address, --num_processes and --process_id go together")
    if jax.config.jax_platforms in (None, "", "cpu"):
      # CPU processes need a collectives backend to talk to each other (GPUs use NCCL, TPUs their ICI).
      jax.config.update("jax_cpu_collectives_implementation", "gloo")
    jax.distributed.initialize(FLAGS.coordinator_address, FLAGS.num_processes, FLAGS.process_id)
  elif os.environ.get("TPU_WORKER_HOSTNAMES") or os.environ.get("CLOUD_TPU_TASK_ID"):
    jax.distributed.initialize()  # a TPU pod slice: every worker learns the topology from the metadata


def _run(argv, command: str):
  del argv
  logging.set_verbosity(logging.WARNING)
  try:
    if FLAGS.config is None:
      raise UserError("--config is required, e.g. --config configs/shapes_coca.py")
    run_config.check_loaded(FLAGS.config, f"--config {FLAGS['config'].config_filename}")
    if command == "prepare":
      from vlm_jax.data import pipeline  # noqa: PLC0415
      run_config.validate(FLAGS.config)
      pipeline.prepare_data(FLAGS.config.data)
      return
    if not FLAGS.workdir:
      raise UserError("--workdir is required")
    _initialize_distributed()
    from vlm_jax import compilation_cache, compile_log, host_malloc  # noqa: PLC0415
    compilation_cache.enable()
    compile_log.mark_command_start(_STARTED)
    host_malloc.keep_freed_memory_on_cpu()  # XLA:CPU's per-step buffers then reuse freed heap
    # Imported once the flags are good: a mistake in them is reported before the data pipeline loads.
    if command == "train":
      from vlm_jax import trainer  # noqa: PLC0415
      trainer.train_and_evaluate(FLAGS.config, FLAGS.workdir)
    else:
      from vlm_jax import evaluation  # noqa: PLC0415
      evaluation.evaluate_checkpoint(FLAGS.config, FLAGS.workdir)
  except UserError as e:
    print(f"vlm_jax.{command}: error: {e}", file=sys.stderr, flush=True)
    sys.exit(1)


def _flags_parser(argv, command: str):
  """absl's parsing, with every mistake in the flags or config overrides as one line and exit 1."""
  def fail(message):
    print(f"vlm_jax.{command}: error: {message}", file=sys.stderr, flush=True)
    sys.exit(1)

  try:
    return FLAGS(argv)
  except flags.Error as e:  # wrong types, bad config files, unknown flags: absl's message is one line
    fail(str(e).splitlines()[0])
  except (KeyError, AttributeError) as e:  # ml_collections: an override of a key that does not exist
    key = str(e).strip("\"'")
    given = [a for a in argv[1:] if a.startswith("--config.") and key in a.split("=")[0]]
    fail(f"{given[0] if given else 'a --config override'} names a config key that does not exist ({key!r})")
  except (ValueError, TypeError) as e:
    fail(f"invalid flag value: {e}")
  except SyntaxError as e:  # a config file that is not valid Python
    fail(f"config file {e.filename} line {e.lineno}: {e.msg}")
  except UserError as e:  # a config file's get_config(ARG) refusing its argument
    fail(str(e))


def main(command: str):
  app.run(functools.partial(_run, command=command),
          flags_parser=functools.partial(_flags_parser, command=command))
