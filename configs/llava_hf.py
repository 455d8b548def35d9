"""LLaVA-1.5 from pretrained Hugging Face parts: a CLIP or SigLIP vision tower, a Llama, a projector between.

    python -m vlm_jax.train --config configs/llava_hf.py:vision=DIR,lm=DIR,stage=1 --workdir runs/llava_s1 \
        --config.data.source.annotations=blip_laion_cc_sbu_558k.json --config.data.source.images=images/
    python -m vlm_jax.train --config configs/llava_hf.py:vision=DIR,lm=DIR,stage=2,stage1=runs/llava_s1 \
        --workdir runs/llava_s2 --config.data.source.annotations=llava_v1_5_mix665k.json ...
    python -m vlm_jax.predict --workdir runs/llava_s2 --image photo.jpg --prompt "What is in the picture?"
    python -m vlm_jax.export --workdir runs/llava_s2 --out llava_hf/   # LlavaForConditionalGeneration

vision: a CLIPModel / CLIPVisionModel / SiglipModel / SiglipVisionModel directory (config.json, safetensors,
preprocessor_config.json), e.g. openai/clip-vit-large-patch14-336; lm: a LlamaForCausalLM directory with its
tokenizer (tokenizer.json), e.g. lmsys/vicuna-7b-v1.5. The model is set from their configs
(vlm_jax.hf_configs.set_llava_model): the tower's features of its penultimate block, CLS dropped, a 2-layer
GELU MLP projector, the Llama attending image and prompt causally, as transformers' Llava computes it.
Stage 1 (feature alignment, captions) trains the projector only; stage 2 (instruction tuning) the projector and
the Llama, starting from stage 1's latest checkpoint. The vision tower stays frozen in both, as in LLaVA-1.5.
Hyper-parameters are LLaVA-1.5's (batch 256 / 128, lr 1e-3 / 2e-5, cosine, 3% warmup, one epoch).

Optional: mesh=gpu8 (one host of 8 GPUs) or mesh=v5p-N (a TPU v5p slice, Cloud's name: N / 2 chips): the mesh,
logical axis rules, remat and gradient accumulation of that hardware; experiments/README.md ("LLaVA from
pretrained parts at real size") has the memory per device they need, computed by scripts/llava_memory.py.
"""

from vlm_jax import hf_configs
from vlm_jax.errors import UserError
from vlm_jax.run_config import DEFAULT_RULES, base_config

ARGS = ("vision", "lm", "stage", "stage1", "mesh")
STAGES = {  # stage -> (frozen parameters, batch size, learning rate, examples in LLaVA-1.5's data)
    "1": (("vision/.*", "decoder/.*"), 256, 1e-3, 558_128),
    "2": (("vision/.*",), 128, 2e-5, 665_298),
}


def parse_arg(arg) -> dict:
  """"k=v,k=v" (big_vision style) -> {k: v}; UserError naming an unknown or missing key."""
  values = {}
  for item in filter(None, (arg or "").split(",")):
    key, sep, value = item.partition("=")
    if not sep or key not in ARGS:
      raise UserError(f"configs/llava_hf.py: argument {item!r} is not one of {', '.join(a + '=...' for a in ARGS)}")
    values[key] = value
  for key in ("vision", "lm", "stage"):
    if key not in values:
      raise UserError(f"configs/llava_hf.py needs {key}=...: e.g. --config configs/llava_hf.py:vision=DIR,lm=DIR,"
                      "stage=1 (stage 2 also stage1=WORKDIR)")
  if values["stage"] not in STAGES:
    raise UserError(f"configs/llava_hf.py: stage={values['stage']!r} is not 1 or 2")
  if values["stage"] == "2" and not values.get("stage1"):
    raise UserError("configs/llava_hf.py: stage=2 needs stage1=WORKDIR (the stage-1 run to start from)")
  return values


def mesh_for(config, hardware: str) -> None:
  """The mesh and rules of one 8-GPU host ("gpu8") or a TPU v5p slice ("v5p-N": Cloud's name, N TensorCores =
  N / 2 chips, each one JAX device), and the micro-batches that fit (scripts/llava_memory.py)."""
  if hardware == "gpu8":
    # 8B float32 params + Adam's moments + grads (16 B/param in stage 2) do not fit one 80 GB GPU: FSDP over all 8
    # shards them; the batch is split over the same 8 devices (sharding.batch_sharding uses data x fsdp).
    config.mesh.data, config.mesh.fsdp, config.mesh.tensor = 1, 8, 1
    micro_examples = 4  # per device (stage 2): the [b, 32 heads, 2048, 2048] attention scores of a block dominate
  elif hardware.startswith("v5p-") and hardware[len("v5p-"):].isdigit() and int(hardware[len("v5p-"):]) % 32 == 0:
    # 95 GB HBM per chip: FSDP over 16 chips holds the whole state in ~8 GB per chip; data parallel over the rest.
    config.mesh.data, config.mesh.fsdp, config.mesh.tensor = -1, 16, 1
    micro_examples = 4
  else:
    raise UserError(f"configs/llava_hf.py: mesh={hardware!r} is not gpu8 or v5p-N (N a multiple of 32: 16+ chips)")
  rules = dict(DEFAULT_RULES)
  rules["embed"] = "fsdp"
  config.sharding.logical_axis_rules = list(rules.items())
  config.model.remat = "full"  # activations: each block's input kept, one block recomputed at a time
  devices = 8 if hardware == "gpu8" else int(hardware[len("v5p-"):]) // 2
  if config.data.max_text_len <= 128:  # stage 1: 857-token sequences, 4x more examples fit
    micro_examples *= 4
  config.grad_accum_steps = max(1, config.batch_size // devices // micro_examples)


def get_config(arg=None):
  args = parse_arg(arg)
  config = base_config()
  hf_configs.set_llava_model(config, args["vision"], args["lm"])
  config.model.dtype = "bfloat16"
  config.model.scan = True

  config.data.name = "image_text"
  config.data.source.format = "llava"
  config.data.tokenizer = "hf:" + args["lm"]
  config.loss.contrastive = ""
  config.loss.caption_weight = 1.0

  frozen, batch, learning_rate, examples = STAGES[args["stage"]]
  config.freeze = frozen
  config.batch_size = batch
  config.total_steps = -(-examples // batch)  # one epoch
  config.optimizer.learning_rate = learning_rate
  config.optimizer.warmup_steps = int(0.03 * config.total_steps)
  config.optimizer.weight_decay = 0.0
  config.optimizer.b2 = 0.999
  if args["stage"] == "1":
    # Captions are short: the text is padded to max_text_len, so stage 1 keeps it at 128 tokens (LLaVA pads each
    # batch to its longest; vlm_jax's shapes are static). Stage 2's conversations use the LM's context.
    config.data.max_text_len = min(config.data.max_text_len, 128)
    config.init_from = (("vision", "hf:" + args["vision"], "vision"), ("decoder", "hf:" + args["lm"], ""))
  else:
    config.init_from = (("", args["stage1"], ""),)
  config.eval_every_steps = 10 ** 9  # evaluators on own data come with the data (config.evals)
  config.checkpoint_every_steps = 1000
  config.log_every_steps = 10
  if args.get("mesh"):
    mesh_for(config, args["mesh"])
  return config
