"""Score a model with the evaluators its config names -> a flat dict (eval.json).

Evaluators are config-driven, as in big_vision: `config.evals.NAME = dict(type=..., split=..., every=...)`
with type one of evaluators.specs.EVAL_TYPES (retrieval recall@k, hardneg probes, captioning exact match /
BLEU-4 / CIDEr / ROUGE-L, vqa, pope, zero_shot classification with prompt templates, classification
accuracy); a config without entries gets its model's DEFAULT_EVALS. The Evaluator calls the model's
prediction functions (its module's predict_fns) and never asks which model it is.

`evaluate_checkpoint(config, workdir)` restores the latest checkpoint in DIR/checkpoints and writes
DIR/eval.json; the command line is `python -m vlm_jax.evaluate` (vlm_jax/evaluate.py, flags only).
"""

import collections
import functools
import json
import os

import flax.linen as nn
import jax
import numpy as np

from vlm_jax import compile_log, decoding, inference, models
from vlm_jax import run as run_lib
from vlm_jax.data import pipeline, tokenizer as tokenizer_lib
from vlm_jax.errors import UserError
from vlm_jax.evaluators import (blind, caption_metrics, captioning, hardneg, pope, retrieval, vqa,
                                zero_shot)
from vlm_jax.evaluators.specs import eval_specs

def _batched(fn, arrays, batch_size: int):
  """Applies a jitted fn over the leading axis in fixed-size batches (the last one padded: one compile)."""
  n = len(arrays[0])
  outputs = []
  for start in range(0, n, batch_size):
    chunk = [a[start:start + batch_size] for a in arrays]
    pad = batch_size - len(chunk[0])
    if pad:
      chunk = [np.concatenate([c, np.repeat(c[-1:], pad, axis=0)]) for c in chunk]
    outputs.append(jax.device_get(fn(*chunk))[:batch_size - pad])
  return np.concatenate(outputs)


class Evaluator:
  """Holds the compiled functions of one model; `__call__(params, split)` returns the metrics dict."""

  def __init__(self, model, config, tokenizer):
    self.model, self.config, self.tokenizer = model, config, tokenizer
    model_module = models.get(config.model.name)
    self.max_len = config.data.max_text_len
    self._splits = {}
    self._memo = {}
    # KV-cached greedy decoding where the model writes; it emits exactly the tokens of
    # decoding.greedy_decode (tested).
    self.predict_fns = inference.prediction_fns(
        model_module, model, decoding.DecodeConfig(method="greedy", max_steps=config.eval.max_decode_len),
        tokenizer.eos_id, tokenizer.pad_id)
    self.data_task = model_module.DATA_TASK

  def load(self, split):
    if split not in self._splits:
      self._splits[split] = pipeline.load_split(self.config.data, split)
    return self._splits[split]

  def _generate(self, params, images, prompts_tokens, prompt_lens):
    bs = self.config.eval.batch_size
    generate = lambda x, t, s: self.predict_fns["generate"](params, x, t, s, jax.random.key(0))[0]
    generated = _batched(generate, [images, prompts_tokens, prompt_lens], bs)
    return [decoding.generated_ids(row, int(s), self.tokenizer.eos_id, self.tokenizer.pad_id)
            for row, s in zip(generated, prompt_lens)]

  def _prefix(self, prompt: str) -> list:
    """BOS + the prompt's ids (BOS alone for no prompt), as training puts them before the answer."""
    return list(pipeline.make_vqa_prompt(self.tokenizer, prompt, self.max_len)) if prompt else [self.tokenizer.bos_id]

  def _prompts(self, prompts):
    """BOS + prompt ids, left-aligned in a max_len buffer, and each prompt's length."""
    buffers, lengths = [], []
    for prompt in prompts:
      prefix = self._prefix(prompt)
      buffer = np.full((self.max_len,), self.tokenizer.pad_id, np.int32)
      buffer[:len(prefix)] = prefix
      buffers.append(buffer)
      lengths.append(len(prefix))
    return np.stack(buffers), np.asarray(lengths, np.int32)

  def _reference_ids(self, texts):
    return [self.tokenizer.encode(t)[: self.max_len - 2] for t in texts]

  # ------------------------------------------------------------------- one method per evaluator type

  def _per_image(self, params, split, name):
    """predict_fns[name] (encode_image, image_tokens) of every image of the split, computed once per split."""
    key = (name, split)
    if key not in self._memo:
      self._memo[key] = _batched(lambda x: self.predict_fns[name](params, x), [self.load(split)["image"]],
                                 self.config.eval.batch_size)
    return self._memo[key]

  def _image_embedding(self, params, split):
    return self._per_image(params, split, "encode_image")

  def _embed_texts(self, params, texts):
    tokens = tokenizer_lib.tokenize_all(self.tokenizer, texts, self.max_len)
    return _batched(lambda t: self.predict_fns["encode_text"](params, t), [tokens], self.config.eval.batch_size)

  def retrieval(self, params, split, spec) -> dict:
    data = self.load(split)
    if "references" in data:  # every caption of an image is a query that should find it (COCO: five)
      texts = [t for refs in data["references"] for t in refs]
      owners = [i for i, refs in enumerate(data["references"]) for _ in refs]
      return retrieval.retrieval_metrics(self._image_embedding(params, split), self._embed_texts(params, texts),
                                         texts, text_images=owners)
    return retrieval.retrieval_metrics(self._image_embedding(params, split),
                                       self._embed_texts(params, data["caption"]), data["caption"])

  def _caption_log_likelihoods(self, params, image_tokens, texts) -> np.ndarray:
    """float[N, K]: log p(texts[i][k] | image i) for image i's tokens image_tokens[i] (predict_fns' image_tokens):
    each text's tokens and EOS after the caption prompt the model is trained to caption with
    (pipeline.CAPTION_PROMPTS), teacher-forced, K texts of eval.batch_size / K images in a call. Every call has
    the one shape [eval.batch_size / K, K, max_text_len]: one compiled program for every kind of caption (cutting
    the short ones saves less than another compilation costs)."""
    prefix = self._prefix(pipeline.CAPTION_PROMPTS[self.data_task])
    tokens = np.stack([np.stack([tokenizer_lib.pack_tokens(self.tokenizer, prefix + self.tokenizer.encode(t),
                                                           self.max_len)[0] for t in row]) for row in texts])
    prefix_len = np.full(tokens.shape[:2], len(prefix), np.int32)
    log_probs = _batched(lambda x, t, s: self.predict_fns["token_log_probs"](params, x, t, s),
                         [image_tokens, tokens, prefix_len], max(1, self.config.eval.batch_size // tokens.shape[1]))
    return hardneg.caption_log_likelihood(log_probs, tokens, prefix_len, self.tokenizer.pad_id)

  @functools.cached_property
  def blind_scorer(self):
    """The text-only scorer (blind.fit) of the training split's captions, fitted once; None without captions."""
    captions = pipeline.train_captions(self.config.data)
    return blind.fit(captions) if captions else None

  def hardneg(self, params, split, spec) -> dict:
    """hardneg/<type> by embeddings (a model with a text tower), hardneg_likelihood/<type> by the caption
    decoder's likelihood (a model that captions), blind/hardneg/<type> by text alone (blind.py), the baseline
    of both; chance/... 0.5."""
    data, metrics = self.load(split), {}
    # Kinds without hard negatives: a dataset without any (the user's own data), or a kind a dataset has no
    # negatives for (binding in Fashion-MNIST scenes).
    kinds = [kind for kind in hardneg.HARDNEG_TYPES if any(data.get(f"hardneg_{kind}_pos") or ())]
    if not kinds:
      return metrics
    scorer = self.blind_scorer
    for kind in kinds:
      positives, negatives = data[f"hardneg_{kind}_pos"], data[f"hardneg_{kind}_neg"]
      rows = [i for i, p in enumerate(positives) if p]
      if "encode_text" in self.predict_fns:
        metrics[f"hardneg/{kind}"] = hardneg.hardneg_accuracy(
            self._image_embedding(params, split)[rows], self._embed_texts(params, [positives[i] for i in rows]),
            self._embed_texts(params, [negatives[i] for i in rows]))
        metrics[f"chance/hardneg/{kind}"] = 0.5
      if "token_log_probs" in self.predict_fns:
        likelihoods = self._caption_log_likelihoods(params, self._per_image(params, split, "image_tokens")[rows],
                                                    [[positives[i], negatives[i]] for i in rows])
        metrics[f"hardneg_likelihood/{kind}"] = hardneg.likelihood_accuracy(likelihoods[:, 0], likelihoods[:, 1])
        metrics[f"chance/hardneg_likelihood/{kind}"] = 0.5
      if scorer is not None:
        metrics[f"blind/hardneg/{kind}"] = blind.blind_accuracy(scorer, [positives[i] for i in rows],
                                                                [negatives[i] for i in rows])
    return metrics

  def captioning(self, params, split, spec) -> dict:
    data = self.load(split)
    tokens, lengths = self._prompts([pipeline.CAPTION_PROMPTS[self.data_task]] * len(data["caption"]))
    predicted = self._generate(params, data["image"], tokens, lengths)
    metrics = captioning.caption_scores(predicted, self._reference_ids(data["caption"]), self.tokenizer.eos_id)
    # BLEU-4 / CIDEr-D / ROUGE-L (pycocoevalcap) against the canonical caption of the scenes: the one form the
    # captioner is trained to produce, so the n-gram scores compare like with like; against every reference
    # caption of an image where the dataset has several (the user's own data: COCO has five).
    references = data.get("references") or [[c] for c in data["caption"]]
    metrics.update(caption_metrics.caption_metrics([self.tokenizer.decode(p) for p in predicted], references))
    # Chance: a blind model that writes the split's most common caption for every image.
    reference_ids = self._reference_ids([t for refs in references for t in refs])
    counts = collections.Counter(map(tuple, reference_ids))
    mode = max(counts, key=lambda r: (counts[r], r))
    first_ids = self._reference_ids(data["caption"])
    modal = captioning.caption_scores([list(mode)] * len(first_ids), first_ids, self.tokenizer.eos_id)
    modal.update(caption_metrics.caption_metrics([self.tokenizer.decode(list(mode))] * len(references), references))
    metrics.update({f"chance/{k}": v for k, v in modal.items()})
    return metrics

  def _answers(self, params, split):
    """The model's answer to every question of the split, with the truths and question types."""
    key = ("answers", split)
    if key not in self._memo:
      data = self.load(split)
      index = [i for i, qs in enumerate(data["questions"]) for _ in qs]
      questions = [q for qs in data["questions"] for q in qs]
      tokens, lengths = self._prompts(questions)
      predicted = self._generate(params, data["image"][index], tokens, lengths)
      self._memo[key] = ([self.tokenizer.decode(p) for p in predicted],
                         [a for answers in data["answers"] for a in answers],
                         [k for ks in data["question_types"] for k in ks])
    return self._memo[key]

  def vqa(self, params, split, spec) -> dict:
    return vqa.vqa_scores(*self._answers(params, split))

  def pope(self, params, split, spec) -> dict:
    """POPE-style hallucination: the yes/no "is there a X?" questions, half about absent objects."""
    given, truths, kinds = self._answers(params, split)
    exists = [i for i, k in enumerate(kinds) if k == "exists"]
    if not exists:
      return {}
    return pope.pope_metrics([given[i] for i in exists], [truths[i] for i in exists])

  def zero_shot(self, params, split, spec) -> dict:
    """Classifies a labelled dataset's images among its class names, each in prompt templates."""
    images, labels, class_names = pipeline.load_zero_shot(self.config.data, split)
    templates = tuple(spec.get("templates") or zero_shot.DEFAULT_TEMPLATES)
    prompts = zero_shot.class_prompts(list(class_names), templates)
    classes = zero_shot.class_embeddings(self._embed_texts(params, prompts), len(templates))
    image_embedding = _batched(lambda x: self.predict_fns["encode_image"](params, x), [images],
                               self.config.eval.batch_size)
    return zero_shot.zero_shot_metrics(image_embedding, classes, labels, ks=tuple(spec.get("ks") or (1, 5)))

  def classification(self, params, split, spec) -> dict:
    """Top-1 accuracy of a classifier's logits on a labelled split, and its chance level 1 / classes."""
    data = self.load(split)
    logits = _batched(lambda x: self.predict_fns["classify"](params, x), [data["image"]], self.config.eval.batch_size)
    return {"accuracy": float(np.mean(np.argmax(logits, -1) == np.asarray(data["label"]))),
            "chance/accuracy": 1.0 / logits.shape[-1]}

  # ------------------------------------------------------------------- running the configured evaluators

  def score(self, params, jobs) -> dict:
    """jobs: (spec from `eval_specs`, split, key prefix) triples -> their metrics merged into one dict.

    Image embeddings and VQA answers are computed once per split for all the jobs, then dropped.
    """
    self._memo = {}
    metrics = {}
    for spec, split, prefix in jobs:
      metrics.update({prefix + k: v for k, v in getattr(self, spec["type"])(params, split, spec).items()})
    self._memo = {}
    return metrics

  def __call__(self, params, split: str, specs=None) -> dict:
    """Every evaluator in `specs` (default: the config's) on `split`, keys unprefixed."""
    specs = specs if specs is not None else eval_specs(self.config)
    return self.score(params, [(spec, split, "") for spec in specs])


def evaluate_splits(evaluator: Evaluator, params, config) -> dict:
  """The final scores: every evaluator on its split, keys prefixed as its spec says (eval.json)."""
  return evaluator.score(params, [(spec, spec["split"], spec["prefix"]) for spec in eval_specs(config)])


def periodic_scores(evaluator: Evaluator, params, config, step: int, specs=None) -> dict:
  """The evaluators due at `step` (every > 0 divides it) on config.eval.periodic_split; {} if none.

  specs: `eval_specs(config)` computed once by a caller that asks at every step.
  """
  due = [s for s in (specs if specs is not None else eval_specs(config)) if s["every"] and step % s["every"] == 0]
  return evaluator(params, config.eval.periodic_split, due) if due else {}


def write_eval_json(workdir: str, step: int, metrics: dict) -> str:
  path = os.path.join(workdir, "eval.json")
  with open(path + ".tmp", "w") as f:
    json.dump({"step": step, **metrics}, f, indent=1, sort_keys=True)
  os.replace(path + ".tmp", path)
  return path


BASELINES = ("chance", "blind")  # what eval.json stores beside a score: chance/<key>, blind/<key> (blind.py)


def baseline_keys(key: str, baseline: str = "chance") -> list:
  """Where the `baseline` level of `key` may be: "<baseline>/<key>", or after any prefix,
  "<prefix>/<baseline>/<rest>". A probe's blind baseline is one text-only accuracy whichever way the model
  scores it: blind/hardneg/<type> for hardneg_likelihood/<type> too."""
  parts = key.split("/")
  if baseline == "blind":
    parts = ["hardneg" if part == "hardneg_likelihood" else part for part in parts]
  return ["/".join(parts[:i] + [baseline] + parts[i:]) for i in range(len(parts))]


def _is_baseline(key: str) -> bool:
  return bool(set(BASELINES) & set(key.split("/")))


def format_metrics(metrics: dict) -> str:
  """Readable lines 'name  value  (chance c, blind b)', each score with its baselines beside it."""
  lines = []
  for key in sorted(k for k in metrics if not _is_baseline(k) and k != "step"):
    levels = [(name, next((metrics[k] for k in baseline_keys(key, name) if k in metrics), None)) for name in BASELINES]
    levels = [f"{name} {value:.3f}" for name, value in levels if value is not None]
    suffix = f"   ({', '.join(levels)})" if levels else ""
    lines.append(f"  {key:42s} {metrics[key]:.4f}{suffix}")
  return "\n".join(lines)


def evaluate_checkpoint(config, workdir: str) -> dict:
  """Restores the latest checkpoint in DIR and scores the test split into DIR/eval.json."""
  workdir = os.path.abspath(os.path.expanduser(workdir))
  if not os.path.isdir(os.path.join(workdir, "checkpoints")):
    raise UserError(f"no checkpoints in {workdir}/checkpoints: train first with python -m vlm_jax.train")
  run_lib.check_same_model(config, workdir)
  run = run_lib.Run(config, workdir, for_training=False)
  step = run.restore_latest()
  if not step:
    raise UserError(f"no checkpoint found in {run.checkpoints.directory}")
  evaluator = Evaluator(run.model, config, run.tokenizer)
  compile_log.LOG.start(echo=jax.process_index() == 0)  # a line per compiled evaluator program
  try:
    with jax.set_mesh(run.mesh), nn.logical_axis_rules(run.rules):
      scores = evaluate_splits(evaluator, run.state.params, config)
  finally:
    compile_log.LOG.stop()
  run.checkpoints.close()
  if jax.process_index() == 0:
    path = write_eval_json(run.workdir, step, scores)
    print(f"checkpoint {step}: {config.eval.split} scores (written to {path}):\n"
          + format_metrics(scores), flush=True)
  return scores
