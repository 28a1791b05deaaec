"""The backbone registry: timm feature extractors, explicit weight resolution, THE feature cache.

* ``BACKBONES`` / ``get_spec(name)`` / ``list_backbones()`` — the registry (any other timm name passes through);
* ``create_backbone(name, weights="auto")`` → ``(model, WeightsInfo)``, weights resolved in a recorded order;
* ``FeatureExtractor`` / ``extract_features(name, images)`` — normalisation inside, on-disk feature cache;
* ``resolve_module`` / ``tokens_to_map`` / ``gradcam_target`` — sub-modules and token maps.

Importing this package is cheap (no torch / timm at import time).
"""

from mai_core._lazy import attach

__getattr__, __dir__, __all__ = attach(__name__, {
    "registry": ("DEFAULT_BACKBONE", "IMAGENET_MEAN", "IMAGENET_STD", "WEIGHT_CHOICES", "RandomWeightsWarning",
                 "OfflinePackage", "BackboneSpec", "BACKBONES", "list_backbones", "get_spec", "gradcam_target"),
    "weights": ("WeightsInfo", "weights_cache_path", "read_state_dict", "load_weights_into", "plan_weights",
                "create_backbone"),
    "layers": ("resolve_module", "tokens_to_map"),
    "features": ("FeatureExtractor", "create_feature_extractor", "features_cache_file", "extract_features",
                 "read_cached_features"),
})
