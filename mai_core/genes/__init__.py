"""Gene structure: correlation, co-expression networks, gene clusters, gene embeddings, groupings.

Everything works on a training expression matrix ``X`` (samples × genes) without Streamlit; every
clustering returns a :class:`Grouping`, the artefact cluster-wise heads train on.
"""

from mai_core._lazy import attach

__getattr__, __dir__, __all__ = attach(__name__, {
    "grouping": ("Grouping", "load_grouping"),
    "corrmatrix": ("constant_genes", "standardize", "rank_columns", "correlation", "correlation_linkage",
                    "linkage_order", "cluster_order", "cut_linkage", "block_average", "upper_triangle_histogram"),
    "network": ("scale_free_fit", "pick_soft_threshold", "topological_overlap", "tom_modules"),
    "clusters": ("UNASSIGNED", "OTHER", "DEFAULT_PREFIX_PATTERN", "GeneProfiles", "gene_profiles", "check_k",
                 "kmeans_labels", "kmeans_genes", "kmeans_scan", "gene_prefix", "prefix_groups", "parse_gmt",
                 "parse_gmt_text", "geneset_groups", "adjusted_rand", "grouping_ari", "sets_to_labels",
                 "true_modules"),
    "functional": ("term_similarity", "term_mds", "term_clusters", "functional_groups", "bicluster_groups",
                   "hub_genes"),
    "embedding": ("UMAP_DEFAULTS", "UMAP_STAGES", "data_key", "umap_cache_path", "cached_umap", "umap_embedding",
                  "warm_umap"),
    "overview": ("SCALE_GROUP_NAMES", "scale_groups", "gene_summary", "CorrelationOverview",
                 "correlation_overview", "parse_gene_list", "group_sizes", "suggested_grouping_name", "grouping_path",
                 "save_grouping"),
})
