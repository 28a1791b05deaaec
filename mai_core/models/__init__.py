"""Models: the backbone registry and weights, the expression model (backbone + per-group heads),
losses, ridge regression on embeddings, test-time augmentation, the fast CPU/GPU execution path."""

from mai_core._lazy import attach

__getattr__, __dir__, __all__ = attach(__name__, {
    "model": ("HEAD_KINDS", "GroupHead", "GeneModel", "ModelFeatures", "OriginalUnits", "MeanEnsemble", "backbone_and_info",
              "backbone_units", "set_trainable_blocks", "frozen_bn_eval", "apply_drop_path", "build_model",
              "load_state", "save_state", "cosine_lr"),
    "losses": ("PEARSON_MODES", "validate_weights", "pearson_along", "pearson_loss", "covariance_loss",
               "ExpressionLoss"),
    "ridge": ("DEFAULT_ALPHAS", "RidgeFit", "fit_ridge", "predict_ridge"),
    "tta": ("MAX_VIEWS", "dihedral_views", "dihedral_view", "dihedral_view_np", "tta_views", "parse_views"),
    "fastpath": ("available_cpus", "idle_cpus", "tune_cpu_allocator", "tune_cpu", "prefers_channels_last",
                 "to_float_batch", "prefetched"),
})
