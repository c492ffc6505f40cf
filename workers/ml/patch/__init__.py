"""The one-shot safety patch (docs/method.md).

- ``stage``: the pipeline's patch stage (``patch_until_accepted``): rank, screen, patch, verify,
  retry.
- ``selection``: the gradient proxy that ranks the safety pool; ``screening``: short patches that
  order the proxy's top candidates.
- ``example``: the one (harmful prompt → refusal) example and its encoding.
- ``training``: the training loops of one patch (``sft``, ``projection``) and their probe rule.
- ``anchors``: KL terms that keep the patched model close to the aligned and fine-tuned models.
- ``safety_gradient``: the safety gradient, its spectrum (CER(k)) and the top-k update.
"""
