"""Build the tiny transformers checkpoints and expected outputs under tests/fixtures/hf/<kind>/.

Needs torch and transformers (requirements-fixtures.txt); the tests that read the fixtures do not.
For each kind it saves config.json + model.safetensors (save_pretrained) and expected.npz holding the
fixed inputs and what transformers returns for them. Then it checks the export path end to end:
vlm_jax's from_hf -> to_hf -> transformers from_pretrained must reproduce the same outputs.

    nice -n 19 /work/venv-torch/bin/python scripts/make_hf_fixtures.py [--out tests/fixtures/hf] [--only KIND,...]

The LLaVA parts (llava_clip_vision: a CLIPVisionModel with its preprocessor_config.json; llava_llama: a
Llama with vlm_jax's byte tokenizer as tokenizer.json) are what tests/test_llava_hf.py trains a prefix-LM
from and exports to transformers.
"""

import argparse
import os
import tempfile

import numpy as np
import torch
import transformers

from vlm_jax import pretrained
from vlm_jax.data import tokenizer as vlm_jax_tokenizer
from vlm_jax.pretrained import hf_tokenizer

IMAGE, PATCH, RESAMPLED_IMAGE = 48, 12, 60  # 4x4 patch grid; 5x5 when resampled
TINY_TOWER = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4)


def clip_config(eos_token_id: int) -> transformers.CLIPConfig:
  """A 2-layer, width-32 CLIP; eos_token_id=2 selects transformers' legacy argmax-of-ids pooling."""
  return transformers.CLIPConfig(
      text_config=dict(TINY_TOWER, vocab_size=64, max_position_embeddings=16, pad_token_id=1,
                       bos_token_id=0, eos_token_id=eos_token_id),
      vision_config=dict(TINY_TOWER, image_size=IMAGE, patch_size=PATCH),
      projection_dim=24)


def siglip_config() -> transformers.SiglipConfig:
  return transformers.SiglipConfig(
      text_config=dict(TINY_TOWER, vocab_size=64, max_position_embeddings=12, pad_token_id=1),
      vision_config=dict(TINY_TOWER, image_size=IMAGE, patch_size=PATCH))


def llama_config(**overrides) -> transformers.LlamaConfig:
  """A 2-layer Llama with grouped-query attention (4 query heads share 2 key/value heads)."""
  return transformers.LlamaConfig(**{**dict(TINY_TOWER, vocab_size=64, num_key_value_heads=2,
                                            max_position_embeddings=64, rms_norm_eps=1e-5), **overrides})


def randomize(model: torch.nn.Module, seed: int) -> None:
  """Replace the (near-zero, std 0.02) init by O(1)-output random values so parity means something."""
  gen = torch.Generator().manual_seed(seed)
  with torch.no_grad():
    for name, p in model.named_parameters():
      noise = torch.randn(p.shape, generator=gen)
      if p.ndim >= 2:
        p.copy_(noise / np.sqrt(p[0].numel()))
      elif "norm" in name or "layrnorm" in name:
        p.copy_(1.0 + 0.2 * noise)
      else:
        p.copy_(0.2 * noise)


def text_inputs(rng, eos_id: int, pad_id: int, batch: int, length: int, vocab: int) -> np.ndarray:
  """int32[B, T]: random tokens, an EOS at a different place in each row, padding after it.

  Row 0 has its EOS last; the others end in padding, so pooling at "the last token" would be wrong.
  Ordinary tokens avoid EOS and padding ids.
  """
  ordinary = [t for t in range(3, vocab) if t not in (eos_id, pad_id)]
  tokens = rng.choice(ordinary, size=(batch, length)).astype(np.int32)
  for row in range(batch):
    eos_at = length - 1 - 3 * row
    tokens[row, eos_at] = eos_id
    tokens[row, eos_at + 1:] = pad_id
  return tokens


def nchw(images: np.ndarray) -> torch.Tensor:
  return torch.from_numpy(images).permute(0, 3, 1, 2).contiguous()


def features(output) -> np.ndarray:
  """get_*_features return a tensor (transformers 4) or an output whose pooler_output is the features (5)."""
  tensor = output if isinstance(output, torch.Tensor) else output.pooler_output
  return tensor.detach().numpy().astype(np.float32)


def normalise(pixels: np.ndarray) -> np.ndarray:
  """uint8 pixels -> float32 in [-1, 1]; the tests apply the same numpy ops (fixtures store uint8: 4x smaller)."""
  return pixels.astype(np.float32) / np.float32(127.5) - np.float32(1.0)


def two_tower_expected(model, rng, eos_id: int, pad_id: int, vocab: int, length: int) -> dict:
  pixels = rng.integers(0, 256, (2, IMAGE, IMAGE, 3), dtype=np.uint8)
  resampled_pixels = rng.integers(0, 256, (2, RESAMPLED_IMAGE, RESAMPLED_IMAGE, 3), dtype=np.uint8)
  images, resampled = normalise(pixels), normalise(resampled_pixels)
  tokens = text_inputs(rng, eos_id, pad_id, 3, length, vocab)
  with torch.no_grad():
    return dict(
        pixels=pixels, tokens=tokens, resampled_pixels=resampled_pixels,
        image_features=features(model.get_image_features(pixel_values=nchw(images))),
        text_features=features(model.get_text_features(input_ids=torch.from_numpy(tokens).long())),
        resampled_image_features=features(model.get_image_features(
            pixel_values=nchw(resampled), interpolate_pos_encoding=True)))


GENERATE_NEW_TOKENS = 12


def llama_expected(model, rng, vocab: int) -> dict:
  """Logits of random tokens, and what greedy `generate` writes after random prompts (EOS left enabled:
  a row that says EOS is padded after it, as Pretrained.generate must do too)."""
  tokens = rng.integers(0, vocab, size=(2, 9)).astype(np.int32)
  prompts = rng.integers(3, vocab, size=(3, 5)).astype(np.int32)
  with torch.no_grad():
    logits = model(input_ids=torch.from_numpy(tokens).long()).logits
    generated = model.generate(torch.from_numpy(prompts).long(), attention_mask=torch.ones(prompts.shape, dtype=torch.long),
                               max_new_tokens=GENERATE_NEW_TOKENS, do_sample=False)
  return dict(tokens=tokens, logits=logits.numpy().astype(np.float32), generate_prompts=prompts,
              generated=generated.numpy().astype(np.int32))


def save(model, expected: dict, directory: str) -> None:
  model.save_pretrained(directory, safe_serialization=True)
  np.savez_compressed(os.path.join(directory, "expected.npz"), **expected)


def check_export(directory: str, expected: dict, model_class) -> None:
  """from_hf -> to_hf -> transformers must give the expected outputs again (at the trained size and at
  the resampled size, where transformers reads the resampled table without interpolating)."""
  with tempfile.TemporaryDirectory() as tmp:
    pretrained.to_hf(pretrained.from_hf(directory), tmp)
    reloaded = model_class.from_pretrained(tmp).eval()
    with torch.no_grad():
      if "logits" in expected:
        got = reloaded(input_ids=torch.from_numpy(expected["tokens"]).long()).logits.numpy()
        np.testing.assert_allclose(got, expected["logits"], atol=1e-4)
        return
      got = features(reloaded.get_image_features(pixel_values=nchw(normalise(expected["pixels"]))))
      np.testing.assert_allclose(got, expected["image_features"], atol=1e-4)
      got = features(reloaded.get_text_features(input_ids=torch.from_numpy(expected["tokens"]).long()))
      np.testing.assert_allclose(got, expected["text_features"], atol=1e-4)
  with tempfile.TemporaryDirectory() as tmp:
    pretrained.to_hf(pretrained.from_hf(directory, image_size=RESAMPLED_IMAGE), tmp)
    reloaded = model_class.from_pretrained(tmp).eval()
    with torch.no_grad():
      got = features(reloaded.get_image_features(pixel_values=nchw(normalise(expected["resampled_pixels"]))))
    np.testing.assert_allclose(got, expected["resampled_image_features"], atol=1e-4)


LLAVA_IMAGE, LLAVA_PATCH = 32, 8  # shapes' 32 px images: a 4x4 grid, 16 image tokens


def llava_vision_model() -> transformers.CLIPVisionModel:
  """A 3-layer CLIP vision tower (3, so that hidden_states[-2] is neither the first nor the last block)."""
  return transformers.CLIPVisionModel(transformers.CLIPVisionConfig(
      **dict(TINY_TOWER, num_hidden_layers=3), image_size=LLAVA_IMAGE, patch_size=LLAVA_PATCH))


def llava_llama_model() -> transformers.LlamaForCausalLM:
  """A 2-layer GQA Llama over vlm_jax's byte vocabulary (259 ids: pad 0, BOS 1, EOS 2, bytes)."""
  return transformers.LlamaForCausalLM(llama_config(
      vocab_size=vlm_jax_tokenizer.ByteTokenizer.vocab_size, bos_token_id=vlm_jax_tokenizer.BOS_ID,
      eos_token_id=vlm_jax_tokenizer.EOS_ID, pad_token_id=vlm_jax_tokenizer.PAD_ID))


def vision_expected(model, rng) -> dict:
  """Every hidden state (HF's hidden_states: embeddings, then each block's output) of random images."""
  pixels = rng.integers(0, 256, (2, LLAVA_IMAGE, LLAVA_IMAGE, 3), dtype=np.uint8)
  with torch.no_grad():
    out = model(pixel_values=nchw(normalise(pixels)), output_hidden_states=True)
  return dict(pixels=pixels, hidden_states=np.stack([h.numpy() for h in out.hidden_states]).astype(np.float32))


def save_llava_extras(directory: str, kind: str) -> None:
  """The vision tower's preprocessor_config.json ([-1, 1] like vlm_jax's pipeline: mean = std = 0.5), the
  Llama's tokenizer files (vlm_jax's byte tokenizer, checked against the `tokenizers` library)."""
  if kind == "llava_clip_vision":
    transformers.CLIPImageProcessor(size={"shortest_edge": LLAVA_IMAGE},
                                    crop_size={"height": LLAVA_IMAGE, "width": LLAVA_IMAGE},
                                    image_mean=[0.5] * 3, image_std=[0.5] * 3).save_pretrained(directory)
    return
  hf_tokenizer.write(directory, hf_tokenizer.byte_tokenizer_json(), bos="<s>", eos="</s>", pad="<pad>")
  import tokenizers  # noqa: PLC0415  (comes with transformers)
  loaded = tokenizers.Tokenizer.from_file(os.path.join(directory, hf_tokenizer.TOKENIZER))
  text = "a red circle left of a blue square? é ✓ <s></s>"
  ours = vlm_jax_tokenizer.ByteTokenizer()
  want = ours.encode("a red circle left of a blue square? é ✓ ") + [ours.bos_id, ours.eos_id]
  assert loaded.encode(text).ids == want, "tokenizer.json does not encode as vlm_jax's ByteTokenizer"
  assert loaded.decode(want[:-2]) == "a red circle left of a blue square? é ✓ "


def main():
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--out", default=os.path.join(os.path.dirname(__file__), "..", "tests", "fixtures", "hf"))
  parser.add_argument("--only", default="", help="comma-separated kinds to make (default: all)")
  args = parser.parse_args()
  torch.manual_seed(0)
  kinds = {
      # (model, expected-outputs function, class transformers reloads it with)
      "clip": (transformers.CLIPModel(clip_config(eos_token_id=5)),
               lambda m, rng: two_tower_expected(m, rng, eos_id=5, pad_id=1, vocab=64, length=10),
               transformers.CLIPModel),
      "clip_legacy_eos": (transformers.CLIPModel(clip_config(eos_token_id=2)),
                          # Legacy rule: pooled at the largest id, so the EOS here is the largest id.
                          lambda m, rng: two_tower_expected(m, rng, eos_id=63, pad_id=1, vocab=63, length=10),
                          transformers.CLIPModel),
      "siglip": (transformers.SiglipModel(siglip_config()),
                 lambda m, rng: two_tower_expected(m, rng, eos_id=2, pad_id=1, vocab=64, length=12),
                 transformers.SiglipModel),
      "llama_gqa": (transformers.LlamaForCausalLM(llama_config()),
                    lambda m, rng: llama_expected(m, rng, vocab=64), transformers.LlamaForCausalLM),
      "llama_tied": (transformers.LlamaForCausalLM(llama_config(
                         tie_word_embeddings=True, head_dim=12, num_key_value_heads=1,
                         rope_parameters=dict(rope_type="default", rope_theta=500_000.0))),
                     lambda m, rng: llama_expected(m, rng, vocab=64), transformers.LlamaForCausalLM),
      "llava_clip_vision": (llava_vision_model(), vision_expected, None),
      "llava_llama": (llava_llama_model(), lambda m, rng: {}, None),
  }
  total = 0
  only = set(filter(None, args.only.split(",")))
  for seed, (kind, (model, make_expected, model_class)) in enumerate(kinds.items()):
    if only and kind not in only:
      continue
    model.eval()
    randomize(model, seed)
    if getattr(model.config, "tie_word_embeddings", False):
      model.tie_weights()
    expected = make_expected(model, np.random.default_rng(seed))
    directory = os.path.join(args.out, kind)
    save(model, expected, directory)
    if model_class is None:  # LLaVA parts: tests/test_llava_hf.py checks them end to end
      save_llava_extras(directory, kind)
      if not expected:
        os.remove(os.path.join(directory, "expected.npz"))
    else:
      check_export(directory, expected, model_class)
    size = sum(os.path.getsize(os.path.join(directory, f)) for f in os.listdir(directory))
    total += size
    checked = "checked by tests/test_llava_hf.py" if model_class is None else "export reloads"
    print(f"{kind}: {size / 1024:.0f} KiB, {checked} in transformers {transformers.__version__}")
  print(f"total {total / 1024:.0f} KiB")


if __name__ == "__main__":
  main()
