"""HF checkpoint import/export: parity with transformers' outputs, resampled positions, round trips, errors.

The fixtures (tests/fixtures/hf/<kind>/) are tiny random transformers models with the outputs transformers
computed on fixed inputs, made by scripts/make_hf_fixtures.py. No torch or transformers here.
"""

import json
import os
import shutil
import struct

import ml_dtypes
import numpy as np
import pytest
import safetensors.numpy
from flax import traverse_util

from vlm_jax import pretrained
from vlm_jax.errors import UserError
from vlm_jax.pretrained import checkpoint_io
from vlm_jax.pretrained.resample import bicubic_matrix, resample_posemb
from tolerances import HF_PARITY_ATOL, SAME_MATH_ATOL  # tests/ is on sys.path under pytest

FIXTURES = os.path.join(os.path.dirname(__file__), "fixtures", "hf")
TWO_TOWERS = ("clip", "clip_legacy_eos", "siglip")
LANGUAGE_MODELS = ("llama_gqa", "llama_tied")
ORIGINAL_IMAGE, RESAMPLED_IMAGE = 48, 60
ATOL = HF_PARITY_ATOL  # tests/tolerances.py: the bound and why


def fixture(kind: str) -> str:
  return os.path.join(FIXTURES, kind)


def expected(kind: str) -> dict:
  with np.load(os.path.join(fixture(kind), "expected.npz")) as data:
    return dict(data)


def normalise(pixels: np.ndarray) -> np.ndarray:
  """The fixture script's uint8 -> float32 [-1, 1] mapping, op for op."""
  return pixels.astype(np.float32) / np.float32(127.5) - np.float32(1.0)


@pytest.fixture(scope="module")
def loaded():
  """from_hf of every fixture, loaded once per module (each load jit-compiles on first use)."""
  return {kind: pretrained.from_hf(fixture(kind)) for kind in TWO_TOWERS + LANGUAGE_MODELS}


def max_error(got, want) -> float:
  return float(np.max(np.abs(np.asarray(got) - want)))


@pytest.mark.parametrize("kind", TWO_TOWERS)
def test_image_features_match_transformers(kind, loaded):
  data = expected(kind)
  got = loaded[kind].encode_image(normalise(data["pixels"]))
  assert got.shape == data["image_features"].shape
  assert max_error(got, data["image_features"]) < ATOL


@pytest.mark.parametrize("kind", TWO_TOWERS)
def test_text_features_match_transformers_with_padding_after_eos(kind, loaded):
  data = expected(kind)
  assert np.any(data["tokens"][:, -1] != data["tokens"][0, -1]), "some rows must end in padding, not EOS"
  got = loaded[kind].encode_text(data["tokens"])
  assert got.shape == data["text_features"].shape
  assert max_error(got, data["text_features"]) < ATOL


@pytest.mark.parametrize("kind", LANGUAGE_MODELS)
def test_llama_logits_match_transformers(kind, loaded):
  data = expected(kind)
  got = loaded[kind].logits(data["tokens"])
  assert got.shape == data["logits"].shape
  assert max_error(got, data["logits"]) < ATOL


@pytest.mark.parametrize("kind", LANGUAGE_MODELS)
def test_llama_generate_writes_the_tokens_of_transformers_greedy_generate(kind, loaded):
  """Pretrained.generate (the one decoder, key/value cache, scanned blocks) against transformers'
  generate(do_sample=False) on the same prompts: every token equal."""
  data = expected(kind)
  new = data["generated"].shape[1] - data["generate_prompts"].shape[1]
  got = loaded[kind].generate(data["generate_prompts"], max_new_tokens=new)
  np.testing.assert_array_equal(got, data["generated"])


def test_llama_loop_and_scanned_layouts_import_the_same_model():
  scanned, loop = pretrained.from_hf(fixture("llama_gqa")), pretrained.from_hf(fixture("llama_gqa"), scan=False)
  assert "blocks" in scanned.params["params"]["transformer"] and "block_01" in loop.params["params"]["transformer"]
  tokens = expected("llama_gqa")["tokens"]
  np.testing.assert_allclose(scanned.logits(tokens), loop.logits(tokens), atol=SAME_MATH_ATOL)


def test_llama_fixtures_use_grouped_query_attention(loaded):
  """Guards the coverage claim: both Llama fixtures have fewer key/value heads than query heads."""
  for kind in LANGUAGE_MODELS:
    module = loaded[kind].module
    assert module.num_kv_heads < module.num_heads


@pytest.mark.parametrize("kind", ("clip", "siglip"))
def test_resampled_tower_matches_transformers_interpolation(kind):
  """Loaded at 60 px (5x5 patches instead of 4x4), the tower computes what transformers computes with
  interpolate_pos_encoding=True at 60 px, and keeps CLIP's CLS position row unchanged."""
  data = expected(kind)
  model = pretrained.from_hf(fixture(kind), image_size=RESAMPLED_IMAGE)
  table = np.asarray(model.params["params"]["vision"]["pos_embedding"])
  original = np.asarray(pretrained.from_hf(fixture(kind)).params["params"]["vision"]["pos_embedding"])
  prefix = 1 if kind == "clip" else 0
  assert table.shape == (prefix + 25, original.shape[1])
  np.testing.assert_array_equal(table[:prefix], original[:prefix])
  got = model.encode_image(normalise(data["resampled_pixels"]))
  assert got.shape == data["resampled_image_features"].shape
  assert max_error(got, data["resampled_image_features"]) < ATOL


@pytest.mark.parametrize("kind", ("clip", "siglip"))
def test_resampling_to_the_original_size_changes_nothing(kind, loaded):
  model = pretrained.from_hf(fixture(kind), image_size=ORIGINAL_IMAGE)
  np.testing.assert_allclose(model.params["params"]["vision"]["pos_embedding"],
                             loaded[kind].params["params"]["vision"]["pos_embedding"], atol=1e-6)
  images = normalise(expected(kind)["pixels"])
  np.testing.assert_allclose(model.encode_image(images), loaded[kind].encode_image(images), atol=SAME_MATH_ATOL)


def test_bicubic_matrix_is_identity_at_same_size_and_preserves_constants():
  np.testing.assert_allclose(bicubic_matrix(4, 4), np.eye(4), atol=1e-12)
  # Rows sum to one: a constant table stays constant whatever the new grid.
  table = np.full((1 + 9, 2), 3.0)
  np.testing.assert_allclose(resample_posemb(table, 3, 7, num_prefix=1), 3.0, rtol=1e-6)


@pytest.mark.parametrize("kind", TWO_TOWERS + LANGUAGE_MODELS)
def test_export_writes_the_imported_tensors_back_and_reimports_equal(kind, loaded, tmp_path):
  pretrained.to_hf(loaded[kind], str(tmp_path))
  original = checkpoint_io.read_tensors(fixture(kind))
  written = safetensors.numpy.load_file(str(tmp_path / "model.safetensors"))
  assert set(written) == {n for n in original if not n.endswith(checkpoint_io.TensorSource.IGNORED_SUFFIXES)}
  for name, value in written.items():
    np.testing.assert_array_equal(value, original[name], err_msg=name)
  again = pretrained.from_hf(str(tmp_path))
  flat_a = traverse_util.flatten_dict(loaded[kind].params)
  flat_b = traverse_util.flatten_dict(again.params)
  assert flat_a.keys() == flat_b.keys()
  for key in flat_a:
    np.testing.assert_array_equal(flat_a[key], flat_b[key], err_msg="/".join(key))


def test_export_of_a_resampled_tower_records_the_new_image_size(tmp_path):
  model = pretrained.from_hf(fixture("clip"), image_size=RESAMPLED_IMAGE)
  pretrained.to_hf(model, str(tmp_path))
  with open(tmp_path / "config.json") as f:
    assert json.load(f)["vision_config"]["image_size"] == RESAMPLED_IMAGE
  again = pretrained.from_hf(str(tmp_path))
  assert again.image_size == RESAMPLED_IMAGE
  np.testing.assert_array_equal(again.params["params"]["vision"]["pos_embedding"],
                                model.params["params"]["vision"]["pos_embedding"])


def test_export_refuses_a_parameter_hf_cannot_hold(loaded, tmp_path):
  """CLIP's projections have no bias; a nonzero one (e.g. after training here) cannot be exported."""
  model = loaded["clip"]
  params = traverse_util.flatten_dict(model.params)
  params[("params", "text_projection", "bias")] = params[("params", "text_projection", "bias")] + 1.0
  changed = pretrained.Pretrained(model.architecture, model.module, traverse_util.unflatten_dict(params),
                                  model.config, model.image_size)
  with pytest.raises(UserError, match="text_projection/bias"):
    pretrained.to_hf(changed, str(tmp_path))


def copy_fixture(kind, tmp_path):
  directory = tmp_path / kind
  shutil.copytree(fixture(kind), directory)
  return directory


def test_unsupported_architecture_is_named(tmp_path):
  directory = copy_fixture("clip", tmp_path)
  config = json.loads((directory / "config.json").read_text())
  config.update(architectures=["BertModel"], model_type="bert")
  (directory / "config.json").write_text(json.dumps(config))
  with pytest.raises(UserError, match="BertModel"):
    pretrained.from_hf(str(directory))


def test_missing_tensors_are_named(tmp_path):
  directory = copy_fixture("siglip", tmp_path)
  tensors = safetensors.numpy.load_file(str(directory / "model.safetensors"))
  del tensors["vision_model.head.probe"], tensors["text_model.head.bias"]
  safetensors.numpy.save_file(tensors, str(directory / "model.safetensors"))
  with pytest.raises(UserError, match="vision_model.head.probe.*text_model.head.bias"):
    pretrained.from_hf(str(directory))


def test_unsupported_rope_scaling_is_refused(tmp_path):
  directory = copy_fixture("llama_gqa", tmp_path)
  config = json.loads((directory / "config.json").read_text())
  config["rope_parameters"] = dict(rope_type="llama3", rope_theta=10_000.0, factor=8.0)
  (directory / "config.json").write_text(json.dumps(config))
  with pytest.raises(UserError, match="llama3"):
    pretrained.from_hf(str(directory))


def test_wrong_image_size_is_refused(loaded):
  with pytest.raises(UserError, match="image_size"):
    loaded["clip"].encode_image(np.zeros((1, RESAMPLED_IMAGE, RESAMPLED_IMAGE, 3), np.float32))
  with pytest.raises(UserError, match="multiple of the patch size"):
    pretrained.from_hf(fixture("clip"), image_size=50)


def test_bfloat16_checkpoints_are_read_as_float32(tmp_path):
  """The safetensors numpy API rejects bfloat16; the fallback decoder must give the same numbers."""
  values = np.array([[1.5, -2.0, 0.015625]], np.float32)
  data = values.astype(ml_dtypes.bfloat16).tobytes()
  header = json.dumps({"w": {"dtype": "BF16", "shape": [1, 3], "data_offsets": [0, len(data)]}}).encode()
  (tmp_path / "model.safetensors").write_bytes(struct.pack("<Q", len(header)) + header + data)
  tensors = checkpoint_io.read_tensors(str(tmp_path))
  assert tensors["w"].dtype == np.float32
  np.testing.assert_array_equal(tensors["w"], values)


# ------------------------------------------------------------------------------------------ LLaVA from HF parts
# The end-to-end run (init_from hf:, two stages, export, transformers) is tests/test_llava_hf.py; these need
# no torch.

LLAVA_VISION, LLAVA_LM = fixture("llava_clip_vision"), fixture("llava_llama")
REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def llava_config(**text):
  """configs/llava_hf.py's model on the LLaVA fixtures (vlm_jax.hf_configs.set_llava_model)."""
  from vlm_jax import hf_configs, run_config
  config = run_config.base_config()
  hf_configs.set_llava_model(config, LLAVA_VISION, LLAVA_LM)
  config.model.text.update(text)
  config.data.max_text_len = 8
  return config


def test_vision_layer_minus_2_is_transformers_hidden_states_minus_2():
  """LLaVA's vision_feature_layer=-2: the penultimate block's output (not the last block's), CLS dropped, read
  through PrefixLM.image_tokens with an identity linear projector; vs the CLIPVisionModel fixture's outputs."""
  import jax
  from vlm_jax.models import prefix_lm, projector, towers
  config = llava_config()
  assert config.model.vision_layer == -2 and config.model.vision.depth == 3
  vit = towers.build_vit(config.model.vision, np.float32)
  width = config.model.vision.width
  model = prefix_lm.PrefixLM(vision=vit, projector=projector.Projector(width, "linear"), decoder=None, vision_layer=-2)
  params = {"vision": pretrained.read_params(LLAVA_VISION)[2]["vision"],
            "projector": {"linear": {"kernel": np.eye(width, dtype=np.float32), "bias": np.zeros(width, np.float32)}}}
  data = expected("llava_clip_vision")
  tokens = jax.jit(lambda p, x: model.apply({"params": p}, x, method="image_tokens"))(params, normalise(data["pixels"]))
  assert max_error(tokens, data["hidden_states"][-2][:, 1:]) < ATOL
  assert max_error(tokens, data["hidden_states"][-1][:, 1:]) > 100 * ATOL  # the last block would be another layer


def test_init_from_hf_names_a_parameter_whose_shape_differs():
  import jax
  from vlm_jax import models, trainer
  config = llava_config(mlp_dim=48)  # the fixture Llama's MLP is 64 wide
  model = models.build_model(config.model, vocab_size=259, max_len=8, eos_id=2, pad_id=0)
  batch = models.sample_batch(models.get("prefix_lm").FEATURES, 1, config.data.image_size, 8)
  params = meta_unbox(jax.eval_shape(lambda: model.init(jax.random.key(0), batch))["params"])
  params = jax.tree.map(lambda x: np.zeros(x.shape, x.dtype), params)
  shardings = jax.tree.map(lambda _: jax.sharding.SingleDeviceSharding(jax.devices()[0]), params)
  with pytest.raises(UserError, match=r"^config.init_from: decoder/transformer/blocks/mlp/down/kernel has shape "
                                      r"\(2, 48, 32\) here but \(2, 64, 32\) in LlamaForCausalLM .*llava_llama$"):
    trainer.initialize_from(params, shardings, (("decoder", "hf:" + LLAVA_LM, ""),), config.data.image_size)


def meta_unbox(tree):
  from flax.core import meta
  return meta.unbox(tree)


def write_workdir(tmp_path, config) -> str:
  workdir = tmp_path / "workdir"
  workdir.mkdir()
  (workdir / "config.json").write_text(config.to_json())
  return str(workdir)


def test_export_refuses_what_transformers_cannot_represent_in_one_line(tmp_path, capsys):
  """A sin-cos ViT with mean pooling (configs/shapes_clip.py): every reason named on one line, nothing written,
  before any checkpoint is read."""
  from vlm_jax import export, run_config
  config = run_config.load_config(os.path.join(REPO, "configs", "shapes_clip.py"))
  config.data.tokenizer = "byte"
  out = str(tmp_path / "hf")
  assert export.main(["--workdir", write_workdir(tmp_path, config), "--out", out]) == 1
  err = capsys.readouterr().err
  assert err.count("\n") == 1 and err.startswith("vlm_jax.export: error: transformers cannot represent")
  assert "posemb='sincos2d'" in err and "pool='gap'" in err
  assert not os.path.exists(out)


def test_export_refuses_a_model_without_a_transformers_class(tmp_path):
  from vlm_jax import run_config
  from vlm_jax.pretrained import export
  config = run_config.load_config(os.path.join(REPO, "configs", "shapes_coca.py"))
  with pytest.raises(UserError, match="cannot represent model coca"):
    export.export_workdir(write_workdir(tmp_path, config), str(tmp_path / "hf"))


def test_llava_hf_config_arguments_are_checked_in_one_line():
  from vlm_jax import run_config
  path = os.path.join(REPO, "configs", "llava_hf.py")
  with pytest.raises(UserError, match="stage=2 needs stage1=WORKDIR"):
    run_config.load_config(f"{path}:vision={LLAVA_VISION},lm={LLAVA_LM},stage=2")
  with pytest.raises(UserError, match="argument 'size=3' is not one of"):
    run_config.load_config(f"{path}:vision={LLAVA_VISION},lm={LLAVA_LM},stage=1,size=3")
