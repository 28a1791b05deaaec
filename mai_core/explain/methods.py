"""CAM methods (from ``pytorch_grad_cam``) and the regression target of one gene.

The model maps an image to G expression values; the CAM target of gene ``g`` is its predicted
expression ``output[:, g]`` (:class:`GeneTarget`).
"""

from __future__ import annotations

import difflib
from dataclasses import dataclass


from mai_core.errors import MaiError, Problem



CAM_SIZE = 224


# ----------------------------------------------------------------------------------------------
# Methods and targets
# ----------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class CamMethod:
    """One class-activation method usable with a regression target."""

    name: str
    label: str
    library_class: str  # class name in pytorch_grad_cam
    uses_gradients: bool
    gene_specific: bool  # False: the map does not depend on the gene (EigenCAM)
    description: str

    def cam_class(self):
        import pytorch_grad_cam

        return getattr(pytorch_grad_cam, self.library_class)


METHODS: dict[str, CamMethod] = {m.name: m for m in (
    CamMethod("gradcam", "Grad-CAM", "GradCAM", True, True,
              "channels weighted by the spatial mean of d(expression)/d(activation)"),
    CamMethod("gradcam++", "Grad-CAM++", "GradCAMPlusPlus", True, True,
              "second-order weighting of positive gradients; sharper for several separate regions"),
    CamMethod("xgradcam", "XGrad-CAM", "XGradCAM", True, True,
              "gradients weighted by normalised activations (axiom-based Grad-CAM)"),
    CamMethod("layercam", "LayerCAM", "LayerCAM", True, True,
              "positive gradients times activations, per location (finer detail)"),
    CamMethod("hirescam", "HiResCAM", "HiResCAM", True, True,
              "gradients times activations summed over channels (faithful to the model's computation)"),
    CamMethod("elementwise", "Grad-CAM element-wise", "GradCAMElementWise", True, True,
              "positive part of gradient × activation, summed over channels"),
    CamMethod("eigengradcam", "EigenGrad-CAM", "EigenGradCAM", True, True,
              "first principal component of gradient × activation (sign of the component is arbitrary)"),
    CamMethod("eigencam", "EigenCAM", "EigenCAM", False, False,
              "first principal component of the activations: the same map for every gene"),
    CamMethod("scorecam", "Score-CAM", "ScoreCAM", False, True,
              "channels weighted by the expression of the image masked by each channel "
              "(one forward pass per channel: slow, but shared by all genes)"),
)}


class GeneTarget:
    """pytorch_grad_cam target: the predicted expression of gene ``index``."""

    def __init__(self, index: int):
        self.index = int(index)

    def __call__(self, model_output):
        if model_output.ndim == 1:
            return model_output[self.index]
        return model_output[:, self.index]

    def __repr__(self) -> str:
        return f"GeneTarget({self.index})"


def check_method(method: str) -> CamMethod:
    if method in METHODS:
        return METHODS[method]
    close = difflib.get_close_matches(method.lower(), list(METHODS), n=3, cutoff=0.5)
    raise MaiError(f"unknown CAM method {method!r}",
                   [Problem("--method", f"{method!r} is not one of {', '.join(METHODS)}",
                            f"did you mean {', '.join(close)}?" if close else "pick one of the listed methods")])


