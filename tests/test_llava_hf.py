"""LLaVA from pretrained parts, end to end against transformers (needs torch and transformers:
requirements-test.txt).

The tiny HF fixtures (tests/fixtures/hf/llava_clip_vision: a CLIPVisionModel, llava_llama: a Llama over vlm_jax's
byte vocabulary with its tokenizer.json; scripts/make_hf_fixtures.py) go through configs/llava_hf.py: stage 1
(init_from hf:, projector trained) then stage 2 (from stage 1, projector and Llama trained), two steps each on
a tiny LLaVA-format set; `python -m vlm_jax.export` writes a LlavaForConditionalGeneration directory; transformers loads it with
AutoProcessor and must compute the same logits (HF_PARITY_ATOL) and greedily generate the same answer as
vlm_jax.predict.
"""

import json
import os

import jax
import numpy as np
import pytest
import torch
import transformers
from PIL import Image

from vlm_jax import checkpointing, export, inference, pretrained, run_config, trainer
from vlm_jax.data import pipeline, shapes
from tolerances import HF_PARITY_ATOL  # tests/ is on sys.path under pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
FIXTURES = os.path.join(REPO, "tests", "fixtures", "hf")
VISION, LM = os.path.join(FIXTURES, "llava_clip_vision"), os.path.join(FIXTURES, "llava_llama")
PROMPT = "what color?"
N_IMAGE = 16  # 32 px images, 8 px patches


def write_llava_data(root) -> dict:
  """A tiny LLaVA-format set: 24 shapes scenes saved as 32 px PNGs, each a one-turn conversation (its first
  question and answer, the "<image>" placeholder first) -> config.data.source fields."""
  images = root / "llava_images"
  images.mkdir()
  records = []
  for index in range(24):
    example = shapes.make_example(0, "train", index)
    example["image"].convert("RGB").save(images / f"{index}.png")
    records.append({"id": str(index), "image": f"{index}.png", "conversations": [
        {"from": "human", "value": "<image>\n" + example["questions"][0]},
        {"from": "gpt", "value": example["answers"][0]}]})
  (root / "llava.json").write_text(json.dumps(records))
  return dict(annotations=str(root / "llava.json"), images=str(images))


def llava_config(dirs: dict, stage: str):
  """configs/llava_hf.py on the fixtures as it is (image_text llava data, the LM's tokenizer.json, the
  normalisation and size of the tower's preprocessor_config.json), made tiny: float32, 2 steps of batch 8, no
  evaluation; the recipe's learning rates, which leave the random fixture Llama writing varied tokens (a higher
  rate collapses it to EOS, and an empty answer would compare nothing)."""
  arg = f"vision={VISION},lm={LM},stage={stage}" + (f",stage1={dirs['stage1']}" if stage == "2" else "")
  config = run_config.load_config(os.path.join(REPO, "configs", "llava_hf.py") + ":" + arg)
  config.data.source.update(dirs["source"])
  config.data.data_dir = dirs["prepared"]
  config.data.max_text_len = 24
  config.model.dtype = "float32"  # scan stays True (the recipe's layout; export reads the stacked blocks)
  config.batch_size, config.total_steps, config.log_every_steps, config.checkpoint_every_steps = 8, 2, 2, 2
  config.eval.update(at_end=False, max_decode_len=8)
  return config


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
  """Stage 1, stage 2 and the export, once for the module."""
  root = tmp_path_factory.mktemp("llava_hf")
  dirs = {"source": write_llava_data(root), "prepared": str(root / "prepared"), "stage1": str(root / "stage1"),
          "stage2": str(root / "stage2"), "out": str(root / "hf")}
  trainer.train_and_evaluate(llava_config(dirs, "1"), dirs["stage1"])
  trainer.train_and_evaluate(llava_config(dirs, "2"), dirs["stage2"])
  assert export.main(["--workdir", dirs["stage2"], "--out", dirs["out"]]) == 0
  rng = np.random.default_rng(0)
  dirs["images"] = []
  os.makedirs(root / "images")
  for i in range(2):
    path = str(root / "images" / f"image{i}.png")
    Image.fromarray(rng.integers(0, 256, (32, 32, 3), dtype=np.uint8)).save(path)
    dirs["images"].append(path)
  return dirs


def test_stage1_trains_only_the_projector_and_stage2_the_llama_too(runs):
  _, stage1 = checkpointing.read_params(runs["stage1"])
  _, stage2 = checkpointing.read_params(runs["stage2"])
  vision = pretrained.read_params(VISION)[2]["vision"]  # scanned, as the runs
  llama = pretrained.read_params(LM)[2]
  same = lambda a, b: jax.tree.all(jax.tree.map(np.array_equal, a, b))
  assert same(stage1["vision"], vision) and same(stage1["decoder"], llama)  # loaded from hf:, then frozen
  assert not same(stage2["projector"], stage1["projector"])
  assert not same(stage2["decoder"], llama) and same(stage2["vision"], vision)


def test_transformers_llava_computes_the_same_logits_and_answers(runs):
  model, info = transformers.LlavaForConditionalGeneration.from_pretrained(runs["out"], output_loading_info=True)
  assert not any(info.values()), info  # every tensor written is one transformers expects, and none is missing
  model.eval()
  processor = transformers.AutoProcessor.from_pretrained(runs["out"])
  messages = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": PROMPT}]}]
  text = processor.apply_chat_template(messages, add_generation_prompt=True)
  restored = inference.restore(runs["stage2"])
  prompt = pipeline.make_vqa_prompt(restored.tokenizer, PROMPT, restored.config.data.max_text_len)
  folder = os.path.dirname(runs["images"][0])
  predicted = {r["image"]: r["answer"] for r in inference.predict(runs["stage2"], folder, PROMPT)}

  for path in runs["images"]:
    inputs = processor(images=Image.open(path), text=text, return_tensors="pt")
    image_id = model.config.image_token_index
    assert inputs["input_ids"][0].tolist() == [image_id] * N_IMAGE + prompt.tolist()  # the chat template's tokens
    pixels = inference.load_image(path, restored.config.data.image_size, restored.config.data.normalization)
    np.testing.assert_allclose(inputs["pixel_values"][0].permute(1, 2, 0).numpy(), pixels, atol=1e-6)

    with torch.no_grad():
      hf_logits = model(**inputs).logits[0, N_IMAGE:].numpy()
    batch = {"image": pixels[None], "text": np.concatenate([prompt, [0]])[None].astype(np.int32),
             "prefix_len": np.asarray([len(prompt)], np.int32)}
    outputs, _ = restored.model.apply({"params": restored.params}, batch)
    vocab = restored.tokenizer.vocab_size
    assert np.max(np.abs(hf_logits[:, :vocab] - np.asarray(outputs["logits"][0]))) < HF_PARITY_ATOL

    generated = model.generate(**inputs, do_sample=False, max_new_tokens=restored.config.eval.max_decode_len)
    answer = processor.tokenizer.decode(generated[0, inputs["input_ids"].shape[1]:], skip_special_tokens=True)
    assert answer and answer == predicted[path]  # non-empty: more than an EOS agreed on


def test_export_refuses_an_existing_folder_in_one_line(runs, capsys):
  assert export.main(["--workdir", runs["stage2"], "--out", runs["out"]]) == 1
  err = capsys.readouterr().err.strip()
  assert err.count("\n") == 0 and "is not empty" in err


def test_a_clip_shaped_two_tower_exports_as_a_clipmodel_transformers_reads(tmp_path):
  """export_two_tower on the CLIP fixture's weights (imported by from_hf) under the run config that describes
  them: transformers' CLIPModel on the export reproduces the fixture's image and text features."""
  from types import SimpleNamespace
  from vlm_jax.pretrained import export as export_lib
  config = run_config.base_config()
  config.model.name, config.model.embed_dim, config.model.logit_scale_init = "two_tower", 24, 2.6592
  config.model.vision.update(patch_size=12, width=32, depth=2, num_heads=4, mlp_dim=64, posemb="learned_with_cls",
                             cls_token=True, pool="cls", activation="quick_gelu", layer_norm_eps=1e-5, pre_norm=True)
  config.model.text.update(width=32, depth=2, num_heads=4, mlp_dim=64, mlp="quick_gelu", norm_eps=1e-5)
  config.data.image_size, config.data.max_text_len = 48, 16
  tokenizer = SimpleNamespace(vocab_size=64, pad_id=1, bos_id=0, eos_id=5)  # the fixture's ids
  params = jax.tree.map(np.asarray, pretrained.from_hf(os.path.join(FIXTURES, "clip")).params["params"])
  written = export_lib.export_two_tower(str(tmp_path), config, lambda: params, tokenizer, str(tmp_path / "hf"))
  assert written.startswith("CLIPModel without a tokenizer")  # vlm_jax's SentencePiece has no transformers form
  model = transformers.CLIPModel.from_pretrained(str(tmp_path / "hf")).eval()
  with np.load(os.path.join(FIXTURES, "clip", "expected.npz")) as data:
    pixels = data["pixels"].astype(np.float32) / np.float32(127.5) - np.float32(1.0)
    with torch.no_grad():
      image = model.get_image_features(pixel_values=torch.from_numpy(pixels).permute(0, 3, 1, 2)).pooler_output
      text = model.get_text_features(input_ids=torch.from_numpy(data["tokens"]).long()).pooler_output
    assert np.max(np.abs(image.numpy() - data["image_features"])) < HF_PARITY_ATOL
    assert np.max(np.abs(text.numpy() - data["text_features"])) < HF_PARITY_ATOL
