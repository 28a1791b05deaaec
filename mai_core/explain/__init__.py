"""Per-gene Grad-CAM: which part of a tile drives the predicted expression of a gene.

``methods`` (CAM methods, the gene target), ``layers`` (target layers per backbone family), ``engine``
(:class:`CamExplainer`: many genes share one forward pass; cached maps), ``analysis`` (gene selection, CAM
similarity, faithfulness), ``render`` (overlays), ``export`` (the ``gradcam`` command's output folder).
"""

from mai_core._lazy import attach

__getattr__, __dir__, __all__ = attach(__name__, {
    "methods": ("CAM_SIZE", "CamMethod", "METHODS", "GeneTarget", "check_method"),
    "layers": ("FAMILY_LAYERS", "LayerSpec", "layer_candidates", "tokens_to_maps", "TokenReshape",
               "resolve_target_layers"),
    "engine": ("to_input", "image_key", "CamResult", "CamExplainer", "run_key"),
    "analysis": ("gene_family", "gene_families", "select_genes", "cam_similarity", "prefix_similarity",
                 "faithfulness", "load_masks", "gene_modules"),
    "render": ("COLORMAPS", "DEFAULT_COLORMAP", "SCALINGS", "heatmap", "overlay", "shared_scale", "colorbar",
               "save_png"),
    "export": ("resolve_ids", "write_gradcam"),
})
