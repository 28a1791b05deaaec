"""Augmentation lab: ONE augmentation registry, policies, and perceptual scoring of augmentations.

``ops`` (``AUGMENTATIONS``: batched, seeded augmentations), ``policy`` (YAML policies in ``policies/``;
built-ins ``none``, ``flips_rot90``, ``he_safe``; ``select_policy`` under thresholds), ``batch``
(``build_batch_augment``: what training applies to each batch), ``scoring`` (LPIPS and DINO distances,
with labelled offline substitutes when their weights are not available locally).
"""

from mai_core._lazy import attach

__getattr__, __dir__, __all__ = attach(__name__, {
    "ops": ("AUGMENTATIONS", "AugSpec", "ParamSpec", "apply_aug", "as_float_batch", "get_spec", "hed_to_rgb",
            "parse_aug_names", "rgb_to_hed"),
    "policy": ("BUILTIN_POLICIES", "DEFAULT_POLICY", "Policy", "PolicyItem", "kept_mask", "list_policies",
               "load_policy", "policy_from_dict", "policy_table", "save_policy", "select_policy"),
    "batch": ("BatchAugment", "build_batch_augment"),
    "aligned": ("DEFAULT_MAX_HUE", "DEFAULT_THRESHOLDS", "default_thresholds", "hue_rotation"),
    "scoring": ("DINO_FALLBACK", "DINO_REAL", "LPIPS_FALLBACK", "LPIPS_REAL", "PerceptualScorer", "ScoreReport",
                "alexnet_weights_path", "augment_images", "dino_weights_path", "preview_pairs", "sample_indices",
                "score_augmentations", "score_dataset"),
})
