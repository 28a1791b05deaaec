"""The backbone registry: timm feature extractors and pathology encoders, weight resolution, THE weight and
feature caches.

* ``BACKBONES`` / ``get_spec(name)`` / ``list_backbones()`` — the registry (any other timm name passes through);
* ``create_backbone(name, weights="auto")`` → ``(model, WeightsInfo)``, weights resolved in a recorded order;
* ``pull_weights`` / ``import_weights`` / ``verify_weights`` / ``weights_table`` — the weight cache and its licences;
* ``FeatureExtractor`` / ``extract_features(name, images)`` — normalisation inside, on-disk feature cache;
* ``resolve_module`` / ``tokens_to_map`` / ``gradcam_target`` — sub-modules and token maps.

Importing this package is cheap (no torch / timm at import time).
"""

from mai_core._lazy import attach

__getattr__, __dir__, __all__ = attach(__name__, {
    "registry": ("DEFAULT_BACKBONE", "IMAGENET_MEAN", "IMAGENET_STD", "WEIGHT_CHOICES", "RandomWeightsWarning",
                 "OfflinePackage", "BackboneSpec", "BACKBONES", "list_backbones", "get_spec", "gradcam_target"),
    "loading": ("read_state_dict", "load_weights_into"),
    "weights": ("WeightsInfo", "weights_cache_path", "plan_weights", "describe_weights", "create_backbone"),
    "store": ("METRIC_NETS", "canonical", "source_of", "licence_of", "gated_of", "read_record", "provenance",
              "pull_weights", "import_weights", "verify_weights"),
    "hub": ("offline_reason", "offline_mode"),
    "status": ("WeightStatus", "weight_status", "weights_table"),
    "layers": ("resolve_module", "tokens_to_map"),
    "features": ("FeatureExtractor", "create_feature_extractor", "features_cache_file", "extract_features",
                 "read_cached_features"),
})
