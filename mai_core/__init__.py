"""mai_core: predict spatial gene expression from H&E patches, and explain the predictions.

The library behind the Streamlit app. Everything here works headless; heavy dependencies
(torch, timm, umap) are imported lazily by the modules that need them.
"""

__version__ = "0.1.0"

from mai_core.errors import MaiError, Problem  # noqa: F401
