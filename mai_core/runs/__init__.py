"""Runs: ONE run-directory layout, prediction with a run or ensemble, ensembles, comparing runs, and
background training jobs. Nothing here imports the training engine."""

from mai_core._lazy import attach

__getattr__, __dir__, __all__ = attach(__name__, {
    "rundir": ("STATES", "STATUS_FIELDS", "METRIC_FIELDS", "RunDir", "read_config", "write_config", "read_status",
               "write_status", "append_metrics", "truncate_metrics", "read_metrics", "list_runs", "RUN_ENTRIES",
               "holds_run", "has_progress"),
    "predict": ("Predictor", "PredictionCancelled", "build_run_model", "load_predictor", "predict_csv",
                "labelled_split", "evaluate_run"),
    "ensemble": ("WEIGHTINGS", "member_val_pcc", "build_ensemble", "ensemble_path"),
    "compare": ("ValPredictions", "load_val_predictions", "run_summary", "runs_table", "per_gene_pcc",
                "cluster_pcc", "correlation_fidelity", "correlation_matrices", "common_val_set", "evaluate_val",
                "compare_runs", "write_submission"),
    "strategies": ("strategies_table", "strategy_row"),
    "neighbours": ("spot_coordinates", "neighbour_matrix", "smooth", "choose_weight", "smoothing_facts",
                   "neighbour_mean", "smooth_at", "smoothing_weight"),
    "contexthead": ("CONTEXT_HEAD_FILE", "context_features", "fit_context_head", "save_context_head",
                    "ensemble_context_head", "ensemble_members", "ensemble_context_note", "without_context_head",
                    "load_context_head", "apply_context_head", "spatial_model", "spatial_finish",
                    "spatial_predict"),
    "testscore": ("test_score_path", "cached_test_score", "test_score",
                  "write_submission_reporting"),
})
