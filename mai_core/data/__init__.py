"""Data: reading patches and slides into the MAI dataset format, validating it, the embedded demo.

``images`` (patch files, RAM cache), ``dataset`` (the MAI CSV format, validation), ``checked`` (images
known to decode), ``stfiles`` (spot and count tables), ``slideimage`` (full-resolution H&E images,
patches), ``wsi`` (whole-slide readers, regions on demand), ``mpp`` (resolution), ``positions`` (spot/tile centres), ``sections`` + ``visium`` / ``hest`` /
``anndata_io`` (sections of every format, checked alike), ``importer`` (sections → patches + expression),
``demo`` and ``tissue`` (synthetic H&E with planted gene modules),
``units`` (what the expression values are, and the known truth of a split).
"""

from mai_core._lazy import attach

__getattr__, __dir__, __all__ = attach(__name__, {
    "images": ("PATCH_SIZE", "load_image", "load_images", "load_image_cache"),
    "dataset": ("ID_COL", "PATH_COL", "META_COLUMNS", "MAIDataset", "collect_problems", "load_dataset",
                "read_id_path_csv", "write_dataset"),
    "demo": ("generate_demo", "ensure_demo", "is_current_demo", "summarize"),
    "tissue": ("MODULES", "render_tile"),
    "stfiles": ("SPOT_COLUMNS", "check_section_name", "read_spots", "Counts", "read_counts", "read_gene_list"),
    "slideimage": ("DEFAULT_MAX_PIXELS", "pil_pixel_limit", "load_slide_image", "cut_patch"),
    "importer": ("NORMS", "DEFAULT_NORM", "HER2ST_SECTIONS", "normalize_counts", "import_slide", "import_her2st",
                 "her2st_files", "read_manifest", "build_train_table", "format_summary", "import_sections",
                 "dataset_resolution"),
    "wsi": ("SLIDE_SUFFIXES", "MPP_RANGE", "Slide", "ArraySlide", "open_slide", "iter_patches", "plausible_mpp"),
    "mpp": ("PLATFORMS", "check_mpp", "estimate_mpp", "mpp_from_array", "mpp_from_spacing", "mpp_from_scalefactors"),
    "positions": ("Positions", "read_positions", "read_visium_positions", "check_inside"),
    "sections": ("DEFAULT_MIN_MATCH", "Section", "build_section", "stage_st", "check_min_match"),
    "visium": ("visium_outs", "stage_visium", "read_10x_counts", "counts_from_anndata"),
    "hest": ("hest_root", "hest_files", "stage_hest"),
    "anndata_io": ("read_h5ad", "write_h5ad", "spatial_uns", "spatial_library", "stage_h5ad", "spots_of_anndata"),
    "units": ("ExpressionUnit", "expression_unit", "split_truth"),
})
