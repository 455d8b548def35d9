"""Writes the notebooks in colabs/ (without outputs) from the cells below.

    python scripts/build_notebooks.py

Edit the cells here, not the .ipynb files, then run this script; tests/test_notebooks.py executes the
result in fast mode (VLM_JAX_FAST=1).
"""

import os

import nbformat
from nbformat import v4

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

INSTALL = r'''# Setup. In Colab: clone vlm_jax and install its pinned requirements. Locally: use this checkout.
import os
import sys

REPO_URL = "https://github.com/YOUR_ORG/vlm_jax"  # <- set to where your copy of vlm_jax is hosted

if "google.colab" in sys.modules:
  !git clone --depth 1 {REPO_URL} /content/vlm_jax
  !pip install -q -r /content/vlm_jax/requirements.txt
  REPO = "/content/vlm_jax"
else:
  REPO = os.path.abspath(os.getcwd())
  while not os.path.exists(os.path.join(REPO, "configs", "shapes_clip.py")):
    if os.path.dirname(REPO) == REPO:
      raise RuntimeError("run this notebook from inside the vlm_jax repository (or in Colab)")
    REPO = os.path.dirname(REPO)
sys.path.insert(0, REPO)  # import vlm_jax and read configs/ from the checkout, installed or not
print("vlm_jax from", REPO)'''

COMMON = r'''import json
import tempfile
import time

import jax
import jax.numpy as jnp
import matplotlib.pyplot as plt
import numpy as np

from vlm_jax import inference, models, run_config, trainer
from vlm_jax.data import pipeline, shapes

# VLM_JAX_FAST=1: the "tiny" data variant, narrow models and a few steps (what the tests run). The
# pictures then show the mechanics, not a trained model's quality: run without it for that.
FAST = os.environ.get("VLM_JAX_FAST", "0") == "1"
DATA_DIR = os.path.expanduser(os.environ.get("VLM_JAX_DATA_DIR", "~/.cache/vlm_jax/datasets"))
WORKDIR = tempfile.mkdtemp(prefix="vlm_jax_nb_")  # every training run of this notebook goes under here


def load_config(name):
  """configs/<name>.py's get_config(), as `python -m vlm_jax.train --config` would load it."""
  return run_config.load_config(os.path.join(REPO, "configs", f"{name}.py"))


def notebook_config(name, steps, fast_steps):
  """A config from configs/, sized for this notebook (and much smaller in fast mode)."""
  config = load_config(name)
  config.data.data_dir = DATA_DIR
  config.total_steps = fast_steps if FAST else steps
  config.log_every_steps = max(1, config.total_steps // 10)
  config.eval_every_steps = config.checkpoint_every_steps = config.total_steps  # no periodic eval
  config.eval.extra_splits = ()  # score the test split only
  if FAST:
    config.data.builder_config = "tiny"
    config.batch_size = 32
    config.model.vision.update(width=32, depth=1, num_heads=2, mlp_dim=64)
    config.model.text.update(width=32, depth=1, num_heads=2, mlp_dim=64)
    config.model.multimodal.depth = 1
    config.model.embed_dim = 32
    config.optimizer.update(learning_rate=3e-3, warmup_steps=5)
    config.eval.batch_size = 64
  return config


def read_metrics(workdir):
  with open(os.path.join(workdir, "metrics.jsonl")) as f:
    return [json.loads(line) for line in f]


def show(image, ax, title=None):
  """An image in [-1, 1] (as the models see it) on a matplotlib axis."""
  ax.imshow(np.clip((np.asarray(image) + 1) / 2, 0, 1), interpolation="nearest")
  ax.set_xticks([]), ax.set_yticks([])
  if title:
    ax.set_title(title, fontsize=8)


print(f"jax {jax.__version__} on {jax.devices()}; fast mode: {FAST}; data in {DATA_DIR}; runs in {WORKDIR}")'''


def md(text):
  return v4.new_markdown_cell(text.strip())


def code(text):
  return v4.new_code_cell(text.strip())


# ============================================================================ 1. how a VLM sees

HOW_A_VLM_SEES = [
    md(r'''
# How a VLM sees: from an image to tokens

A vision-language model never sees pixels as an image. Its vision tower, a **Vision Transformer (ViT)**,
turns the image into a short sequence of vectors ("image tokens"), and everything downstream — a
contrastive loss, a captioning decoder, a language model — only ever reads those vectors.

This notebook follows one image through `vlm_jax/models/vit.py`, step by step:

1. cut into a grid of patches, 2. each patch flattened into a vector, 3. linearly projected to the model
width, 4. given a 2D sin-cos position, 5. optionally joined by a CLS token, and then, inside a ViT that we
train here as the image tower of a small CLIP, 6. how the patch embeddings change layer by layer, and
7. where the last layer attends.

Runs on a CPU. Set `VLM_JAX_FAST=1` for a tiny, seconds-long version (what the tests run).
'''),
    code(INSTALL),
    code(COMMON),
    md(r'''
## The image

The data is the project's procedural "shapes" dataset: coloured shapes on a dark background, each scene
with captions, questions and hard negatives, generated locally (nothing is downloaded).
`shapes.make_example(seed, split, index)` is a pure function, so one example can be drawn without
preparing the dataset. Models take `float32[B, H, W, 3]` in [-1, 1] (`pipeline.image_to_float`).
'''),
    code(r'''
IMAGE_SIZE, PATCH = 32, 4  # the shapes configs: 32 x 32 pixels, 4 x 4 patches
example = shapes.make_example(seed=0, split="test", index=7, image_size=IMAGE_SIZE)
image = pipeline.image_to_float(np.asarray(example["image"]))  # float32[32, 32, 3] in [-1, 1]
fig, ax = plt.subplots(figsize=(3, 3))
show(image, ax, example["caption"])
print(image.shape, image.dtype, image.min(), image.max())'''),
    md(r'''
## 1. The patch grid

A transformer takes a *set* of vectors, and attention costs grow with the square of their number. One
vector per pixel would be 1024 tokens for this tiny image (50 176 at 224 px); one vector per `p x p`
patch gives `(H/p) * (W/p)` tokens: here (32/4)² = 64. The patch size trades detail against sequence
length: halve it and the model sees finer structure at four times the tokens (16 times the attention
cost).
'''),
    code(r'''
grid = IMAGE_SIZE // PATCH
fig, ax = plt.subplots(figsize=(3.5, 3.5))
show(image, ax, f"{grid} x {grid} = {grid * grid} patches of {PATCH} x {PATCH} pixels")
for k in range(1, grid):
  ax.axhline(k * PATCH - 0.5, color="white", lw=0.6)
  ax.axvline(k * PATCH - 0.5, color="white", lw=0.6)
for index in (0, 1, grid, grid * grid - 1):  # patches are numbered row-major
  ax.text((index % grid) * PATCH + 0.3, (index // grid) * PATCH + 2, str(index), color="yellow", fontsize=7)'''),
    md(r'''
## 2. Flattening a patch

`patchify` reshapes `[B, H, W, 3]` into `[B, N, p·p·3]`: patches in row-major order, and inside a patch
the pixels in (row, column, channel) order. Nothing is learned yet; it is a reshape. The pixel values are
already *normalised*: `image_to_float` maps bytes 0…255 affinely to [-1, 1], so inputs are centred and of
unit scale, what the initialisation of the next layer assumes (CLIP instead subtracts a per-channel mean
and divides by a per-channel standard deviation; the purpose is the same).
'''),
    code(r'''
from vlm_jax.models import vit

patches = vit.patchify(jnp.asarray(image)[None], PATCH)[0]  # float32[64, 48]
print("patches:", patches.shape, "=", grid * grid, "tokens of", PATCH, "x", PATCH, "x 3 =", PATCH * PATCH * 3, "numbers")
row, col = 3, 4
index = row * grid + col
by_hand = image[row * PATCH:(row + 1) * PATCH, col * PATCH:(col + 1) * PATCH].reshape(-1)
assert np.allclose(patches[index], by_hand)  # the same numbers, read in (row, col, channel) order

fig, axes = plt.subplots(1, 2, figsize=(9, 2.2), gridspec_kw={"width_ratios": [1, 5]})
show(patches[index].reshape(PATCH, PATCH, 3), axes[0], f"patch {index}")
axes[1].bar(np.arange(patches.shape[1]), patches[index], color=["r", "g", "b"] * (PATCH * PATCH))
axes[1].set_title(f"patch {index} flattened: {patches.shape[1]} values (r, g, b, r, g, b, ...)", fontsize=9)
axes[1].set_ylim(-1.05, 1.05)
plt.tight_layout()'''),
    md(r'''
## 3. The linear projection

One weight matrix `W: [p·p·3, D]` (and a bias) maps every flattened patch to the model width `D`, the same
matrix for every patch. That is exactly a convolution with a `p x p` kernel and stride `p` — the "conv
stem" of the ViT paper — written as a reshape and a matrix product, which ran ~1.7x faster on CPU here.
The check below applies both to the same random weights.
'''),
    code(r'''
D = 96  # the width of configs/shapes_clip.py
kernel = jax.random.normal(jax.random.key(0), (PATCH * PATCH * 3, D)) / np.sqrt(PATCH * PATCH * 3)
tokens = patches @ kernel  # float32[64, D]: one D-vector per patch

conv = jax.lax.conv_general_dilated(
    jnp.asarray(image)[None], kernel.reshape(PATCH, PATCH, 3, D), window_strides=(PATCH, PATCH),
    padding="VALID", dimension_numbers=("NHWC", "HWIO", "NHWC"))  # float32[1, 8, 8, D]
print("matmul tokens", tokens.shape, "| conv output", conv.shape,
      "| max difference", float(jnp.abs(conv.reshape(-1, D) - tokens).max()))'''),
    md(r'''
## 4. 2D sin-cos position embeddings

Attention treats its input as a set: shuffle the patches and every output is shuffled the same way, so
without extra information the model cannot tell top from bottom. A **position embedding** is added to
each token. vlm_jax uses big_vision's fixed 2D sin-cos table (`vit.posemb_sincos_2d`): a quarter of the
channels each hold `sin(x·ω_i)`, `cos(x·ω_i)`, `sin(y·ω_i)`, `cos(y·ω_i)` of the patch's column `x` and
row `y`, with frequencies `ω_i = 1 / 10000^(i / (D/4 − 1))`. Nothing is learned, it works for any grid
size, and the dot product of two embeddings depends only on their offset: nearby patches get similar
vectors, along both axes. (MAE/open_clip use another frequency formula and channel order; the two are not
interchangeable.)
'''),
    code(r'''
table = vit.posemb_sincos_2d(grid, grid, D)  # float32[64, D], row-major like the patches
unit = table / np.linalg.norm(table, axis=1, keepdims=True)
similarity = unit @ unit.T  # cosine similarity of every position with every other

fig, axes = plt.subplots(1, 4, figsize=(12, 3))
axes[0].imshow(table, aspect="auto", cmap="RdBu")
axes[0].set_title("table: position x channel\n[sin x | cos x | sin y | cos y]", fontsize=9)
axes[0].set_xlabel("channel"), axes[0].set_ylabel("position (row-major)")
for ax, (r, c) in zip(axes[1:], [(0, 0), (3, 4), (7, 2)]):
  im = ax.imshow(similarity[r * grid + c].reshape(grid, grid), cmap="viridis", vmin=-0.2, vmax=1)
  ax.plot(c, r, "r*", ms=10)
  ax.set_title(f"similarity of ({r}, {c}) to all", fontsize=9)
  ax.set_xticks([]), ax.set_yticks([])
fig.colorbar(im, ax=axes[1:], shrink=0.8)'''),
    md(r'''
## 5. The CLS token

A classification or contrastive head needs *one* vector per image. Two common answers: average the output
tokens (`pool="gap"`, the shapes configs' default), or prepend a learned **CLS token** — a vector with no
patch and no grid position — whose output after the transformer is the image embedding (`pool="cls"`,
CLIP's choice). Through attention, the CLS token can gather from every patch; its attention row (section 7)
shows which patches it reads. The sequence is then `1 + N` tokens. Below we train the ViT with a CLS token
so we can look at that.

## Training a ViT to look inside

A randomly initialised ViT computes features of no meaning, so we train one: the image tower of a small
CLIP (`configs/shapes_clip.py`, with `cls_token=True, pool="cls"`), trained contrastively to match each
image with its caption. In fast mode it trains for a handful of steps only, so the pictures below show the
mechanics but little structure; run without `VLM_JAX_FAST` (a few minutes) for a real model.
'''),
    code(r'''
config = notebook_config("shapes_clip", steps=600, fast_steps=12)
config.model.vision.update(cls_token=True, pool="cls", depth=max(config.model.vision.depth, 2))
clip_dir = os.path.join(WORKDIR, "clip")
start = time.time()
scores = trainer.train_and_evaluate(config, clip_dir)
print(f"trained in {time.time() - start:.0f} s; test image->text R@1 {scores['img2txt_recall@1']:.2f} "
      f"(chance {scores['chance/img2txt_recall@1']:.2f})")'''),
    code(r'''
from vlm_jax.models.towers import build_vit

clip = inference.restore(clip_dir)  # the config, tokenizer, model and latest parameters of the workdir
step = clip.step
vit_params = clip.params["vision"]  # the ViT's parameters inside the CLIP
vit_model = build_vit(config.model.vision, jnp.float32, scan=config.model.scan)  # the same ViT, standalone
test = pipeline.load_split(config.data, "test")
images = test["image"][:6]
(pooled, out), state = vit_model.apply({"params": vit_params}, images, mutable=["intermediates"])
print(f"restored step {step}; pooled {pooled.shape}; tokens after the last layer {out['encoded'].shape} "
      f"(1 CLS + {grid * grid} patches)")
print("named intermediates:", sorted(out))'''),
    md(r'''
The trained projection `W` is a bank of `D` filters, one per output channel, each a `p x p x 3` image:
the channel's value for a patch is the dot product of the patch with its filter. Trained on colours and
shapes, they become colour and edge detectors (with few steps they are still close to random).
'''),
    code(r'''
filters = np.asarray(vit_params["embedding"]["kernel"]).T.reshape(-1, PATCH, PATCH, 3)[:16]
fig, axes = plt.subplots(1, 16, figsize=(12, 1))
for ax, f in zip(axes, filters):
  ax.imshow((f - f.min()) / (f.max() - f.min() + 1e-8), interpolation="nearest")
  ax.axis("off")
fig.suptitle("the first 16 filters of the trained patch projection", fontsize=9, y=1.15)'''),
    md(r'''
## 6. Patch embeddings, layer by layer

To see what a layer's `D`-dimensional patch vectors encode, project them onto their top 3 principal
components (computed over all patches of these images, separately per layer) and show those as RGB:
patches with similar vectors get similar colours. At the input (projection + position) the colours track
pixel colour plus a smooth position gradient; deeper, patches of one object come to share a colour and
background patches another, because the contrastive loss rewards features that tell what is where.
'''),
    code(r'''
positions = vit.posemb_sincos_2d(grid, grid, config.model.vision.width)
depth = config.model.vision.depth
stages = {"projection": out["stem"], "+ positions": out["stem"] + positions}
stages.update({f"block {i}": out[f"block_{i:02d}"][:, 1:] for i in range(depth)})  # [:, 1:]: drop CLS
stages["final norm"] = out["encoded"][:, 1:]


def pca_rgb(tokens):
  """float[B, N, D] -> float[B, grid, grid, 3]: the top 3 principal components as colours in [0, 1]."""
  x = np.asarray(tokens).reshape(-1, tokens.shape[-1])
  x = x - x.mean(0)
  _, _, vt = np.linalg.svd(x, full_matrices=False)
  y = x @ vt[:3].T
  y = (y - y.min(0)) / (y.max(0) - y.min(0) + 1e-8)
  return y.reshape(tokens.shape[0], grid, grid, 3)


fig, axes = plt.subplots(len(images), len(stages) + 1, figsize=(1.6 * (len(stages) + 1), 1.6 * len(images)))
for r, img in enumerate(images):
  show(img, axes[r, 0], "image" if r == 0 else None)
for c, (name, tokens) in enumerate(stages.items(), start=1):
  colours = pca_rgb(tokens)
  for r in range(len(images)):
    axes[r, c].imshow(colours[r], interpolation="nearest")
    axes[r, c].axis("off")
  axes[0, c].set_title(name, fontsize=8)
plt.tight_layout()'''),
    md(r'''
## 7. Attention maps of the final layer

Each attention layer mixes tokens: query token `q` takes a weighted average of the value vectors of all
tokens, with weights `softmax(q·k / √d)` — one distribution over the `1 + N` tokens per head. The ViT *sows*
these weights (`self.sow("intermediates", "attention_weights", ...)`), so `apply(...,
mutable=["intermediates"])` returns them, `float[B, heads, 1 + N, 1 + N]` per layer. Below: the CLS
token's row in the last layer, over the `N` patches, reshaped to the grid — what the image embedding is
built from.
'''),
    code(r'''
def find(tree, key):
  """The first value stored under `key` in a nested dict (sow keeps a tuple of the values)."""
  if isinstance(tree, dict):
    if key in tree:
      return tree[key]
    for value in tree.values():
      found = find(value, key)
      if found is not None:
        return found
  return None


encoder = state["intermediates"]["encoder"]
if "blocks" in encoder:  # scanned blocks (config.model.scan) sow one array stacked over the layers
  weights = np.asarray(find(encoder["blocks"], "attention_weights")[0])[-1]
else:  # blocks as a loop sow one array per block
  weights = np.asarray(find(encoder[f"block_{depth - 1:02d}"], "attention_weights")[0])
# weights: float[B, heads, 1 + N, 1 + N]
heads = weights.shape[1]
print("attention weights of the last layer:", weights.shape, "| rows sum to", weights[0, 0, 0].sum().round(4))

fig, axes = plt.subplots(len(images), heads + 1, figsize=(1.8 * (heads + 1), 1.8 * len(images)))
for r, img in enumerate(images):
  show(img, axes[r, 0], test["caption"][r] if r < 2 else None)
  for h in range(heads):
    cls_row = weights[r, h, 0, 1:].reshape(grid, grid)  # query: CLS; keys: the patches
    axes[r, h + 1].imshow(np.clip((img + 1) / 2, 0, 1), interpolation="nearest")
    axes[r, h + 1].imshow(np.kron(cls_row, np.ones((PATCH, PATCH))), cmap="inferno", alpha=0.6)
    axes[r, h + 1].axis("off")
    if r == 0:
      axes[r, h + 1].set_title(f"head {h}: CLS -> patches", fontsize=8)
plt.tight_layout()'''),
    md(r'''
## What to take away

- A ViT's input is a set of `N = (H/p)(W/p)` vectors: flattened patches times one shared matrix (a strided
  convolution), plus a position embedding so the set knows its geometry.
- The 2D sin-cos table is fixed; similarity between positions falls off with distance along both axes.
- A CLS token (or mean pooling) turns the token set into one image vector; the language side of a VLM may
  instead read *all* the tokens (`out["encoded"]`, or a chosen block, as LLaVA does with the penultimate
  one — see `llava_two_stage.ipynb`).
- The pictures of sections 6–7 are how one checks what a trained tower attends to; compare them between
  a fast and a full run.
'''),
]

# ============================================================================ 2. CLIP and CoCa

TRAIN_CLIP_AND_CAPTIONER = [
    md(r'''
# Train a CLIP and a captioner (CoCa) on shapes

Two ways to connect images and text:

- **CLIP** (two towers, contrastive): an image encoder and a text encoder map into one embedding space;
  the softmax loss over a batch pulls each image towards its own caption and away from the other `B − 1`.
  It learns what *distinguishes* the captions in a batch, nothing more.
- **CoCa** (contrastive + captioning): the same contrastive loss on a unimodal text half, plus a
  multimodal decoder that cross-attends to the image tokens and must *generate* the caption word by word
  (loss = 2.0 · caption + 1.0 · contrastive, the paper's weights). Generating forces every word — count,
  colour, relation — to be grounded in the image.

We train both on the procedural shapes data, compare their loss curves, retrieve captions, generate
captions, and probe both with **hard negatives**: the true caption against a minimally edited false one.
Set `VLM_JAX_FAST=1` for a seconds-long version (what the tests run).
'''),
    code(INSTALL),
    code(COMMON),
    md(r'''
## The data and its hard negatives

`pipeline.prepare_shapes` writes the dataset (ArrayRecord, via tensorflow-datasets, no TensorFlow) and
trains a SentencePiece tokenizer on its captions, once, under `DATA_DIR`. Every test image carries four
typed hard-negative pairs: **count** ("three objects" vs "two objects"), **binding** (colours swapped
between shapes), **left/right** and **above/below** (a relation reversed). A model scores a pair right if
it prefers the true caption; chance is 0.5.
'''),
    code(r'''
clip_config = notebook_config("shapes_clip", steps=800, fast_steps=10)
pipeline.prepare_shapes(DATA_DIR, clip_config.data.builder_config)
test = pipeline.load_split(clip_config.data, "test")
print(len(test["caption"]), "test examples")

fig, axes = plt.subplots(1, 4, figsize=(12, 3.4))
for i, ax in enumerate(axes):
  show(test["image"][i], ax)
  lines = [test["caption"][i]] + [f"{k}: {test[f'hardneg_{k}_pos'][i]}  ≠  {test[f'hardneg_{k}_neg'][i]}"
                                  for k in shapes.HARDNEG_KINDS if test[f"hardneg_{k}_pos"][i]]
  ax.set_title("\n".join(lines[:3]), fontsize=6)'''),
    md(r'''
## Training

`trainer.train_and_evaluate(config, workdir)` is the whole loop: it builds the model the config names,
trains for `total_steps`, checkpoints, and returns the test split's scores (also in `workdir/eval.json`).
The same call trains both models; only the config differs.
'''),
    code(r'''
coca_config = notebook_config("shapes_coca", steps=800, fast_steps=12)
runs = {"CLIP": (clip_config, os.path.join(WORKDIR, "clip")), "CoCa": (coca_config, os.path.join(WORKDIR, "coca"))}
scores = {}
for name, (config, workdir) in runs.items():
  start = time.time()
  scores[name] = trainer.train_and_evaluate(config, workdir)
  print(f"== {name}: {config.total_steps} steps in {time.time() - start:.0f} s\n")'''),
    md(r'''
## Loss curves

Each run logs one JSON line per `log_every_steps` to `workdir/metrics.jsonl`. The two totals are on
different scales — CoCa's adds twice a per-token caption cross-entropy — so compare their shapes, and
CoCa's contrastive part against CLIP's loss where it is logged.
'''),
    code(r'''
fig, axes = plt.subplots(1, 2, figsize=(10, 3))
for name, (config, workdir) in runs.items():
  lines = [m for m in read_metrics(workdir) if "loss" in m]
  axes[0].plot([m["step"] for m in lines], [m["loss"] for m in lines], "o-", label=name, ms=3)
  for key in sorted(lines[-1]):
    if key.endswith("_loss") or key in ("contrastive", "caption"):
      axes[1].plot([m["step"] for m in lines], [m[key] for m in lines], label=f"{name} {key}")
axes[0].set_title("training loss (total)"), axes[0].set_xlabel("step"), axes[0].legend()
axes[1].set_title("loss terms logged"), axes[1].set_xlabel("step")
if axes[1].lines:
  axes[1].legend(fontsize=7)
print("keys logged:", sorted(k for k in read_metrics(runs["CoCa"][1])[-2] if k != "step"))'''),
    md(r'''
## Retrieval: an image and its top captions

Both models embed images and texts into unit vectors; a caption's score for an image is their dot product.
Below, each test image with the three best-scoring distinct captions of the test split (✓ = its own).
`inference.restore(workdir)` reloads a trained model (config, tokenizer, parameters) from its workdir, and
its model module's `predict_fns` are what the evaluators call: here the two embeddings.
'''),
    code(r'''
from vlm_jax import decoding
from vlm_jax.data import tokenizer as tokenizer_lib

restored = {}
for name, (config, workdir) in runs.items():
  trained = inference.restore(workdir)
  restored[name] = (trained, models.get(config.model.name).predict_fns(trained.model))

captions = sorted(set(test["caption"]))
shown = list(range(5))
fig, axes = plt.subplots(1, len(shown), figsize=(3.2 * len(shown), 3.6))
for ax, i in zip(axes, shown):
  show(test["image"][i], ax)
  lines = [f"true: {test['caption'][i]}"]
  for name, (trained, fns) in restored.items():
    tokens = tokenizer_lib.tokenize_all(trained.tokenizer, captions, trained.config.data.max_text_len)
    text_embedding = np.asarray(fns["encode_text"](trained.params, tokens))
    image_embedding = np.asarray(fns["encode_image"](trained.params, test["image"][i:i + 1]))[0]
    similarity = text_embedding @ image_embedding
    for rank, j in enumerate(np.argsort(-similarity)[:3]):
      mark = "✓" if captions[j] == test["caption"][i] else " "
      lines.append(f"{name} {rank + 1}. {mark} {captions[j]} ({similarity[j]:.2f})")
  ax.set_title("\n".join(lines), fontsize=6, loc="left")
plt.tight_layout()'''),
    md(r'''
## Generated captions (CoCa)

Only CoCa can write. `decoding.make_generate` runs its multimodal decoder with a key/value cache: the
buffer starts with the BOS token, and each step appends the most likely next token (greedy) until EOS.
'''),
    code(r'''
coca, _ = restored["CoCa"]
tok = coca.tokenizer
n, max_len = 8, coca.config.data.max_text_len
buffer = np.full((n, max_len), tok.pad_id, np.int32)
buffer[:, 0] = tok.bos_id
generate = decoding.make_generate(coca.model, decoding.DecodeConfig("greedy", max_steps=max_len - 1),
                                  tok.eos_id, tok.pad_id)
out, _ = generate(coca.params, test["image"][:n], buffer, np.ones((n,), np.int32), jax.random.key(0))
generated = [tok.decode(decoding.generated_ids(row, 1, tok.eos_id, tok.pad_id)) for row in np.asarray(out)]

fig, axes = plt.subplots(1, n, figsize=(2 * n, 2.6))
for i, ax in enumerate(axes):
  show(test["image"][i], ax, f"CoCa: {generated[i]}\ntrue: {test['caption'][i]}")
  ax.title.set_fontsize(6)'''),
    md(r'''
## The hard-negative probe, side by side

Retrieval among *different* scenes can be solved by a bag of words (which colours and shapes appear).
Hard negatives cannot: the false caption has the same words, with a count changed, colours swapped
between shapes, or a relation reversed. Scores near 0.5 mean the model does not encode that property.
On this data, counting and colour binding are learned first; spatial relations need many relation
captions in the training mix and (for CLIP) often stay near chance within minutes of training.
'''),
    code(r'''
keys = [f"hardneg/{k}" for k in shapes.HARDNEG_KINDS] + ["img2txt_recall@1", "txt2img_recall@1",
                                                         "caption_exact_match", "caption_token_accuracy"]
print(f"{'test metric':26s}" + "".join(f"{name:>8s}" for name in scores) + f"{'chance':>8s}")
for key in keys:
  values = [scores[name].get(key) for name in scores]
  chance = next((s[f"chance/{key}"] for s in scores.values() if f"chance/{key}" in s), None)
  print(f"{key:26s}" + "".join(f"{v:8.3f}" if v is not None else f"{'—':>8s}" for v in values)
        + (f"{chance:8.3f}" if chance is not None else f"{'':8s}"))

kinds = shapes.HARDNEG_KINDS
fig, ax = plt.subplots(figsize=(6, 2.8))
for offset, name in zip((-0.2, 0.2), scores):
  ax.bar(np.arange(len(kinds)) + offset, [scores[name][f"hardneg/{k}"] for k in kinds], width=0.4, label=name)
ax.axhline(0.5, color="gray", ls="--", label="chance")
ax.set_xticks(np.arange(len(kinds)), kinds), ax.set_ylim(0, 1), ax.set_ylabel("accuracy"), ax.legend(fontsize=8)
ax.set_title("hard negatives: true caption preferred over a minimal edit", fontsize=9)'''),
    md(r'''
## Where to go from here

- Run without `VLM_JAX_FAST` (a few minutes per model) and compare the table; `experiments/README.md`
  has the numbers of full runs.
- Try `configs/shapes_siglip.py` (the sigmoid loss) in place of CLIP, or raise
  `config.data.canonical_caption_prob` to change which captions the contrastive towers practise on.
- The captioner's decoder is what `llava_two_stage.ipynb` replaces by a whole language model.
'''),
]

# ============================================================================ 3. LLaVA two-stage

LLAVA_TWO_STAGE = [
    md(r'''
# A LLaVA-style VLM in two stages

LLaVA builds a vision-language model from two *pretrained* towers instead of training one from scratch:

    image ─► ViT (from a CLIP) ─► tokens of its penultimate layer ─► projector (2-layer MLP) ─┐
                                                                                            ├─► LM ─► answer
                                        "what colour is the circle?" ─► token embeddings ──┘

The projected image tokens are prepended to the prompt (a *prefix-LM*: full attention over image and
prompt, causal over the answer; loss on the answer only). Training goes in two stages:

1. **Feature alignment** (`configs/llava_stage1.py`): ViT and LM frozen, only the projector trains, on
   captions. Why first: a freshly initialised projector feeds the LM noise; were the LM trainable, its
   gradients would wreck what it knows to make sense of that noise.
2. **Instruction tuning** (`configs/llava_stage2.py`): the projector *and* the LM train on questions and
   answers (plus some captions); the ViT stays frozen.

Here every piece comes from this project: the ViT of a shapes CLIP, a small LM trained on the shapes
captions (`configs/shapes_lm.py`), then the two stages, each starting from the previous workdirs through
`config.init_from`. Set `VLM_JAX_FAST=1` for a seconds-long version (what the tests run).
'''),
    code(INSTALL),
    code(COMMON),
    md(r'''
## The two pretrained towers

The stage-1 config names the parts it loads: `init_from = ((target subtree, workdir, source subtree),
...)`. Shapes must match, so the CLIP's ViT and the LM's decoder have the shapes of the VLM's (the fast
mode's narrow widths are applied to all four configs alike). The LM sees no images: it only learns the
language of the captions.
'''),
    code(r'''
clip_config = notebook_config("shapes_clip", steps=600, fast_steps=10)
lm_config = notebook_config("shapes_lm", steps=400, fast_steps=10)
clip_dir, lm_dir = os.path.join(WORKDIR, "clip"), os.path.join(WORKDIR, "lm")
for name, config, workdir in (("CLIP", clip_config, clip_dir), ("LM", lm_config, lm_dir)):
  config.eval.at_end = False  # only their weights matter here: no final scoring of the test split
  start = time.time()
  trainer.train_and_evaluate(config, workdir)
  print(f"== {name}: {config.total_steps} steps in {time.time() - start:.0f} s\n")'''),
    md(r'''
## Stage 1: train the projector only

`config.freeze` holds regexes over parameter paths; frozen parameters get no gradient and no optimizer
state. `vision_layer = -2` takes the penultimate ViT block's tokens, as LLaVA-1.5 does (the last layer is
specialised to the contrastive objective). We point `init_from` at this notebook's own workdirs.
'''),
    code(r'''
stage1 = notebook_config("llava_stage1", steps=300, fast_steps=10)
stage1.init_from = (("vision", clip_dir, "vision"), ("decoder", lm_dir, "decoder"))
stage1_dir = os.path.join(WORKDIR, "llava_stage1")
print("frozen:", stage1.freeze, "| vision layer:", stage1.model.vision_layer)
scores1 = trainer.train_and_evaluate(stage1, stage1_dir)

from vlm_jax import train_state

run1 = inference.restore(stage1_dir)
mask = train_state.frozen_mask(run1.params, stage1.freeze)
sizes = jax.tree.map(lambda p, frozen: (p.size, frozen), run1.params, mask)
for part in run1.params:
  leaves = jax.tree.leaves(sizes[part], is_leaf=lambda x: isinstance(x, tuple))
  n, frozen = sum(s for s, _ in leaves), all(f for _, f in leaves)
  print(f"  {part:10s} {n:9,d} parameters  {'frozen' if frozen else 'TRAINED'}")'''),
    md(r'''
## Stage 2: instruction tuning

Stage 2 starts from all of stage 1 (`init_from = (("", stage1_dir, ""),)`: the whole parameter tree) and
unfreezes the LM. Its data are mostly questions ("how many objects are there?", "what colour is the
square?", "is the circle left of the triangle?"), with the prompt masked out of the loss.
'''),
    code(r'''
stage2 = notebook_config("llava_stage2", steps=600, fast_steps=10)
stage2.init_from = (("", stage1_dir, ""),)
stage2_dir = os.path.join(WORKDIR, "llava_stage2")
print("frozen:", stage2.freeze)
scores2 = trainer.train_and_evaluate(stage2, stage2_dir)

fig, ax = plt.subplots(figsize=(7, 3))
offset = 0
for name, workdir in (("LM pretraining", lm_dir), ("stage 1", stage1_dir), ("stage 2", stage2_dir)):
  lines = [m for m in read_metrics(workdir) if "loss" in m]
  ax.plot([offset + m["step"] for m in lines], [m["loss"] for m in lines], "o-", ms=3, label=name)
  offset += lines[-1]["step"]
ax.set_xlabel("step (stages one after another)"), ax.set_ylabel("next-token loss"), ax.legend()
ax.set_title("stage 1 learns captions through a frozen LM; stage 2 switches to questions", fontsize=9)'''),
    md(r'''
## Asking questions

The prompt is BOS + the question (`pipeline.make_vqa_prompt`, the same function training used), left
in a fixed-size buffer; `decoding.make_generate` fills in the answer greedily after it, with a key/value
cache. The same compiled function runs the stage-1 and the stage-2 parameters (same model, same shapes):
stage 1 never saw a question, so it tends to answer with a caption.
'''),
    code(r'''
from vlm_jax import decoding

run2 = inference.restore(stage2_dir)
tok, max_len = run2.tokenizer, stage2.data.max_text_len
test = pipeline.load_split(stage2.data, "test")
rows = [(i, q, a) for i in range(6) for q, a in zip(test["questions"][i], test["answers"][i])][:12]
buffer = np.full((len(rows), max_len), tok.pad_id, np.int32)
start = np.zeros((len(rows),), np.int32)
for r, (_, question, _) in enumerate(rows):
  prompt = pipeline.make_vqa_prompt(tok, question, max_len)
  buffer[r, :len(prompt)], start[r] = prompt, len(prompt)
images = test["image"][[i for i, _, _ in rows]]
generate = decoding.make_generate(run2.model, decoding.DecodeConfig("greedy", max_steps=8), tok.eos_id, tok.pad_id)


def answers(params):
  out, _ = generate(params, images, buffer, start, jax.random.key(0))
  return [tok.decode(decoding.generated_ids(row, s, tok.eos_id, tok.pad_id)) for row, s in zip(np.asarray(out), start)]


stage1_answers, stage2_answers = answers(run1.params), answers(run2.params)
print(f"{'question':44s} {'true':10s} {'stage 2':14s} stage 1")
for (i, question, truth), a2, a1 in zip(rows, stage2_answers, stage1_answers):
  print(f"{question:44s} {truth:10s} {a2:14s} {a1}")

shown = sorted(set(i for i, _, _ in rows))[:4]
fig, axes = plt.subplots(1, len(shown), figsize=(3.4 * len(shown), 3.6))
for ax, i in zip(axes, shown):
  lines = [f"Q: {q}\n   model: {a2} | true: {t}" for (j, q, t), a2 in zip(rows, stage2_answers) if j == i]
  show(test["image"][i], ax)
  ax.set_title("\n".join(lines[:3]), fontsize=6, loc="left")
plt.tight_layout()'''),
    md(r'''
## Scores on the test split

`train_and_evaluate` scored each stage on the whole test split: VQA accuracy (exact answer), per question
type, and captioning from the prompt "describe the image.".
'''),
    code(r'''
keys = sorted(k for k in scores2 if not k.startswith("chance/"))
print(f"{'test metric':28s}{'stage 1':>9s}{'stage 2':>9s}{'chance':>9s}")
for key in keys:
  chance = scores2.get(f"chance/{key}")
  print(f"{key:28s}{scores1.get(key, float('nan')):9.3f}{scores2[key]:9.3f}"
        + (f"{chance:9.3f}" if chance is not None else ""))'''),
    md(r'''
## Where to go from here

- Run without `VLM_JAX_FAST` to see stage 2 answer counts and colours well above chance.
- Compare `vision_layer = -1` with `-2`, or `projector.type = "linear"` (LLaVA-1's choice) in stage 1.
- Skip stage 1 (stage 2 straight from the towers) and watch the first steps of the loss.
'''),
]

NOTEBOOKS = {
    "how_a_vlm_sees.ipynb": HOW_A_VLM_SEES,
    "train_clip_and_captioner.ipynb": TRAIN_CLIP_AND_CAPTIONER,
    "llava_two_stage.ipynb": LLAVA_TWO_STAGE,
}


def build(cells) -> nbformat.NotebookNode:
  nb = v4.new_notebook(cells=cells)
  nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
  nb.metadata["language_info"] = {"name": "python"}
  nb.metadata["colab"] = {"provenance": []}
  for i, cell in enumerate(nb.cells):
    cell["id"] = f"cell-{i:02d}"  # stable ids: rebuilding gives the same file
  return nb


def main():
  for name, cells in NOTEBOOKS.items():
    path = os.path.join(REPO, "colabs", name)
    nb = build(cells)
    nbformat.validate(nb)
    with open(path, "w") as f:
      nbformat.write(nb, f)
    print("wrote", path)


if __name__ == "__main__":
  main()
