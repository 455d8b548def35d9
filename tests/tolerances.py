"""Tolerances of the float32 comparisons in the tests, each from the sizes involved, not from one machine.

Two float32 computations of the same math that differ only in summation order (a scan vs a loop, a KV
cache vs recomputation, GQA vs MHA with repeated heads, XLA vs torch kernels) differ, per dot product of
n terms, by about sqrt(n) * eps32 * sum|terms| (rounding errors add like a random walk; the worst case,
n * eps32 * sum|terms|, is not reached by independent roundings). eps32 = 2**-24 ~ 6e-8 (round to nearest).

The test models are tiny: widths <= 64, MLPs <= 256, <= 4 layers. After a layer norm an activation is of
size ~1 and a weight of size ~1/sqrt(n) for a dot product of n <= 256 terms, so each term is ~1/sqrt(n)
and sum|terms| ~ sqrt(n): the reordering error is ~sqrt(n) * eps32 * sqrt(n) = n * eps32 <= 1.5e-5 in the
widest layer. Norms keep sizes ~1 from layer to layer, so a few layers stay in that range. Hence:
"""

# Same-math comparisons of activations and logits of the tiny test models (scan vs loop, cached decoding
# vs the full forward, GQA vs MHA, a shifted RoPE window): n * eps32 ~ 1.5e-5 per layer, above.
SAME_MATH_ATOL = 5e-5

# Sums of up to L = 16 log-probabilities, each a log-softmax over V <= 64 logits of size ~1 computed by two
# programs (cached vs recomputed): each term errs by ~ V * eps32 * |logit| ~ 4e-6, so the sum by
# ~ L * 4e-6 = 6e-5 worst case.
LOG_LIKELIHOOD_ATOL = 1e-4

# Exact invariances (a masked future token, padding after EOS, an unattended CLS row): the compared
# positions run the same operations on the same values in the same program, so they agree bit for bit in
# practice; a masked-out logit contributes exp(finfo.min - max) = 0 exactly. Any leak through a mask
# changes them at O(1/width) ~ 1e-2, so this margin cannot hide one.
INVARIANCE_ATOL = 1e-6

# HF parity (vlm_jax vs transformers on the committed tiny CLIP/SigLIP/Llama fixtures, both float32, on
# different kernels: XLA vs torch): the same-math bound above, over the fixtures' depth of 2-4 layers and
# widths <= 64, gives ~5e-5; 1e-4 is the documented parity promise (README).
HF_PARITY_ATOL = 1e-4

# Training losses of the same run on other meshes or process counts (other summation orders), a few steps in:
# the first loss differs by the same-math bound (~1e-5); each Adam step moves the parameters by ~lr per
# weight in a direction that reordering changes by a relative ~1e-5, so after 4 steps at lr 2e-3 the
# losses stay within ~1e-5 + 4 * 2e-3 * 1e-5 * O(width); 1e-4 leaves a margin, and batches drawn in another
# order (the bug this guards against) change the loss at O(0.1).
LOSS_AFTER_STEPS_ATOL = 1e-4
