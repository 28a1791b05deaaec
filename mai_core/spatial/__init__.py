"""Slides, not patches: whole-slide and spatial-section prediction, AnnData out, the viewer's science.

``tissue`` (tissue mask, grid over tissue), ``stream`` (tiles streamed in batches, reading overlapped with
prediction), ``resolution`` (what a run was trained at; how to read a slide for it), ``slidepred``
(``predict_slide``), ``annotate`` (measured expression, labels, gene programmes), ``output`` (the AnnData
layout), ``export`` (a run's split as AnnData), ``library`` (slide predictions in the workspace, background
jobs), ``viewer`` (a loaded prediction and its maps, without Streamlit).
"""

from mai_core._lazy import attach

__getattr__, __dir__, __all__ = attach(__name__, {
    "tissue": ("tissue_mask", "grid_centres"),
    "stream": ("plan_blocks", "stream_tiles"),
    "resolution": ("TOLERANCE", "NORM_UNITS", "RunFacts", "run_facts", "ReadPlan", "plan_read"),
    "annotate": ("measured_expression", "read_labels", "load_programmes", "programme_scores"),
    "output": ("build_anndata", "val_pcc", "clean_uns"),
    "slidepred": ("predict_slide", "format_result", "Stopped"),
    "export": ("SPLITS", "export_split"),
    "library": ("PREDICTION_FILE", "slides_dir", "SlidePrediction", "list_predictions", "submit_slide_job",
                "slide_command", "is_slide_job", "job_name"),
    "viewer": ("MAX_PAYLOAD", "SlideMap", "load_slide_map", "spot_clusters", "thumbnail_uri", "robust_range",
               "map_figure", "payload_bytes", "LAYER_KINDS", "MapLayer", "layer_kinds", "map_layer", "spot_values",
               "short_units", "section_agreement", "spot_scale_note", "spot_table"),
})
