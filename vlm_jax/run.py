"""A run built from a config: data, tokenizer, model, sharded state and checkpoints, for training or scoring.

`Run(config, workdir, for_training=...)` is what the trainer and `evaluation.evaluate_checkpoint` start
from. Inference needs less (no data, no optimizer state): see vlm_jax.inference.
"""

import json
import os

import flax.linen as nn
import jax
import ml_collections
from flax import serialization
from jax.experimental import multihost_utils

from vlm_jax import checkpointing, models, run_config, sharding, train_state
from vlm_jax.data import pipeline, tokenizer as tokenizer_lib
from vlm_jax.errors import UserError
from vlm_jax.models import layers, towers


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
  runs written before it), and the other model, text and vision fields (absent: today's defaults, the values
  that reproduce those runs)."""
  base = json.loads(run_config.base_config().model.to_json())
  model = {"scan": False, **{k: v for k, v in base.items() if not isinstance(v, dict)}, **saved_model}
  for section in ("text", "vision"):
    model[section] = {**base[section], **model.get(section, {})}
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
    if "data" in saved:  # keys added to config.data since (own data, normalisation) at their defaults
      saved["data"] = {**json.loads(ml_collections.ConfigDict(run_config.data_defaults()).to_json()), **saved["data"]}
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


class Run:
  """Everything a config builds: data, tokenizer, model, state, checkpoints. Shared by train and evaluate.

  `model_module` is the model's module (models.get(config.model.name)): what the model declares.
  """

  def __init__(self, config, workdir: str, *, for_training: bool):
    run_config.validate(config)
    self.config = config
    self.workdir = prepare_workdir(workdir)
    self.mesh = sharding.make_mesh(config.mesh)
    self.rules = sharding.logical_rules(config)
    if config.batch_size % jax.process_count() or (config.batch_size // jax.process_count()) % jax.local_device_count():
      raise UserError(f"config.batch_size={config.batch_size} must be divisible by the {jax.device_count()} devices")
    if jax.process_index() == 0:  # one writer; the others wait for it
      pipeline.prepare_data(config.data)
    if jax.process_count() > 1:
      multihost_utils.sync_global_devices("vlm_jax: data prepared")
    # The workdir's own copy when it has checkpoints (a resumed run, an evaluation after the prepared data is gone).
    has_checkpoints = os.path.isdir(os.path.join(self.workdir, "checkpoints"))
    self.tokenizer = (tokenizer_lib.load_for_workdir(self.workdir, config.data) if has_checkpoints
                      else tokenizer_lib.load_for_config(config.data))
    self.model_module = models.get(config.model.name)
    self.model = models.build_model(config.model, vocab_size=self.tokenizer.vocab_size,
                                    max_len=config.data.max_text_len, eos_id=self.tokenizer.eos_id,
                                    pad_id=self.tokenizer.pad_id)
    self.data_iterator = None
    if for_training:
      self.data_iterator = pipeline.train_iterator(
          config.data, self.tokenizer, batch_size=config.batch_size, seed=config.seed,
          task=self.model_module.DATA_TASK, process_index=jax.process_index(), process_count=jax.process_count())
    self.tx = train_state.make_optimizer(config)
    batch = models.sample_batch(self.model_module.FEATURES, 2, config.data.image_size, config.data.max_text_len)
    # The state's abstract shape and shardings now; its values only when first read (`state`): a run that restores
    # a checkpoint never computes (nor compiles) an initial state it would overwrite.
    self._init, self.abstract_state, self.state_shardings = train_state.state_init(
        self.model, self.tx, batch, self.mesh, self.rules, towers.param_dtype_of(config.model))
    self._state = None
    self.checkpoints = checkpointing.Checkpoints(self.workdir, config.keep_checkpoints)

  @property
  def state(self):
    """The train state: restore_latest's, or else the freshly initialised one (from config.seed), computed here on
    first use."""
    if self._state is None:
      self._state = train_state.initialize_state(self._init, self.state_shardings, jax.random.key(self.config.seed),
                                                 self.rules)
    return self._state

  @state.setter
  def state(self, value):
    self._state = value

  def restore_latest(self) -> int:
    """Restores the newest readable checkpoint (state and data iterator); returns its step, 0 if none.

    A newest checkpoint that cannot be read (cut short, corrupted) is reported by name and skipped; the
    one before it is restored. Nothing is deleted.
    """
    for step in sorted(self.checkpoints.all_steps(), reverse=True):
      try:
        if layers.in_loop_layout(self.checkpoints.saved_params(step), self.abstract_state.params):
          self.state = self._restore_loop_layout(step)
          print(f"converted checkpoint {self.checkpoints.directory}/{step} from the loop layout "
                "(block_NN) to config.model.scan's stacked layout", flush=True)
        else:
          self.state = self.checkpoints.restore(step, self.abstract_state, self.data_iterator)
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
    loop_model = models.build_model(loop_config, vocab_size=self.tokenizer.vocab_size,
                                    max_len=self.config.data.max_text_len, eos_id=self.tokenizer.eos_id,
                                    pad_id=self.tokenizer.pad_id)
    batch = models.sample_batch(self.model_module.FEATURES, 2, self.config.data.image_size,
                                self.config.data.max_text_len)
    params = lambda rng: train_state.init_params(loop_model, rng, batch, towers.param_dtype_of(self.config.model))
    init = lambda rng: train_state.TrainState.create(apply_fn=loop_model.apply, params=params(rng), tx=self.tx)
    replicated = sharding.replicated(self.mesh)
    abstract = jax.tree.map(lambda a: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=replicated),
                            nn.meta.unbox(jax.eval_shape(init, jax.random.key(0))))
    restored = self.checkpoints.restore(step, abstract, self.data_iterator)
    converted = layers.to_scanned_layout(serialization.to_state_dict(restored),
                                         serialization.to_state_dict(self.abstract_state))
    state = serialization.from_state_dict(self.abstract_state, converted)
    return jax.tree.map(jax.device_put, state, self.state_shardings)
