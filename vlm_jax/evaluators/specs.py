"""config.evals, read and checked: which evaluators run, on which split, how often, under which key prefix.

Each entry `config.evals.NAME = dict(type=..., split=..., every=..., prefix=...)` names an evaluator type
(EVAL_TYPES) that the model can be scored with (its module's EVAL_TYPES). vlm_jax.evaluation runs them. An
entry with type "" is switched off: a config can hold one for the command line to switch on
(--config.evals.NAME.type=zero_shot).
"""

from vlm_jax import models
from vlm_jax.errors import UserError

EVAL_TYPES = ("retrieval", "hardneg", "captioning", "vqa", "pope", "zero_shot", "classification")
SPEC_KEYS = {"type", "split", "every", "prefix", "templates", "ks"}


def eval_specs(config) -> list:
  """config.evals as a list of dicts {name, type, split, every, prefix, ...}, checked.

  Each entry `config.evals.NAME` has a `type` (EVAL_TYPES), the `split` it scores at the end of training
  (default config.eval.split), `every` (run on config.eval.periodic_split every that many steps during
  training; default config.eval_every_steps, 0 = never), and `prefix` for its keys in eval.json (default ""
  on the main split, "<split>/" on another); type "" leaves the entry out. With no entries, the model's
  DEFAULT_EVALS run on config.eval.split and on each of config.eval.extra_splits (keys prefixed "<split>/").
  """
  name = config.model.name
  model = models.get(name)
  entries = config.get("evals") or {}
  specs = []
  if not entries:
    for split in (config.eval.split,) + tuple(config.eval.extra_splits):
      for kind in model.DEFAULT_EVALS:
        specs.append({"name": kind if split == config.eval.split else f"{split}_{kind}", "type": kind,
                      "split": split, "every": config.eval_every_steps if split == config.eval.split else 0,
                      "prefix": "" if split == config.eval.split else f"{split}/"})
    return specs
  for key in entries:
    entry = dict(entries[key])
    where = f"config.evals.{key}"
    unknown = sorted(set(entry) - SPEC_KEYS)
    if unknown:
      raise UserError(f"{where}.{unknown[0]} is not an evaluator option; expected some of {sorted(SPEC_KEYS)}")
    if entry.get("type") == "":
      continue  # switched off
    kind = entry.get("type")
    if kind not in EVAL_TYPES:
      raise UserError(f"{where}.type={kind!r} is not an evaluator; expected one of {EVAL_TYPES}")
    if kind not in model.EVAL_TYPES:
      raise UserError(f"{where}.type={kind!r} cannot score model {name!r}; it can be scored with {model.EVAL_TYPES}")
    split = entry.get("split") or config.eval.split
    every = entry.get("every", config.eval_every_steps)
    if not isinstance(every, int) or every < 0:
      raise UserError(f"{where}.every={every!r} must be a number of steps >= 0")
    prefix = entry.get("prefix")
    if prefix is None:
      prefix = "" if split == config.eval.split else f"{split}/"
    specs.append({**entry, "name": key, "type": kind, "split": split, "every": every, "prefix": prefix})
  return specs
