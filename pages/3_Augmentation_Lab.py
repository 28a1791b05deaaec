"""Augmentation Lab: see what each augmentation does to tissue, how far it moves an image perceptually,
and save the augmentations under chosen thresholds as a training policy."""

import pandas as pd
import plotly.express as px
import plotly.graph_objects as go
import streamlit as st

from mai_core import augment as A
from mai_core import app as ui
from mai_core.errors import MaiError

ds = ui.page_setup("Augmentation Lab")

PREVIEW_DEFAULT = ["HorizontalFlip", "ShiftScaleRotate", "HEDJitter"]
GALLERY = 12


@st.cache_resource(show_spinner="Loading perceptual models…")
def scorer(device: str) -> A.PerceptualScorer:
    return A.PerceptualScorer(device=device)


@st.cache_data(show_spinner=False, max_entries=16)
def preview_originals(fingerprint: str, root: str, ids: tuple):
    data = ui.cached_dataset(root)
    index = {k: i for i, k in enumerate(data.ids)}
    return data.images("train", [index[i] for i in ids])


def _preview_work(images, augs: tuple, seed: int, sc, report) -> dict:
    """The preview grid's augmented images and their distances, one augmentation at a time (a count, a cancel)."""
    shown = {}
    for i, aug in enumerate(augs):
        report(i, len(augs), what=aug)
        shown.update(A.preview_pairs(images, [aug], seed=seed, scorer=sc))
    report(len(augs), len(augs))
    return shown


def _score_work(ds, n: int, k: int, augs: tuple, seed: int, sc, report) -> A.ScoreReport:
    return A.score_dataset(ds, n=n, k=k, augs=list(augs), seed=seed, scorer=sc, progress=report)


def score_key(fingerprint: str, n: int, k: int, augs: tuple, seed: int, device: str) -> str:
    return f"augscore:{fingerprint}:{n}:{k}:{','.join(augs)}:{seed}:{device}"


root = str(ds.root)
device = st.sidebar.selectbox("Scoring device", ["auto", "cpu", "cuda"], key="aug_device",
                              help="auto: GPU when present")
try:
    sc = scorer(device)
except MaiError as exc:
    ui.show_error(exc)
    st.stop()

st.caption(f"LPIPS column computed with **{sc.lpips_model}** · DINO column computed with **{sc.dino_model}** "
           f"· device `{sc.device}`")
with st.expander("What the distances mean: appearance, geometry, hue"):
    st.markdown("Every augmentation is compared with the original patch **moved the same way** (same flip, "
                "rotation or shift). So the scores say what the augmentation did to the *look* of the tissue, "
                "not how far it moved it:\n"
                "- **Appearance distance** (the LPIPS and DINO columns): how different the stain and texture look "
                "once the movement is undone. A flip or rotation scores exactly 0 here — the tissue is the same "
                "tissue, just turned. Brightness, colour, blur or mixing with another patch score above 0.\n"
                "- **Geometry distance**: how far the pixels moved (LPIPS between the original and its moved "
                "copy). Large for flips and rotations, 0 for colour changes. It is shown for information; "
                "moving tissue around is harmless for training because tissue has no up or down.\n"
                "- **Hue rotation** (degrees): how far the colours turn around the colour wheel. Scanners "
                "differ in brightness and contrast, but haematoxylin stays blue-purple and eosin pink: a hue "
                "shift or per-channel equalisation produces colours no slide has.\n\n"
                "The default thresholds keep what changes the tissue's look only a little and keeps its hues. "
                "The two metrics behind the appearance columns:\n\n")
    st.markdown("- **LPIPS** (learned perceptual image patch similarity): how different two images look in the "
                "feature maps of an image network, layer by layer — texture, edges and colour. 0 = identical; "
                "small values are changes a person barely notices.\n"
                "- **DINO distance**: 1 − cosine similarity of the two images' embeddings from a self-supervised "
                "vision transformer — whether the *content* (tissue structure) still reads the same. 0 = same "
                "content.\n\nAn augmentation that keeps both small changes the image without changing what "
                "it shows: a safe training augmentation for stain and tissue.")
if sc.uses_fallback:
    st.warning("**Stand-in metric.** The original LPIPS (AlexNet) or DINO (ViT-S/16) weights are not on this "
               "machine, so the lab measures with substitutes built on EfficientNet-Lite0 features: "
               f"LPIPS column = **{sc.lpips_model}**, DINO column = **{sc.dino_model}**. They rank augmentations "
               "the same way in spirit, but their numbers are not comparable with published LPIPS or DINO values "
               "or with thresholds taken from papers. To measure with the originals, pull the weights (needs "
               "internet once; see the backbone weights in the sidebar or `python -m mai_core backbones`) and "
               "reload this page.", icon="⚠️")
    ui.offer_weights_pull(ds, [n for n, fb in (("lpips-alex", sc.lpips_fallback), ("dino", sc.dino_fallback)) if fb],
                          on_ready=scorer.clear)

# ---------------------------------------------------------------------------------------- preview
st.subheader("Preview")
gallery_ids = tuple(ds.ids[:GALLERY])
cols = st.columns(6)
for i, (key, img) in enumerate(zip(gallery_ids, ui.cached_images(ds, gallery_ids))):
    cols[i % 6].image(img, caption=key, width=96)

c1, c2, c3 = st.columns([2, 3, 1])
picked = c1.multiselect("Images", ds.ids, default=list(ds.ids[:2]), max_selections=4, key="aug_images")
chosen = c2.multiselect("Augmentations", list(A.AUGMENTATIONS), default=PREVIEW_DEFAULT, key="aug_preview")
preview_seed = c3.number_input("Seed", min_value=0, value=0, step=1, key="aug_preview_seed")

if picked and chosen:
    # the perceptual distances take seconds on CPU: measured in the background, kept for reruns
    originals = preview_originals(ds.fingerprint, root, tuple(picked))
    preview_key = f"augpreview:{ds.fingerprint}:{'|'.join(picked)}:{'|'.join(chosen)}:{int(preview_seed)}:{device}"
    preview_task = ui.get_task(preview_key)
    if preview_task is None:
        preview_task = ui.start_task(preview_key, "Augmenting and measuring the preview", _preview_work, originals,
                                     tuple(chosen), int(preview_seed), sc, unit="augmentations")
    ui.progress_panel(preview_key)
    shown = preview_task.result if preview_task.ok else None
    if not preview_task.ok and not preview_task.running and st.button("Preview again", key="aug_preview_again"):
        ui.forget_task(preview_key)
        st.rerun()
    for row, key in enumerate(picked):
        cells = st.columns(len(chosen) + 1)
        cells[0].image(originals[row], caption=f"{key} (original)", width="stretch")
        for j, aug in enumerate(chosen):
            if shown is None:
                cells[j + 1].caption(f"{aug} · being computed" if preview_task.running else f"{aug} · not computed")
                continue
            res = shown[aug]
            cells[j + 1].image(res["images"][row], width="stretch",
                               caption=f"{aug} · LPIPS {res['lpips'][row]:.3f} · DINO {res['dino'][row]:.3f}")
else:
    st.info("Pick at least one image and one augmentation to preview.")

with st.expander("Registered augmentations and their parameters"):
    reg = [{"augmentation": s.name, "default p": s.default_p, "kind": s.kind, "description": s.description,
            "parameters": ", ".join(f"{p.name}={p.default:g} [{p.low:g}, {p.high:g}]" for p in s.params)}
           for s in A.AUGMENTATIONS.values()]
    st.dataframe(pd.DataFrame(reg), hide_index=True)

# ---------------------------------------------------------------------------------------- scoring
st.subheader("Score distributions")
with st.form("aug_score_form"):
    f1, f2, f3 = st.columns(3)
    n = f1.number_input("Images sampled", min_value=1, max_value=max(1, ds.n_train), value=min(16, ds.n_train),
                        key="score_n")
    k = f2.number_input("Augmented versions per image (k)", min_value=1, max_value=16, value=2, key="score_k")
    seed = f3.number_input("Seed", min_value=0, value=0, step=1, key="score_seed")
    augs = st.multiselect("Augmentations to score", list(A.AUGMENTATIONS), default=list(A.AUGMENTATIONS),
                          key="score_augs")
    if st.form_submit_button("Score augmentations", type="primary", key="score_submit"):
        if augs:
            st.session_state["aug_score_request"] = (int(n), int(k), tuple(augs), int(seed))
            st.session_state["_aug_score_fresh"] = True  # a failed or cancelled scoring of this sample reruns
        else:
            st.warning("Pick at least one augmentation to score.")

request = st.session_state.get("aug_score_request")
if request is None:
    st.info("Choose a sample and press **Score augmentations**. Scores are cached: thresholds below do not "
            "recompute them.")
    st.stop()

n_req, k_req, augs_req, seed_req = request
key = score_key(ds.fingerprint, n_req, k_req, augs_req, seed_req, device)
task = ui.get_task(key)
if task is None or (not task.running and not task.ok and st.session_state.pop("_aug_score_fresh", False)):
    ui.forget_task(key)
    task = ui.start_task(key, "Scoring augmentations", _score_work, ds, n_req, k_req, augs_req, seed_req, sc,
                         unit="image versions")
ui.progress_panel(key)
if not task.ok:
    if not task.running:
        st.caption("Press **Score augmentations** to score again.")
    st.stop()
report = task.result
summary, pairs = report.summary, report.pairs
st.caption(f"{summary['n'].iat[0]} images × {k_req} versions · LPIPS: **{report.lpips_model}** · "
           f"DINO: **{report.dino_model}**")

lp_top, lp_step, lp_dec = ui.slider_range(max(float(summary["lpips_mean"].max()), 1e-3))
dn_top, dn_step, dn_dec = ui.slider_range(max(float(summary["dino_mean"].max()), 1e-3))
defaults = A.default_thresholds(report.lpips_model, report.dino_model)
hue_top, hue_step, hue_dec = ui.slider_range(max(float(summary["hue_mean"].max()), defaults["max_hue"], 1.0))
lp_top = max(lp_top, defaults["max_lpips"] or 0.0)
dn_top = max(dn_top, defaults["max_dino"] or 0.0)


def start(default, top):
    return float(default) if default is not None else top


t1, t2, t3 = st.columns(3)
max_lpips = t1.slider(f"Max LPIPS ({report.lpips_model})", 0.0, lp_top, start(defaults["max_lpips"], lp_top), step=lp_step,
                      format=f"%.{lp_dec}f", key="max_lpips",
                      help="augmentations whose mean LPIPS is at most this are kept; the range reaches the "
                           "largest mean, so at the top every scored augmentation that changes the image is kept")
max_dino = t2.slider(f"Max DINO ({report.dino_model})", 0.0, dn_top, start(defaults["max_dino"], dn_top), step=dn_step,
                     format=f"%.{dn_dec}f", key="max_dino",
                     help="augmentations whose mean DINO distance is at most this are kept")
max_hue = t3.slider("Max hue rotation (degrees)", 0.0, hue_top, start(defaults["max_hue"], hue_top), step=hue_step,
                    format=f"%.{hue_dec}f", key="max_hue",
                    help="augmentations whose mean hue rotation is at most this are kept")
st.caption("Sliders start at the default thresholds"
           + ("" if defaults["max_lpips"] is not None else " (none for these metrics: they start at the maximum)")
           + " · " + ", ".join(f"{k.replace('max_', '')} ≤ {v:g}" for k, v in defaults.items() if v is not None))
kept = A.kept_mask(summary, max_lpips, max_dino, max_hue).to_numpy()
status = pd.Series(kept, index=summary["aug"]).map({True: "kept", False: "rejected"})
table = summary.assign(kept=kept)

p1, p2 = st.columns(2)
plot_pairs = pairs.assign(status=pairs["aug"].map(status))
colours = {"kept": "#2e7d32", "rejected": "#c62828"}
for col, metric, limit, model in ((p1, "lpips", max_lpips, report.lpips_model),
                                  (p2, "dino", max_dino, report.dino_model)):
    fig = px.box(plot_pairs, x="aug", y=metric, color="status", color_discrete_map=colours,
                 category_orders={"aug": list(summary["aug"])}, points="outliers",
                 title=f"{metric.upper()} per image ({model})")
    fig.add_hline(y=limit, line_dash="dash", annotation_text="threshold", annotation_position="top left")
    fig.update_layout(xaxis_title="", yaxis_title=f"{metric.upper()} distance to the original", height=420,
                      boxmode="overlay", xaxis_tickangle=-35)
    ui.tidy(fig, legend="below")
    col.plotly_chart(fig, key=f"box_{metric}", config=ui.PLOT_CONFIG)

points = table.assign(status=status.to_numpy())
spots = ui.label_positions(points["lpips_mean"], points["dino_mean"], points["aug"], width_px=900, height_px=380)
bar = go.Figure()
for state in ("kept", "rejected"):
    sel = (points["status"] == state).to_numpy()
    if sel.any():
        bar.add_trace(go.Scatter(
            x=points["lpips_mean"][sel], y=points["dino_mean"][sel], mode="markers+text", name=state,
            text=points["aug"][sel], textposition=[p for p, keep in zip(spots, sel) if keep],
            marker=dict(color=colours[state], size=9),
            error_x=dict(array=points["lpips_std"][sel], thickness=1), error_y=dict(array=points["dino_std"][sel],
                                                                                    thickness=1),
            hovertemplate="%{text}<br>LPIPS %{x:.4f}<br>DINO %{y:.4f}<extra>" + state + "</extra>"))
bar.add_vline(x=max_lpips, line_dash="dash", line_color="#555")
bar.add_hline(y=max_dino, line_dash="dash", line_color="#555")
bar.update_layout(title="Mean distances per augmentation (± std over images and versions)", height=480,
                  xaxis_title=f"mean LPIPS ({report.lpips_model})", yaxis_title=f"mean DINO ({report.dino_model})")
ui.tidy(bar, legend="below")
st.plotly_chart(bar, key="means", config=ui.PLOT_CONFIG)
st.caption("Dashed lines: the thresholds. Kept = at or under both lines, hue rotation within its threshold "
           "(and not a no-op).")

kept_names = [a for a, keep in zip(summary["aug"], kept) if keep]
st.markdown(f"**Kept ({len(kept_names)})**: {', '.join(kept_names) or '—'}")
st.dataframe(table[["aug", "lpips_mean", "lpips_std", "dino_mean", "dino_std", "geometry_mean", "hue_mean", "kept",
                    "params"]],
             hide_index=True, key="kept_table", width="stretch",
             column_config={"aug": st.column_config.TextColumn("augmentation"),
                            "lpips_mean": st.column_config.NumberColumn("mean LPIPS", format="%.4f"),
                            "lpips_std": st.column_config.NumberColumn("LPIPS std", format="%.4f"),
                            "dino_mean": st.column_config.NumberColumn("mean DINO", format="%.4f"),
                            "dino_std": st.column_config.NumberColumn("DINO std", format="%.4f"),
                            "geometry_mean": st.column_config.NumberColumn("mean geometry", format="%.4f"),
                            "hue_mean": st.column_config.NumberColumn("mean hue rotation (°)", format="%.2f"),
                            "params": st.column_config.TextColumn("parameters", width="large")})

# ---------------------------------------------------------------------------------------- save
st.subheader("Save as training policy")
s1, s2 = st.columns([3, 1], vertical_alignment="bottom")
name = s1.text_input("Policy name", value="lab_policy", key="policy_name")
clicked = s2.button("Save policy", key="save_policy")


def _save_policy(overwrite: bool):
    pol = A.select_policy(table, max_lpips, max_dino, name, max_hue)
    path = A.save_policy(pol)
    from mai_core.app.training import policy_choices

    policy_choices.clear()  # the sidebar's training form lists it right away
    return pol, path


from mai_core.workspace import policies_dir  # noqa: E402

ui.save_with_confirmation("save_policy", "policy", name.strip(),
                          policies_dir() / f"{name.strip()}.yaml" if name.strip() else None, clicked, _save_policy,
                          lambda r: f"Saved **{r[0].name}** ({len(r[0].items)} augmentations) to `{r[1]}`: "
                                    f"{r[0].describe()}")

st.markdown("**Available policies** (pick one in the training form)")
st.dataframe(pd.DataFrame(A.policy_table(data_dir=root)), hide_index=True, key="policy_list")
