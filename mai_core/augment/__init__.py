"""Augmentation lab: ONE augmentation registry, policies, and perceptual scoring of augmentations.

* ``AUGMENTATIONS`` -- registry of batched, seeded augmentations (``AugSpec`` with parameter specs).
* ``Policy`` / ``save_policy`` / ``load_policy`` / ``list_policies`` -- YAML policies
  (``policies/<name>.yaml``); built-ins ``none``, ``flips_rot90`` (training default), ``he_safe``.
* ``build_batch_augment(policy, seed)`` -> ``BatchAugment``: what training applies to each batch.
* ``PerceptualScorer`` / ``score_augmentations`` -- LPIPS and DINO distances (labelled offline
  substitutes on EfficientNet-Lite0 when their weights are not available locally).
* ``select_policy(scores, max_lpips, max_dino, name)`` -- a policy of the augmentations under thresholds.
"""

from mai_core.augment.ops import (  # noqa: F401
    AUGMENTATIONS, AugSpec, ParamSpec, apply_aug, as_float_batch, get_spec, hed_to_rgb, parse_aug_names, rgb_to_hed,
)
from mai_core.augment.policy import (  # noqa: F401
    BUILTIN_POLICIES, DEFAULT_POLICY, Policy, PolicyItem, kept_mask, list_policies, load_policy, policy_from_dict,
    policy_table, save_policy, select_policy,
)
from mai_core.augment.batch import BatchAugment, build_batch_augment  # noqa: F401
from mai_core.augment.scoring import (  # noqa: F401
    DINO_FALLBACK, DINO_REAL, LPIPS_FALLBACK, LPIPS_REAL, PerceptualScorer, ScoreReport, alexnet_weights_path,
    augment_images, dino_weights_path, preview_pairs, sample_indices, score_augmentations, score_dataset,
)
