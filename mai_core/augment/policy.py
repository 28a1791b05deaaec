"""Augmentation policies: named lists of (augmentation, parameters, probability), stored as YAML.

A policy name resolves, in order, to: a path to a ``.yaml`` file; a built-in policy (``none``,
``flips_rot90``, ``he_safe``; these names are reserved); ``<name>.yaml`` in the given search folders,
then in the dataset folder's ``policies/``, then in the workspace ``policies/`` folder.
"""

from __future__ import annotations

import json
import math
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import NamedTuple

import yaml

from mai_core.errors import MaiError, Problem
from mai_core.io import write_text

NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")
DEFAULT_POLICY = "he_safe"  # the training recipes' policy (mai_core.training.config)


class PolicyItem(NamedTuple):
    aug: str
    params: dict
    p: float


@dataclass
class Policy:
    """An ordered list of augmentations; each applied to an image with probability ``p``."""

    name: str
    items: list = field(default_factory=list)
    description: str = ""
    source: str = ""  # "built-in" or the file it was loaded from

    def __post_init__(self):
        self.items = [PolicyItem(str(a), dict(pr or {}), float(p)) for a, pr, p in self.items]

    def problems(self, where: str = "") -> list[Problem]:
        from mai_core.augment.ops import AUGMENTATIONS

        where = where or f"policy {self.name}"
        out = []
        if not NAME_RE.match(self.name or ""):
            out.append(Problem(where, f"invalid policy name {self.name!r}",
                               "use letters, digits, '_', '-' or '.', starting with a letter or digit"))
        for i, it in enumerate(self.items):
            w = f"{where}, item {i + 1} ({it.aug})"
            spec = AUGMENTATIONS.get(it.aug)
            if spec is None:
                out.append(Problem(w, f"unknown augmentation '{it.aug}'", f"use one of: {', '.join(AUGMENTATIONS)}"))
                continue
            if not (isinstance(it.p, float) and math.isfinite(it.p) and 0.0 <= it.p <= 1.0):
                out.append(Problem(w, f"probability p={it.p} is not in [0, 1]", "set p between 0 and 1"))
            out.extend(spec.check_params(it.params, w))
        return out

    def validate(self, where: str = "") -> "Policy":
        problems = self.problems(where)
        if problems:
            raise MaiError(f"augmentation policy '{self.name}' is invalid", problems)
        return self

    def to_dict(self) -> dict:
        return {"name": self.name, "description": self.description,
                "items": [{"aug": it.aug, "p": it.p, "params": dict(it.params)} for it in self.items]}

    def describe(self) -> str:
        if not self.items:
            return f"{self.name}: no augmentation"
        parts = []
        for it in self.items:
            args = ", ".join(f"{k}={v:g}" for k, v in it.params.items())
            parts.append(f"{it.aug}({args}) p={it.p:g}")
        return f"{self.name}: " + " -> ".join(parts)


def _builtin(name: str) -> Policy | None:
    if name == "none":
        return Policy("none", [], "No augmentation.", source="built-in")
    if name == "flips_rot90":
        return Policy("flips_rot90", [("HorizontalFlip", {}, 0.5), ("VerticalFlip", {}, 0.5),
                                      ("RandomRotate90", {}, 0.75)],
                      "The 8 dihedral orientations of a patch (tissue has no canonical orientation).",
                      source="built-in")
    if name == "he_safe":
        return Policy("he_safe", [
            ("HorizontalFlip", {}, 0.5), ("VerticalFlip", {}, 0.5), ("RandomRotate90", {}, 0.75),
            ("ShiftScaleRotate", {"shift_limit": 0.03, "scale_limit": 0.05, "rotate_limit": 15.0}, 0.3),
            ("RandomBrightnessContrast", {"brightness_limit": 0.1, "contrast_limit": 0.1}, 0.3),
            ("HEDJitter", {"sigma": 0.03, "bias": 0.02}, 0.5),
        ], "Orientation changes plus mild geometric, brightness/contrast and stain jitter.", source="built-in")
    return None


BUILTIN_POLICIES = ("none", "flips_rot90", "he_safe")


def _search_dirs(search_dirs=None, data_dir=None) -> list[tuple[str, Path]]:
    from mai_core.workspace import policies_dir

    out: list[tuple[str, Path]] = [("folder", Path(d)) for d in (search_dirs or [])]
    data_dir = data_dir if data_dir is not None else os.environ.get("MAI_DATA")
    if data_dir:
        out.append(("dataset", Path(data_dir).expanduser() / "policies"))
    out.append(("workspace", policies_dir()))
    return out


def policy_from_dict(data, where: str) -> Policy:
    """Build and validate a policy from parsed YAML/JSON; MaiError lists every problem."""
    if not isinstance(data, dict):
        raise MaiError(f"{where} is not a policy", [Problem(where, "expected a mapping with 'name' and 'items'",
                                                             "save policies with save_policy or the Augmentation Lab")])
    problems = []
    items = []
    raw_items = data.get("items") or []
    if not isinstance(raw_items, list):
        problems.append(Problem(where, "'items' must be a list", "list items as '- aug: NAME, p: P, params: {...}'"))
        raw_items = []
    for i, it in enumerate(raw_items):
        if not isinstance(it, dict) or "aug" not in it:
            problems.append(Problem(f"{where}, item {i + 1}", f"expected a mapping with 'aug', got {type(it).__name__}",
                                    "write items as {aug: NAME, p: P, params: {...}}"))
            continue
        params = it.get("params") or {}
        if not isinstance(params, dict):
            problems.append(Problem(f"{where}, item {i + 1}", "'params' must be a mapping", "e.g. params: {sigma: 0.05}"))
            params = {}
        try:
            p = float(it.get("p", 1.0))
        except (TypeError, ValueError):
            problems.append(Problem(f"{where}, item {i + 1}", f"p={it.get('p')!r} is not a number", "set p in [0, 1]"))
            continue
        items.append((str(it["aug"]), params, p))
    name = str(data.get("name") or Path(where).stem)
    policy = Policy(name, items, str(data.get("description") or ""), source=where)
    problems.extend(policy.problems(where))
    if problems:
        raise MaiError(f"augmentation policy {where} is invalid", problems)
    return policy


def _read_policy_file(path: Path) -> Policy:
    try:
        data = yaml.safe_load(path.read_text())
    except (OSError, UnicodeDecodeError, yaml.YAMLError) as exc:
        mark = getattr(exc, "problem_mark", None)  # where the YAML breaks; its text is not repeated
        at = f" at line {mark.line + 1}, column {mark.column + 1}" if mark is not None else ""
        raise MaiError(f"cannot read policy {path}", [Problem(str(path), f"unreadable YAML ({type(exc).__name__}{at})",
                                                             "fix the file or save the policy again")]) from None
    return policy_from_dict(data, str(path))


def load_policy(name_or_path, search_dirs=None, data_dir=None) -> Policy:
    """Resolve a policy by path or name (see module docstring); unknown -> MaiError listing available."""
    if isinstance(name_or_path, Policy):
        return name_or_path.validate()
    text = str(name_or_path).strip()
    path = Path(text).expanduser()
    if text.endswith((".yaml", ".yml")) or os.sep in text or "/" in text:
        if not path.is_file():
            raise MaiError(f"policy file {path} not found",
                           [Problem(str(path), "no such file", "check the path, or pass a policy name")])
        return _read_policy_file(path)
    builtin = _builtin(text)
    if builtin is not None:
        return builtin
    dirs = _search_dirs(search_dirs, data_dir)
    for _, d in dirs:
        for suffix in (".yaml", ".yml"):
            p = d / f"{text}{suffix}"
            if p.is_file():
                return _read_policy_file(p)
    available = list_policies(search_dirs, data_dir)
    raise MaiError(f"unknown augmentation policy '{text}'",
                   [Problem("policy", f"no built-in policy and no {text}.yaml in "
                            + ", ".join(str(d) for _, d in dirs),
                            f"use one of: {', '.join(available)}")],
                   hint="create one in the Augmentation Lab or with `python -m mai_core augment-score --save-policy NAME`")


def save_policy(policy: Policy, dir=None) -> Path:
    """Write ``<dir or workspace policies>/<name>.yaml`` atomically; returns the path."""
    from mai_core.workspace import policies_dir

    policy.validate()
    if policy.name in BUILTIN_POLICIES:
        raise MaiError(f"'{policy.name}' is a built-in policy name",
                       [Problem("policy name", f"'{policy.name}' is reserved", "choose another name")])
    target = Path(dir).expanduser() if dir is not None else policies_dir()
    path = target / f"{policy.name}.yaml"
    write_text(path, yaml.safe_dump(json.loads(json.dumps(policy.to_dict())), sort_keys=False))
    return path


def policy_table(search_dirs=None, data_dir=None) -> list[dict]:
    """Every available policy: name, where it comes from, path, number of items and description.
    Earlier sources shadow later ones with the same name (as in :func:`load_policy`)."""
    rows = []
    seen = set()
    for name in BUILTIN_POLICIES:
        pol = _builtin(name)
        rows.append({"name": name, "source": "built-in", "path": "", "items": len(pol.items),
                     "description": pol.description, "summary": pol.describe()})
        seen.add(name)
    for source, d in _search_dirs(search_dirs, data_dir):
        if not d.is_dir():
            continue
        for p in sorted(list(d.glob("*.yaml")) + list(d.glob("*.yml"))):
            if p.stem in seen:
                continue
            seen.add(p.stem)
            try:
                pol = _read_policy_file(p)
                rows.append({"name": p.stem, "source": source, "path": str(p), "items": len(pol.items),
                             "description": pol.description, "summary": pol.describe()})
            except MaiError as exc:
                rows.append({"name": p.stem, "source": source, "path": str(p), "items": None,
                             "description": f"invalid: {exc.problems[0] if exc.problems else exc.message}",
                             "summary": ""})
    return rows


def list_policies(search_dirs=None, data_dir=None) -> list[str]:
    """Names of every available policy (built-ins first)."""
    return [r["name"] for r in policy_table(search_dirs, data_dir)]


def kept_mask(scores, max_lpips: float | None = None, max_dino: float | None = None, max_hue: float | None = None):
    """Boolean Series: augmentations a policy would keep -- mean LPIPS and DINO distances and mean hue rotation
    (degrees, column ``hue_mean`` when present) within the thresholds (None does not constrain); Identity is
    never kept (it does nothing).
    ``scores`` is a summary table from score_augmentations / augment-score."""
    keep = scores["aug"].notna() & (scores["aug"] != "Identity")
    if max_lpips is not None:
        keep &= scores["lpips_mean"] <= max_lpips
    if max_dino is not None:
        keep &= scores["dino_mean"] <= max_dino
    if max_hue is not None and "hue_mean" in scores.columns:
        keep &= scores["hue_mean"] <= max_hue
    return keep


def select_policy(scores_df, max_lpips: float | None, max_dino: float | None, name: str,
                  max_hue: float | None = None) -> Policy:
    """A policy of the scored augmentations within the thresholds, each with the parameters it was
    scored with and its default probability. Identity is never included (it does nothing)."""
    from mai_core.augment.ops import AUGMENTATIONS

    missing = [c for c in ("aug", "lpips_mean", "dino_mean") if c not in scores_df.columns]
    if missing:
        raise MaiError("scores table lacks columns " + ", ".join(missing),
                       [Problem("scores", f"missing columns {missing}", "pass the table written by augment-score")])
    keep = kept_mask(scores_df, max_lpips, max_dino, max_hue)
    items = []
    for _, row in scores_df[keep].iterrows():
        spec = AUGMENTATIONS.get(row["aug"])
        if spec is None:
            continue
        params = {}
        raw = row.get("params") if "params" in scores_df.columns else None
        if isinstance(raw, str) and raw.strip():
            params = json.loads(raw)
        elif isinstance(raw, dict):
            params = raw
        items.append((spec.name, params, spec.default_p))
    limits = []
    if max_lpips is not None:
        limits.append(f"LPIPS <= {max_lpips:g}")
    if max_dino is not None:
        limits.append(f"DINO <= {max_dino:g}")
    if max_hue is not None:
        limits.append(f"hue rotation <= {max_hue:g} degrees")
    desc = "Augmentations with mean " + (" and ".join(limits) or "distances unconstrained")
    return Policy(name, items, desc).validate()
