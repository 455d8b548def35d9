"""Score a model on a held-out split: retrieval, hard negatives, captions, VQA -> a flat dict.

CLI: python -m vlm_jax.evaluate --config configs/NAME.py --workdir DIR
restores the latest checkpoint in DIR/checkpoints and writes DIR/eval.json.
"""

import json
import os

import jax
import jax.numpy as jnp
import numpy as np

from vlm_jax import decoding
from vlm_jax.data import pipeline, tokenizer as tokenizer_lib
from vlm_jax.evaluators import caption_metrics, captioning, hardneg, pope, retrieval, vqa

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


def tokenize_all(tokenizer, texts, max_len: int) -> np.ndarray:
  return np.stack([tokenizer_lib.tokenize(tokenizer, t, max_len)[0] for t in texts])


class Evaluator:
  """Holds the compiled functions of one model; `__call__(params, split)` returns the metrics dict."""

  def __init__(self, model, config, tokenizer):
    self.model, self.config, self.tokenizer = model, config, tokenizer
    self.name = config.model.name
    self.max_len = config.data.max_text_len
    self._splits = {}

    def apply(method):
      return jax.jit(lambda params, *args: model.apply({"params": params}, *args, method=method))

    if self.name in ("two_tower", "coca"):
      self.encode_image = apply(lambda m, x: m.encode_image(x)[0])
      self.encode_text = apply(lambda m, t: m.encode_text(t)[0])
    if self.name in ("coca", "prefix_lm"):
      # KV-cached greedy decoding; it emits exactly the tokens of decoding.greedy_decode (tested).
      self._generate_fn = decoding.make_generate(
          model, decoding.DecodeConfig(method="greedy", max_steps=config.eval.max_decode_len),
          tokenizer.eos_id, tokenizer.pad_id)
      self.decode = lambda params, images, tokens, start: self._generate_fn(
          params, images, tokens, start, jax.random.key(0))[0]

  def load(self, split):
    if split not in self._splits:
      self._splits[split] = pipeline.load_split(self.config.data, split)
    return self._splits[split]

  def _generate(self, params, images, prompts_tokens, prompt_lens):
    bs = self.config.eval.batch_size
    out = _batched(lambda x, t, s: self.decode(params, x, t, s), [images, prompts_tokens, prompt_lens], bs)
    return [decoding.generated_ids(row, int(s), self.tokenizer.eos_id, self.tokenizer.pad_id)
            for row, s in zip(out, prompt_lens)]

  def _prompts(self, prompts):
    """BOS + prompt ids, left-aligned in a max_len buffer, and each prompt's length."""
    buffers, lengths = [], []
    for prompt in prompts:
      prefix = pipeline.make_vqa_prompt(self.tokenizer, prompt, self.max_len) if prompt else [self.tokenizer.bos_id]
      buffer = np.full((self.max_len,), self.tokenizer.pad_id, np.int32)
      buffer[:len(prefix)] = prefix
      buffers.append(buffer)
      lengths.append(len(prefix))
    return np.stack(buffers), np.asarray(lengths, np.int32)

  def _reference_ids(self, texts):
    return [self.tokenizer.encode(t)[: self.max_len - 2] for t in texts]

  def __call__(self, params, split: str) -> dict:
    data = self.load(split)
    bs = self.config.eval.batch_size
    metrics = {}
    if self.name in ("two_tower", "coca"):
      image_embedding = _batched(lambda x: self.encode_image(params, x), [data["image"]], bs)
      embed_texts = lambda texts: _batched(lambda t: self.encode_text(params, t),
                                           [tokenize_all(self.tokenizer, texts, self.max_len)], bs)
      metrics.update(retrieval.retrieval_metrics(image_embedding, embed_texts(data["caption"]), data["caption"]))
      for kind in hardneg.HARDNEG_TYPES:
        positives, negatives = data[f"hardneg_{kind}_pos"], data[f"hardneg_{kind}_neg"]
        rows = [i for i, p in enumerate(positives) if p]
        if not rows:
          continue
        metrics[f"hardneg/{kind}"] = hardneg.hardneg_accuracy(
            image_embedding[rows], embed_texts([positives[i] for i in rows]),
            embed_texts([negatives[i] for i in rows]))
        metrics[f"chance/hardneg/{kind}"] = 0.5
    if self.name in ("coca", "prefix_lm"):
      prompt = pipeline.DESCRIBE_PROMPT if self.name == "prefix_lm" else ""
      tokens, lengths = self._prompts([prompt] * len(data["caption"]))
      predicted = self._generate(params, data["image"], tokens, lengths)
      metrics.update(captioning.caption_scores(predicted, self._reference_ids(data["caption"]),
                                               self.tokenizer.eos_id))
      # BLEU-4 / CIDEr-D / ROUGE-L (pycocoevalcap) against the canonical caption: the one form the
      # captioner is trained to produce, so the n-gram scores compare like with like.
      metrics.update(caption_metrics.caption_metrics([self.tokenizer.decode(p) for p in predicted],
                                                     [[c] for c in data["caption"]]))
    if self.name == "prefix_lm":
      index = [i for i, qs in enumerate(data["questions"]) for _ in qs]
      questions = [q for qs in data["questions"] for q in qs]
      answers = [a for answers in data["answers"] for a in answers]
      kinds = [k for ks in data["question_types"] for k in ks]
      tokens, lengths = self._prompts(questions)
      predicted = self._generate(params, data["image"][index], tokens, lengths)
      answers_given = [self.tokenizer.decode(p) for p in predicted]
      metrics.update(vqa.vqa_scores(answers_given, answers, kinds))
      # POPE-style hallucination: the yes/no questions about objects, half of them absent from the scene.
      exists = [i for i, k in enumerate(kinds) if k == "exists"]
      if exists:
        metrics.update(pope.pope_metrics([answers_given[i] for i in exists], [answers[i] for i in exists]))
    return metrics


def evaluate_splits(evaluator: Evaluator, params, config) -> dict:
  """The main split's metrics, plus `<split>/<metric>` for each extra split (e.g. compositional)."""
  metrics = evaluator(params, config.eval.split)
  for split in config.eval.extra_splits:
    metrics.update({f"{split}/{k}": v for k, v in evaluator(params, split).items()})
  return metrics


def write_eval_json(workdir: str, step: int, metrics: dict) -> str:
  path = os.path.join(workdir, "eval.json")
  with open(path + ".tmp", "w") as f:
    json.dump({"step": step, **metrics}, f, indent=1, sort_keys=True)
  os.replace(path + ".tmp", path)
  return path


SPLIT_PREFIXES = ("test", "validation", "compositional")


def _chance_key(key: str) -> str:
  first, _, rest = key.partition("/")
  return f"{first}/chance/{rest}" if first in SPLIT_PREFIXES else f"chance/{key}"


def _is_chance(key: str) -> bool:
  first, _, rest = key.partition("/")
  return key.startswith("chance/") or (first in SPLIT_PREFIXES and rest.startswith("chance/"))


def format_metrics(metrics: dict) -> str:
  """Readable lines 'name  value  (chance c)', each score with its chance level beside it."""
  lines = []
  for key in sorted(k for k in metrics if not _is_chance(k) and k != "step"):
    chance = metrics.get(_chance_key(key))
    suffix = f"   (chance {chance:.3f})" if chance is not None else ""
    lines.append(f"  {key:42s} {metrics[key]:.4f}{suffix}")
  return "\n".join(lines)


if __name__ == "__main__":
  from vlm_jax import cli
  cli.main("evaluate")
