"""The app's wing: Streamlit page frame, dataset chooser, cached loaders and the sidebar training form;
shared widgets (saving with an overwrite question, remembered values), background tasks with progress and
cancel, words for metrics, plot conventions.

The only part of ``mai_core`` that imports streamlit; pages call these and ``mai_core``'s science.
"""

from mai_core._lazy import attach

__getattr__, __dir__, __all__ = attach(__name__, {
    "frame": ("DEMO_LABEL", "cached_dataset", "cached_images", "dataset_problems", "dataset_stamp",
              "default_dataset_path", "sidebar_dataset", "page_setup", "DATA_ROOTS_ENV", "allowed_roots",
              "resolve_typed_path", "run_page"),
    "guard": ("show_error", "UNEXPECTED_ERROR", "shown_errors", "guarded"),
    "training": ("render_sidebar_training", "refresh_interval"),
    "weights": ("weights_panel", "submit_pull", "offer_weights_pull", "weights_caption"),
    "widgets": ("save_with_confirmation", "default_following_text", "restore", "remember", "slider_range"),
    "tasks": ("Cancelled", "Task", "start_task", "get_task", "forget_task", "progress_panel", "fmt_duration"),
    "labels": ("METRICS", "GLOSS", "dataset_unit", "metric_label", "metric_help", "metric_columns", "fmt_seconds",
               "runs_view"),
    "results": ("watch_runs", "run_tta_views", "test_score_panel", "start_submission", "submission_progress",
                "submission_notice"),
    "plots": ("distinct_colours", "group_colours", "ordered_colours", "tidy", "PLOT_CONFIG", "label_positions",
              "scatter_mode"),
})
