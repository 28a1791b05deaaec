"""The app's wing: Streamlit page frame, dataset chooser, cached loaders and the sidebar training form.

The only part of ``mai_core`` that imports streamlit; pages call these and ``mai_core``'s science.
"""

from mai_core._lazy import attach

__getattr__, __dir__, __all__ = attach(__name__, {
    "frame": ("DEMO_LABEL", "cached_dataset", "cached_images", "dataset_problems", "dataset_stamp",
              "default_dataset_path", "sidebar_dataset", "show_error", "page_setup"),
    "training": ("render_sidebar_training", "refresh_interval"),
    "weights": ("weights_panel", "submit_pull", "offer_weights_pull", "weights_caption"),
})
