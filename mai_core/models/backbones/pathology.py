"""Pathology foundation encoders: how each one is built, normalised, pooled and licensed.

Every fact here comes from the model's own card or reference implementation (hub id, file, timm
architecture and arguments, input normalisation, embedding, licence, gating). All of them are gated or
licensed for non-commercial research; ``python -m mai_core weights list`` shows which.

Architectures are timm Vision Transformers built with the arguments their authors publish, except two:

* Virchow2's embedding is the class token concatenated with the mean of the patch tokens (2560-d),
  registers excluded -- :func:`cls_mean_pool` turns a timm ViT into that embedding;
* CONCH is a CoCa image tower: a ViT-B/16 trunk followed by an attentional pooler (one query, 512-d)
  and a LayerNorm -- :func:`build_conch_vision` builds it with the checkpoint's parameter names.

Phikon-v2 is published as a Hugging Face ``transformers`` DINOv2 model; :func:`dinov2_hf_to_timm` maps its
tensors onto timm's ViT-L/16 (query/key/value are fused into timm's ``qkv``).
"""

from __future__ import annotations

import re

IMAGENET = ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225))
OPENAI_CLIP = ((0.48145466, 0.4578275, 0.40821073), (0.26862954, 0.26130258, 0.27577711))
HOPTIMUS = ((0.707223, 0.578729, 0.703617), (0.211883, 0.230117, 0.177517))

CC_BY_NC_ND = "cc-by-nc-nd-4.0"
NON_COMMERCIAL_NOTE = ("non-commercial academic research only; the weights and models derived from them may not "
                       "be distributed; access is granted per person on the model page")


def _swiglu():
    import torch
    from timm.layers import SwiGLUPacked

    return {"mlp_layer": SwiGLUPacked, "act_layer": torch.nn.SiLU}


def timm_arguments(key: str) -> tuple[str, dict]:
    """(timm architecture, keyword arguments) of a pathology encoder (``num_classes`` is set by the caller)."""
    if key == "uni":
        return "vit_large_patch16_224", dict(img_size=224, patch_size=16, init_values=1e-5, dynamic_img_size=True)
    if key == "uni2-h":
        return "vit_giant_patch14_224", dict(img_size=224, patch_size=14, depth=24, num_heads=24, init_values=1e-5,
                                             embed_dim=1536, mlp_ratio=2.66667 * 2, no_embed_class=True,
                                             reg_tokens=8, dynamic_img_size=True, **_swiglu())
    if key == "virchow2":
        return "vit_huge_patch14_224", dict(img_size=224, init_values=1e-5, reg_tokens=4, mlp_ratio=5.3375,
                                            dynamic_img_size=True, **_swiglu())
    if key in ("h-optimus-0", "h-optimus-1"):
        return "vit_giant_patch14_reg4_dinov2", dict(img_size=224, global_pool="token", init_values=1e-5,
                                                     dynamic_img_size=True)
    if key == "phikon-v2":
        return "vit_large_patch16_224", dict(img_size=224, patch_size=16, init_values=1e-5, dynamic_img_size=True)
    if key == "prov-gigapath":
        return "vit_giant_patch14_dinov2", dict(img_size=224, patch_size=16, embed_dim=1536, depth=40,
                                                num_heads=24, mlp_ratio=5.33334, dynamic_img_size=True)
    if key == "conch":
        return "vit_base_patch16_224", dict(img_size=448, patch_size=16, dynamic_img_size=True)
    raise KeyError(key)


# facts per encoder: hub repo, file, normalisation, embedding size, licence, gating, converter, pooling
ENCODERS: dict[str, dict] = {
    "uni": dict(
        repo="MahmoodLab/UNI", filename="pytorch_model.bin", norm=IMAGENET, dim=1024, licence=CC_BY_NC_ND,
        gated=True, title="UNI (ViT-L/16, 303M params, 1024-d)",
        note="Mahmood Lab; institutional e-mail required for approval"),
    "uni2-h": dict(
        repo="MahmoodLab/UNI2-h", filename="pytorch_model.bin", norm=IMAGENET, dim=1536, licence=CC_BY_NC_ND,
        gated=True, title="UNI2-h (ViT-H/14, 8 registers, 681M params, 1536-d)",
        note="Mahmood Lab; institutional e-mail required for approval"),
    "conch": dict(
        repo="MahmoodLab/CONCH", filename="pytorch_model.bin", norm=OPENAI_CLIP, dim=512, licence=CC_BY_NC_ND,
        gated=True, input_size=448, convert="conch", builder="conch",
        title="CONCH image tower (ViT-B/16 + attentional pooler, 512-d, 448 px)",
        note="Mahmood Lab; vision-language model, only its image tower is used"),
    "virchow2": dict(
        repo="paige-ai/Virchow2", filename="pytorch_model.bin", norm=IMAGENET, dim=2560, licence=CC_BY_NC_ND,
        gated=True, pool="cls+mean", title="Virchow2 (ViT-H/14, 4 registers, 632M params, class+mean 2560-d)",
        note="Paige; institutional e-mail required for approval"),
    "h-optimus-0": dict(
        repo="bioptimus/H-optimus-0", filename="pytorch_model.bin", norm=HOPTIMUS, dim=1536, licence="apache-2.0",
        gated=False, title="H-optimus-0 (ViT-g/14, 4 registers, 1.1B params, 1536-d)",
        note="Bioptimus; open weights"),
    "h-optimus-1": dict(
        repo="bioptimus/H-optimus-1", filename="pytorch_model.bin", norm=HOPTIMUS, dim=1536, licence=CC_BY_NC_ND,
        gated=True, title="H-optimus-1 (ViT-g/14, 4 registers, 1.1B params, 1536-d)",
        note="Bioptimus; institutional e-mail required for approval"),
    "phikon-v2": dict(
        repo="owkin/phikon-v2", filename="model.safetensors", norm=IMAGENET, dim=1024,
        licence="other (Owkin non-commercial licence)", gated=False, convert="dinov2-hf",
        title="Phikon-v2 (ViT-L/16 DINOv2, 1024-d)", note="Owkin; published as a transformers DINOv2 model"),
    "prov-gigapath": dict(
        repo="prov-gigapath/prov-gigapath", filename="pytorch_model.bin", norm=IMAGENET, dim=1536,
        licence="other (prov-gigapath licence, research use)", gated=True,
        title="Prov-GigaPath tile encoder (ViT-g/14 body with 16 px patches, 1.1B params, 1536-d)",
        note="Providence / Microsoft; accept the conditions on the model page"),
}


# ----------------------------------------------------------------------------------------- pooling


_CLS_MEAN: list = []


def _cls_mean_class():
    if _CLS_MEAN:
        return _CLS_MEAN[0]
    from timm.models.vision_transformer import VisionTransformer

    class ClsMeanViT(VisionTransformer):
        """A timm ViT whose embedding is [class token, mean of patch tokens] (registers excluded)."""

        def forward_head(self, x, pre_logits: bool = False):
            import torch

            if x.ndim == 2:
                return x
            return torch.cat([x[:, 0], x[:, self.num_prefix_tokens:].mean(dim=1)], dim=-1)

        def reset_classifier(self, num_classes: int, global_pool=None):
            super().reset_classifier(num_classes, global_pool)
            self.num_features = 2 * self.embed_dim

    ClsMeanViT.__module__ = __name__
    ClsMeanViT.__qualname__ = "ClsMeanViT"
    _CLS_MEAN.append(ClsMeanViT)
    return ClsMeanViT


def __getattr__(attr: str):  # the class is made on first use (importing this module never imports timm)
    if attr == "ClsMeanViT":
        return _cls_mean_class()
    raise AttributeError(attr)


def cls_mean_pool(model):
    """Turn a timm VisionTransformer (no classifier) into the class+mean embedding (2 × width)."""
    model.__class__ = _cls_mean_class()
    model.num_features = 2 * model.embed_dim
    if hasattr(model, "head_hidden_size"):
        model.head_hidden_size = model.num_features
    return model


# ----------------------------------------------------------------------------------------- CONCH


def build_conch_vision(**kwargs):
    """CONCH's image tower with the checkpoint's parameter names: ``trunk`` (timm ViT-B/16 at 448 px),
    ``attn_pool_contrast`` (one learned query, 8 heads, 768 → 512) and ``ln_contrast``. Output: 512-d."""
    import timm
    import torch
    from torch import nn

    arch, targs = timm_arguments("conch")
    targs.update({k: v for k, v in kwargs.items() if k not in ("num_classes", "pretrained")})

    class AttnPool(nn.Module):
        def __init__(self, d_model: int, context_dim: int, n_head: int = 8, n_queries: int = 1):
            super().__init__()
            self.query = nn.Parameter(torch.randn(n_queries, d_model))
            self.attn = nn.MultiheadAttention(d_model, n_head, kdim=context_dim, vdim=context_dim)
            self.ln_q = nn.LayerNorm(d_model)
            self.ln_k = nn.LayerNorm(context_dim)

        def forward(self, x):
            k = self.ln_k(x).permute(1, 0, 2)  # tokens first, as nn.MultiheadAttention expects
            q = self.ln_q(self.query).unsqueeze(1).expand(-1, k.shape[1], -1)
            return self.attn(q, k, k, need_weights=False)[0].permute(1, 0, 2)

    class ConchVision(nn.Module):
        def __init__(self):
            super().__init__()
            self.trunk = timm.create_model(arch, pretrained=False, num_classes=0, **targs)
            self.attn_pool_contrast = AttnPool(512, self.trunk.num_features)
            self.ln_contrast = nn.LayerNorm(512)
            self.num_features = 512
            self.pretrained_cfg = {"mean": OPENAI_CLIP[0], "std": OPENAI_CLIP[1], "input_size": (3, 448, 448)}

        @property
        def patch_embed(self):  # the trunk's (a property, so the module is not registered twice)
            return self.trunk.patch_embed

        def forward_features(self, x):
            return self.trunk.forward_features(x)

        def forward_head(self, x, pre_logits: bool = False):
            return self.ln_contrast(self.attn_pool_contrast(x)[:, 0])

        def forward(self, x):
            return self.forward_head(self.forward_features(x))

        def get_classifier(self):
            return None

        def reset_classifier(self, num_classes: int = 0, *args, **kw):
            if num_classes:
                raise ValueError("the CONCH image tower has no classifier")

    return ConchVision()


# ----------------------------------------------------------------------------------------- converters


def dinov2_hf_to_timm(sd: dict) -> dict:
    """Tensors of a ``transformers`` Dinov2Model mapped onto timm's ViT names (q/k/v fused into qkv).

    Anything already in timm's names passes through unchanged; the mask token (training only) is dropped.
    """
    import torch

    if not any(k.startswith(("embeddings.", "dinov2.embeddings.")) for k in sd):
        return sd
    sd = {k[len("dinov2."):] if k.startswith("dinov2.") else k: v for k, v in sd.items()}
    out: dict = {}
    fixed = {"embeddings.cls_token": "cls_token", "embeddings.position_embeddings": "pos_embed",
             "embeddings.patch_embeddings.projection.weight": "patch_embed.proj.weight",
             "embeddings.patch_embeddings.projection.bias": "patch_embed.proj.bias",
             "layernorm.weight": "norm.weight", "layernorm.bias": "norm.bias"}
    per_layer = {"norm1": "norm1", "norm2": "norm2", "attention.output.dense": "attn.proj",
                 "mlp.fc1": "mlp.fc1", "mlp.fc2": "mlp.fc2"}
    qkv: dict[tuple[int, str], dict[str, object]] = {}
    for key, value in sd.items():
        if key in fixed:
            out[fixed[key]] = value
            continue
        m = re.match(r"encoder\.layer\.(\d+)\.(.+)\.(weight|bias|lambda1)$", key)
        if not m:
            continue  # mask_token, pooler: not part of the encoder's forward pass
        i, mod, kind = int(m.group(1)), m.group(2), m.group(3)
        if mod in ("layer_scale1", "layer_scale2"):
            out[f"blocks.{i}.ls{mod[-1]}.gamma"] = value
        elif mod in ("attention.attention.query", "attention.attention.key", "attention.attention.value"):
            qkv.setdefault((i, kind), {})[mod.rsplit(".", 1)[1]] = value
        elif mod in per_layer:
            out[f"blocks.{i}.{per_layer[mod]}.{kind}"] = value
    for (i, kind), parts in qkv.items():
        if set(parts) == {"query", "key", "value"}:
            out[f"blocks.{i}.attn.qkv.{kind}"] = torch.cat([parts["query"], parts["key"], parts["value"]], 0)
    return out


def conch_to_vision(sd: dict) -> dict:
    """The image-tower tensors of a full CONCH checkpoint (``visual.*``), prefix removed."""
    if not any(k.startswith("visual.") for k in sd):
        return sd
    keep = ("visual.trunk.", "visual.attn_pool_contrast.", "visual.ln_contrast.")
    return {k[len("visual."):]: v for k, v in sd.items() if k.startswith(keep)}


CONVERTERS = {"dinov2-hf": dinov2_hf_to_timm, "conch": conch_to_vision}


def resample_pos_embed(sd: dict, model) -> dict:
    """Resize an absolute position embedding to ``model``'s grid when a checkpoint was saved at another size."""
    pe, target = sd.get("pos_embed"), getattr(model, "pos_embed", None)
    if pe is None or target is None or tuple(pe.shape) == tuple(target.shape):
        return sd
    from timm.layers import resample_abs_pos_embed

    prefix = 0 if getattr(model, "no_embed_class", False) else int(getattr(model, "num_prefix_tokens", 1))
    sd = dict(sd)
    sd["pos_embed"] = resample_abs_pos_embed(pe, new_size=list(model.patch_embed.grid_size), num_prefix_tokens=prefix)
    return sd
