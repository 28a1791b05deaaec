"""Training: the resolved configuration, the data split, and the engine that trains a run directory.

``config`` (recipes and precedence), ``split`` (seeded validation split), ``runtime`` (device, precision,
process group, stop signals), ``session`` (data, targets, model), ``recorder`` (the only writer of a run
directory), ``finetune`` and ``frozen`` (the strategies: fine-tuning, frozen-feature heads, ridge),
``engine`` (:func:`train`, which picks the strategy).
"""

from mai_core._lazy import attach

__getattr__, __dir__, __all__ = attach(__name__, {
    "config": ("MODEL_KINDS", "BASE_CONFIG", "CPU_RECIPE", "GPU_RECIPE", "deep_merge", "default_config",
               "read_config_file", "resolve_config", "validate_config"),
    "split": ("make_split",),
    "session": ("make_augment", "Session"),
    "ema": ("EMA",),
    "runtime": ("Runtime", "StopFlag", "unwrap_model"),
    "recorder": ("Recorder", "TrainState"),
    "engine": ("STRATEGIES", "Trainer", "train"),
})
