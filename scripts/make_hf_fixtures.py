"""Build the tiny transformers checkpoints and expected outputs under tests/fixtures/hf/<kind>/.

Needs torch and transformers (requirements-fixtures.txt); the tests that read the fixtures do not.
For each kind it saves config.json + model.safetensors (save_pretrained) and expected.npz holding the
fixed inputs and what transformers returns for them. Then it checks the export path end to end:
vlm_jax's from_hf -> to_hf -> transformers from_pretrained must reproduce the same outputs.

    nice -n 19 /work/venv/bin/python scripts/make_hf_fixtures.py [--out tests/fixtures/hf]
"""

import argparse
import os
import tempfile

import numpy as np
import torch
import transformers

from vlm_jax import pretrained

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


def main():
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--out", default=os.path.join(os.path.dirname(__file__), "..", "tests", "fixtures", "hf"))
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
  }
  total = 0
  for seed, (kind, (model, make_expected, model_class)) in enumerate(kinds.items()):
    model.eval()
    randomize(model, seed)
    if getattr(model.config, "tie_word_embeddings", False):
      model.tie_weights()
    expected = make_expected(model, np.random.default_rng(seed))
    directory = os.path.join(args.out, kind)
    save(model, expected, directory)
    check_export(directory, expected, model_class)
    size = sum(os.path.getsize(os.path.join(directory, f)) for f in os.listdir(directory))
    total += size
    print(f"{kind}: {size / 1024:.0f} KiB, export reloads in transformers {transformers.__version__}")
  print(f"total {total / 1024:.0f} KiB")


if __name__ == "__main__":
  main()
