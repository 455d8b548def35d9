"""The user's own data (config.data.name="image_text"): every format prepared with its planted bad records
counted, images of every mode read the right way up, one-line mistakes, multi-turn loss masks, the data order
on any number of processes, and a training run whose workdir alone then predicts."""

import csv
import json
import os
import shutil
import warnings

import ml_collections
import numpy as np
import pytest
from PIL import Image

import image_text_fixtures as fixtures
from vlm_jax import run_config
from vlm_jax.data import image_text, images as images_lib, pipeline, shapes
from vlm_jax.data import tokenizer as tokenizer_lib
from vlm_jax.errors import UserError

FORMATS = ("coco", "csv", "jsonl", "llava", "webdataset")
REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture(scope="module")
def sources(tmp_path_factory):
  root = str(tmp_path_factory.mktemp("own"))
  return root, fixtures.write_sources(root)


def data_config(root, source, **changes) -> ml_collections.ConfigDict:
  config = run_config.base_config()
  config.data.update(name="image_text", image_size=16, max_text_len=16, data_dir=os.path.join(root, "prepared"),
                     canonical_caption_prob=0.0)
  config.data.source.update(source)
  config.data.source.val_fraction = 0.2
  config.data.update(changes)
  return config.data


@pytest.fixture(scope="module")
def prepared(sources):
  """Every format prepared once: {format: (config.data, builder)}."""
  root, written = sources
  return {fmt: (cfg, pipeline.prepare_data(cfg)) for fmt, cfg in
          ((fmt, data_config(root, written[fmt][0])) for fmt in FORMATS)}


@pytest.mark.parametrize("fmt", FORMATS)
def test_every_format_prepares_and_counts_each_planted_bad_record(sources, prepared, fmt):
  _, written = sources
  _, planted, usable = written[fmt]
  config, builder = prepared[fmt]
  report = json.load(open(os.path.join(builder.directory, image_text.REPORT)))
  assert report["skipped"] == planted and report["examples"] == usable
  assert sum(report["splits"].values()) == usable and min(report["splits"].values()) >= 1
  lines = open(os.path.join(builder.directory, image_text.SKIPPED)).read().splitlines()
  assert sorted(line.split("\t")[1] for line in lines) == sorted(r for r, n in planted.items() for _ in range(n))
  task = "vqa" if fmt == "llava" else "contrastive_caption"
  batch = next(pipeline.train_iterator(config, tokenizer_lib.load_for_config(config), batch_size=4, seed=0, task=task))
  assert batch["image"].shape == (4, 16, 16, 3) and -1 <= batch["image"].min() and batch["image"].max() <= 1
  split = pipeline.load_split(config, "validation")
  assert len(split["image"]) == report["splits"]["validation"] == len(split["references"])


def test_sources_mix_by_weight(sources, prepared):
  root, written = sources
  config = data_config(root, {})
  config.sources = ml_collections.ConfigDict({
      "labelled": {**written["csv"][0], "label_key": "label", "val_fraction": 0.2, "weight": 3.0},
      "plain": {**written["jsonl"][0], "val_fraction": 0.2, "weight": 1.0}})
  builder = pipeline.prepare_data(config)
  planted = written["jsonl"][1]
  assert builder.report["examples"] == 2 * fixtures.GOOD
  assert builder.report["skipped"] == {k: n + written["csv"][1].get(k, 0) for k, n in planted.items()}
  train = builder.open("train")
  labelled = [bool(train[i]["label"]) for i in range(16)]
  assert sum(labelled) == 12  # 3 : 1
  validation = pipeline.load_split(config, "validation")
  assert len(validation["image"]) == sum(r["splits"]["validation"] for r in builder.report["sources"].values())
  batch = next(pipeline.train_iterator(config, tokenizer_lib.load_for_config(config), batch_size=8, seed=0,
                                       task="contrastive_caption"))
  assert batch["image"].shape == (8, 16, 16, 3)


def test_mixed_sources_are_named_by_the_config_argument_and_set_field_by_field_on_the_command_line(sources):
  """configs/image_text_clip.py:labelled,plain makes config.data.sources.{labelled,plain} with every source field,
  so each is a --config.data.sources.NAME.FIELD flag (weight too); a source left unset is named in one line."""
  from absl import flags
  from ml_collections import config_flags
  from vlm_jax.data import datasets
  _, written = sources
  csv_source, jsonl_source = written["csv"][0], written["jsonl"][0]

  def parse(*overrides, names="labelled,plain"):
    argv = ["train", "--config", os.path.join(REPO, "configs", "image_text_clip.py") + f":{names}", *overrides]
    flag_values = flags.FlagValues()
    config_flags.DEFINE_config_file("config", None, "", flag_values=flag_values, sys_argv=argv)
    with warnings.catch_warnings():  # ml_collections loads the file with importlib's deprecated load_module()
      warnings.simplefilter("ignore", DeprecationWarning)
      flag_values(argv)
    return flag_values.config

  config = parse(*[f"--config.data.sources.labelled.{k}={v}" for k, v in csv_source.items()],
                 "--config.data.sources.labelled.label_key=label", "--config.data.sources.labelled.weight=3",
                 *[f"--config.data.sources.plain.{k}={v}" for k, v in jsonl_source.items()],
                 "--config.data.sources.plain.val_fraction=0.2")
  parts = {name: (part.source.to_dict(), weight) for name, part, weight in datasets.ImageTextBuilder(config.data).parts}
  defaults = image_text.source_defaults()
  assert parts == {"labelled": ({**defaults, **csv_source, "label_key": "label"}, 3.0),
                   "plain": ({**defaults, **jsonl_source, "val_fraction": 0.2}, 1.0)}
  datasets.ImageTextBuilder(config.data).check_config()
  # A single named source is the same data as config.data.source set to it.
  alone = parse(*[f"--config.data.sources.labelled.{k}={v}" for k, v in csv_source.items()], names="labelled")
  single = parse(*[f"--config.data.source.{k}={v}" for k, v in csv_source.items()], names="")
  assert datasets.ImageTextBuilder(alone.data).directory == datasets.ImageTextBuilder(single.data).directory
  with pytest.raises(UserError, match=r"^no data source: pass --config\.data\.sources\.plain\.annotations=PATH"):
    datasets.ImageTextBuilder(parse(*[f"--config.data.sources.labelled.{k}={v}" for k, v in csv_source.items()],
                                    "--config.data.sources.plain.format=jsonl").data).check_config()


def test_the_own_data_configs_zero_shot_is_off_until_switched_on():
  from vlm_jax.evaluators import specs
  for name in ("image_text_clip", "image_text_coca"):
    config = run_config.load_config(os.path.join(REPO, "configs", f"{name}.py"))
    assert "zero_shot" not in [spec["name"] for spec in specs.eval_specs(config)], name
    config.evals.zero_shot.type = "zero_shot"
    assert {"type": "zero_shot", "every": 0} in [{k: spec[k] for k in ("type", "every")}
                                                 for spec in specs.eval_specs(config)], name


def test_images_of_every_mode_are_rgb_and_the_right_way_up(sources):
  root, _ = sources
  folder = os.path.join(root, "images")
  reference = np.asarray(Image.open(os.path.join(folder, "g0.png")).convert("RGB"))
  for index in range(fixtures.GOOD):
    name = next(n for n in os.listdir(folder) if n.startswith(f"g{index}."))
    assert images_lib.open_rgb(os.path.join(folder, name)).mode == "RGB", name
  # 16-bit greyscale v * 257 (scene 6, 32 px) comes back as v exactly: (v * 257) / 65535 * 255 = v.
  sixteen = np.asarray(images_lib.open_rgb(os.path.join(folder, "g6.png")))
  np.testing.assert_array_equal(sixteen[..., 0], np.asarray(shapes.make_example(0, "train", 6)["image"].convert("L")))
  grey = np.asarray(Image.open(os.path.join(folder, "g2.png")))
  np.testing.assert_array_equal(np.asarray(images_lib.open_rgb(os.path.join(folder, "g2.png")))[..., 2], grey)
  # An opaque RGBA image is its RGB; a 48 x 32 JPEG with EXIF orientation 6 is displayed 32 wide, 48 high.
  np.testing.assert_array_equal(np.asarray(images_lib.open_rgb(os.path.join(folder, "g4.png"))),
                                np.asarray(Image.open(os.path.join(folder, "g4.png")).convert("RGB")))
  assert images_lib.open_rgb(os.path.join(folder, "g7.jpg")).size == (32, 48)
  assert reference.shape == (40, 48, 3)
  # Eval crop: shorter side to S, the centre; the random crop stays inside and is a function of the rng.
  image = images_lib.open_rgb(os.path.join(folder, "g9.png"))
  assert images_lib.eval_crop(image, 16).shape == (16, 16, 3)
  crops = [images_lib.random_resized_crop(image, 16, np.random.default_rng(s)) for s in (0, 0, 1)]
  np.testing.assert_array_equal(crops[0], crops[1])
  assert not np.array_equal(crops[0], crops[2])
  with pytest.raises(images_lib.BadImage, match="30000 x 30000") as error:
    images_lib.open_rgb(os.path.join(folder, "bomb.png"))
  assert error.value.reason == "oversized_image"


def test_a_source_is_prepared_again_only_when_it_changes(sources, tmp_path, capsys):
  root, written = sources
  annotations = tmp_path / "data.csv"
  shutil.copy(written["csv"][0]["annotations"], annotations)
  config = data_config(str(tmp_path), {**written["csv"][0], "annotations": str(annotations)})
  first = pipeline.prepare_data(config).directory
  assert "preparing" in capsys.readouterr().out
  assert pipeline.prepare_data(config).directory == first and "preparing" not in capsys.readouterr().out
  with open(annotations, "a") as f:
    f.write("g1.jpg,one more caption,x\n")
  second = pipeline.prepare_data(config)
  assert second.directory != first and "preparing" in capsys.readouterr().out
  assert second.report["examples"] == fixtures.GOOD + 1


def test_source_mistakes_are_one_line_user_errors(sources, tmp_path):
  root, written = sources
  csv_source = written["csv"][0]
  bad_only = tmp_path / "bad.csv"
  bad_only.write_text("filepath,title\nmissing.png,a cat\ngarbage.png,a dog\n")
  misnamed = tmp_path / "misnamed.jsonl"
  misnamed.write_text(json.dumps({"img": "g0.png", "caption": "a cat"}) + "\n")
  cases = [({**csv_source, "annotations": str(tmp_path / "nope.csv")}, "annotations file not found"),
           ({**csv_source, "caption_key": "caption"}, "no column 'caption'"),
           ({**csv_source, "annotations": str(bad_only)}, "no usable training record"),
           ({**csv_source, "format": "jsonl", "annotations": str(misnamed)}, "no key 'image'")]
  for source, message in cases:
    with pytest.raises(UserError, match=message) as error:
      pipeline.prepare_data(data_config(str(tmp_path), source))
    assert "\n" not in str(error.value)
  config = run_config.load_config(os.path.join(REPO, "configs", "image_text_clip.py"))
  with pytest.raises(UserError, match="--config.data.source.annotations=PATH"):
    run_config.validate(config)


def test_conversations_put_the_loss_on_every_assistant_turn_only():
  tok = tokenizer_lib.ByteTokenizer()
  turns = [("human", "q1"), ("gpt", "a1"), ("human", "q22"), ("gpt", "a2")]
  features = pipeline._conversation_features({"image": None, "conversations": turns}, tok, 24)
  text, mask = features["text"], features["answer_mask"]
  assert features["prefix_len"] == 1 + 2  # BOS + the first question: seen with the image
  eos = tok.eos_id
  expected = [tok.bos_id, *tok.encode("q1"), *tok.encode("a1"), eos, *tok.encode("q22"), *tok.encode("a2"), eos]
  np.testing.assert_array_equal(text[:len(expected)], expected)
  assert not text[len(expected):].any()
  np.testing.assert_array_equal(mask[:len(expected)], [0, 0, 0, 1, 1, 1, 0, 0, 0, 1, 1, 1])
  assert not mask[len(expected):].any()
  # The single-question batches' mask is the loss's default rule written out: after the prompt, not padding.
  single = pipeline._vqa_features({"image": None, "captions": ["a red circle"]}, np.random.default_rng(0), tok, 24, 0.0)
  positions = np.arange(24)
  np.testing.assert_array_equal(single["answer_mask"], (positions >= single["prefix_len"]) & (single["text"] != 0))


def test_the_data_order_does_not_depend_on_the_process_count(data_dir):
  """Two processes see the rows of the one-process batches, halves each, random choices included."""
  config = ml_collections.ConfigDict(dict(name="shapes", builder_config="tiny", data_dir=data_dir,
                                          tokenizer="sentencepiece", max_text_len=16, canonical_caption_prob=0.4))
  tok = tokenizer_lib.load_for_config(config)
  make = lambda index, count: pipeline.train_iterator(config, tok, batch_size=16, seed=3, task="contrastive_caption",
                                                      process_index=index, process_count=count)
  single, parts = make(0, 1), [make(i, 2) for i in range(2)]
  for _ in range(3):  # 48 of the 256 examples
    whole = next(single)
    halves = [next(p) for p in parts]
    for key in whole:
      np.testing.assert_array_equal(whole[key], np.concatenate([h[key] for h in halves]))
  order = pipeline.global_indices(256, 3, 16, 20)
  for count in (2, 4):
    np.testing.assert_array_equal(
        order, np.concatenate([pipeline.global_indices(256, 3, 16, 20, i, count) for i in range(count)], axis=1))


def test_a_checkpointed_data_position_resumes_on_another_process_count(data_dir, tmp_path, monkeypatch):
  """Iterator states saved (grain's checkpoint files) by 2 processes after 3 global batches resume on 1 process
  at the 4th global batch of an uninterrupted run, and 1 process's after 4 resume on 2 at the 5th; a state
  from before positions were global (a one-process run's plain grain state) resumes exactly as before."""
  import grain
  from etils import epath
  from vlm_jax import checkpointing
  config = ml_collections.ConfigDict(dict(name="shapes", builder_config="tiny", data_dir=data_dir,
                                          tokenizer="sentencepiece", max_text_len=16, canonical_caption_prob=0.4))
  tok = tokenizer_lib.load_for_config(config)
  make = lambda index, count: pipeline.train_iterator(config, tok, batch_size=16, seed=3, task="contrastive_caption",
                                                      process_index=index, process_count=count)
  straight = make(0, 1)
  expected = [next(straight) for _ in range(5)]
  handler = grain.checkpoint.CheckpointHandler()
  handler_module = __import__(type(handler).__module__, fromlist=["sharding"])

  def save(iterators, folder):
    """What each process's grain handler writes into a checkpoint's data/ folder."""
    folder.mkdir()
    for index, iterator in enumerate(iterators):
      monkeypatch.setattr(handler_module.sharding, "get_process_index_and_count", lambda: (index, len(iterators)))
      handler.save(epath.Path(folder), args=grain.checkpoint.CheckpointSave(iterator))
    return checkpointing.read_data_states(str(folder))

  def assert_global_batch(halves, whole):
    for key in whole:
      np.testing.assert_array_equal(np.concatenate([h[key] for h in halves]), whole[key])

  parts = [make(i, 2) for i in range(2)]
  for _ in range(3):
    [next(p) for p in parts]
  states = save(parts, tmp_path / "two")
  assert sorted(states) == [(0, 2), (1, 2)] and {s["global_position"] for s in states.values()} == {48}
  single = make(0, 1)
  single.restore(states)
  assert_global_batch([next(single)], expected[3])

  one = make(0, 1)
  for _ in range(4):
    next(one)
  states = save([one], tmp_path / "one")
  assert states[0, 1]["grain"] == {"next_index": 64}  # grain's own state, which one-process runs used to save
  parts = [make(i, 2) for i in range(2)]
  for part in parts:
    part.restore(states)
  assert_global_batch([next(p) for p in parts], expected[4])

  legacy = make(0, 1)
  legacy.restore({(0, 1): {"next_index": 48}})
  assert_global_batch([next(legacy)], expected[3])


def test_predict_refuses_a_decompression_bomb_header_in_one_line(sources, tmp_path, capsys):
  from vlm_jax import predict
  root, _ = sources
  workdir = tmp_path / "w"
  workdir.mkdir()
  config = run_config.base_config()
  config.model.name = "coca"
  (workdir / "config.json").write_text(config.to_json())
  assert predict.main(["--workdir", str(workdir), "--image", os.path.join(root, "images", "bomb.png")]) == 1
  err = capsys.readouterr().err.strip().splitlines()
  assert len(err) == 1 and "30000 x 30000" in err[0] and "config.data.max_image_pixels" in err[0], err


def test_retrieval_counts_every_caption_of_an_image():
  from vlm_jax.evaluators import retrieval
  # Image i is axis i; texts 0, 1 are image 0's, texts 2, 3 image 1's, text 4 image 2's. Each text points at
  # its image except text 3, which points nearer image 2: every image still finds one of its texts first
  # (image 2: text 4 at 1.0 before text 3 at 0.9), and 4 of the 5 texts find their image.
  images = np.eye(3)
  texts = np.array([[1, 0, 0], [1, 0, 0], [0, 1, 0], [0, 0.2, 0.9], [0, 0, 1]], float)
  owners = [0, 0, 1, 1, 2]
  metrics = retrieval.retrieval_metrics(images, texts, ["a", "b", "c", "d", "e"], ks=(1,), text_images=owners)
  assert metrics["img2txt_recall@1"] == 1.0 and metrics["txt2img_recall@1"] == pytest.approx(4 / 5)
  # Chance: image 0 owns 2 of 5 texts, images 1 and 2 one or two; a text has 1 owner in 3 images.
  assert metrics["chance/img2txt_recall@1"] == pytest.approx((2 / 5 + 2 / 5 + 1 / 5) / 3)
  assert metrics["chance/txt2img_recall@1"] == pytest.approx(1 / 3)


def test_train_on_own_data_then_the_workdir_alone_predicts(sources, tmp_path):
  from vlm_jax import inference, trainer
  root, written = sources
  config = run_config.load_config(os.path.join(REPO, "configs", "image_text_clip.py"))
  config.data.update(image_size=16, max_text_len=16, data_dir=str(tmp_path / "prepared"))
  config.data.source.update(written["csv"][0], label_key="label")
  config.data.class_names = shapes.SHAPES  # the label column names the leftmost shape
  config.model.vision.update(patch_size=8, width=16, depth=1, num_heads=2, mlp_dim=32)
  config.model.text.update(width=16, depth=1, num_heads=2, mlp_dim=32)
  config.model.update(embed_dim=16, scan=False)
  config.update(batch_size=8, total_steps=2, log_every_steps=1, checkpoint_every_steps=2)
  config.eval.batch_size = 8
  config.evals.zero_shot.type = "zero_shot"  # the config's entry, off until switched on (README, "Your own data")
  workdir = str(tmp_path / "run")
  scores = trainer.train_and_evaluate(config, workdir)
  for key in ("img2txt_recall@1", "txt2img_recall@1", "zero_shot/top1"):
    assert 0 <= scores[key] <= 1 and f"chance/{key}" in scores, key
  shutil.rmtree(tmp_path / "prepared")
  folder = tmp_path / "photos"
  folder.mkdir()
  readable = sorted(n for n in os.listdir(os.path.join(root, "images")) if n[:2] in {f"g{i}" for i in range(10)})
  for name in readable:
    shutil.copy(os.path.join(root, "images", name), folder / name)
  rows = list(inference.predict(workdir, str(folder), labels=list(shapes.SHAPES)))
  assert [os.path.basename(r["image"]) for r in rows] == readable  # every mode and size, name order
  assert all(r["label"] in shapes.SHAPES for r in rows)
  assert not (tmp_path / "prepared").exists()


def _tokenizer_json(folder, texts, specials):
  """A word-level tokenizer.json trained by the `tokenizers` package on texts, `specials` its first ids."""
  import tokenizers
  from tokenizers import models, pre_tokenizers, trainers
  folder.mkdir()
  tok = tokenizers.Tokenizer(models.WordLevel(unk_token=specials[0]))
  tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
  tok.train_from_iterator(texts, trainers.WordLevelTrainer(special_tokens=specials))
  tok.save(str(folder / "tokenizer.json"))


def test_a_tokenizer_json_gives_its_own_special_ids_to_the_batches_and_the_workdir(sources, prepared, tmp_path):
  """hf:DIR with a tokenizer.json: captions round-trip, BOS/EOS/pad are the tokenizer's ids (not 1/2/0) in the
  batches, the workdir's copy gives the same ids once DIR is gone; special tokens named by tokenizer_config.json,
  pad falling back to EOS, and a missing EOS named in one line."""
  _, written = sources
  with open(written["csv"][0]["annotations"]) as f:
    captions = [row["title"] for row in csv.DictReader(f) if row["title"].strip()]
  lm = tmp_path / "lm"
  _tokenizer_json(lm, captions, ["<unk>", "</s>", "<pad>", "<s>"])
  config = ml_collections.ConfigDict(prepared["csv"][0].to_dict())
  config.update(tokenizer=f"hf:{lm}", max_text_len=32)  # longer than any caption: none is cut
  tok = tokenizer_lib.load_for_config(config)
  assert (tok.bos_id, tok.eos_id, tok.pad_id) == (3, 1, 2)
  for caption in captions:
    assert tok.decode(tok.encode(caption)) == caption and 0 not in tok.encode(caption)  # 0: <unk>
  batch = next(pipeline.train_iterator(config, tok, batch_size=8, seed=0, task="contrastive_caption"))
  for text in batch["text"]:
    end = list(text).index(tok.eos_id)
    assert text[0] == tok.bos_id and tok.decode(text) in captions and (text[end + 1:] == tok.pad_id).all()
  workdir = tmp_path / "w"
  workdir.mkdir()
  tokenizer_lib.save_to_workdir(tok, str(workdir))
  shutil.rmtree(lm)
  copy = tokenizer_lib.load_for_workdir(str(workdir), config)  # what predict and evaluate load
  assert (copy.bos_id, copy.eos_id, copy.pad_id) == (3, 1, 2) and copy.encode(captions[0]) == tok.encode(captions[0])

  named = tmp_path / "named"
  _tokenizer_json(named, captions, ["[UNK]", "[START]", "[END]"])
  (named / "tokenizer_config.json").write_text(json.dumps({"bos_token": "[START]", "eos_token": {"content": "[END]"}}))
  named_tok = tokenizer_lib.load_existing(f"hf:{named}")
  assert (named_tok.bos_id, named_tok.eos_id, named_tok.pad_id) == (1, 2, 2)
  no_eos = tmp_path / "no_eos"
  _tokenizer_json(no_eos, captions, ["<unk>", "<s>"])
  with pytest.raises(UserError, match="has no EOS token") as error:
    tokenizer_lib.load_existing(f"hf:{no_eos}")
  assert "\n" not in str(error.value)


def test_an_existing_tokenizer_is_used_and_the_workdir_keeps_a_copy(tmp_path):
  lm = tmp_path / "lm"
  lm.mkdir()
  tokenizer_lib.train_sentencepiece(["a red circle", "a blue square"], str(lm / "tokenizer"))
  config = run_config.base_config().data
  config.update(name="image_text", tokenizer=f"hf:{lm}")
  tok = tokenizer_lib.load_for_config(config)
  ids = tok.encode("a red square")
  assert tokenizer_lib.UNK_ID not in ids and (tok.pad_id, tok.bos_id, tok.eos_id) == (0, 1, 2)
  workdir = tmp_path / "w"
  workdir.mkdir()
  tokenizer_lib.save_to_workdir(tok, str(workdir))
  shutil.rmtree(lm)
  assert tokenizer_lib.load_for_workdir(str(workdir), config).encode("a red square") == ids
  with pytest.raises(UserError, match="does not exist"):
    tokenizer_lib.load_for_config(config)
