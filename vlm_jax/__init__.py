"""vlm_jax: vision-language models in JAX/Flax (ViT, CLIP/SigLIP, CoCa, prefix-LM)."""

__version__ = "0.1.0"
