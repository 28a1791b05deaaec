"""Augmentation Lab: see what each augmentation does to tissue, how far it moves an image perceptually,
and save the augmentations under chosen thresholds as a training policy."""

import pandas as pd
import plotly.express as px
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


@st.cache_data(show_spinner="Augmenting the selected images…", max_entries=16)
def preview(fingerprint: str, root: str, ids: tuple, augs: tuple, seed: int, device: str):
    data = ui.cached_dataset(root)
    index = {k: i for i, k in enumerate(data.ids)}
    images = data.images("train", [index[i] for i in ids])
    return images, A.preview_pairs(images, list(augs), seed=seed, scorer=scorer(device))


@st.cache_data(show_spinner="Scoring augmentations (every image × every augmentation × k)…", max_entries=8)
def scores(fingerprint: str, root: str, n: int, k: int, augs: tuple, seed: int, device: str) -> A.ScoreReport:
    return A.score_dataset(ui.cached_dataset(root), n=n, k=k, augs=list(augs), seed=seed, scorer=scorer(device))


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
if sc.uses_fallback:
    st.warning("Substitute metric in use: "
               + " · ".join(n for n in sc.notes)
               + ". Distances are comparable between augmentations, not with published LPIPS/DINO values. "
               "Place the AlexNet / DINO weights in the local caches to use the original metrics.")
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
    originals, shown = preview(ds.fingerprint, root, tuple(picked), tuple(chosen), int(preview_seed), device)
    for row, key in enumerate(picked):
        cells = st.columns(len(chosen) + 1)
        cells[0].image(originals[row], caption=f"{key} (original)", width="stretch")
        for j, aug in enumerate(chosen):
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
        else:
            st.warning("Pick at least one augmentation to score.")

request = st.session_state.get("aug_score_request")
if request is None:
    st.info("Choose a sample and press **Score augmentations**. Scores are cached: thresholds below do not "
            "recompute them.")
    st.stop()

n_req, k_req, augs_req, seed_req = request
try:
    report = scores(ds.fingerprint, root, n_req, k_req, augs_req, seed_req, device)
except MaiError as exc:
    ui.show_error(exc)
    st.stop()
summary, pairs = report.summary, report.pairs
st.caption(f"{summary['n'].iat[0]} images × {k_req} versions · LPIPS: **{report.lpips_model}** · "
           f"DINO: **{report.dino_model}**")

lp_top = float(max(summary["lpips_mean"].max(), 1e-3)) * 1.05
dn_top = float(max(summary["dino_mean"].max(), 1e-3)) * 1.05
t1, t2 = st.columns(2)
max_lpips = t1.slider(f"Max LPIPS ({report.lpips_model})", 0.0, round(lp_top, 4), round(lp_top, 4),
                      step=round(lp_top / 200, 5), format="%.4f", key="max_lpips")
max_dino = t2.slider(f"Max DINO ({report.dino_model})", 0.0, round(dn_top, 4), round(dn_top, 4),
                     step=round(dn_top / 200, 5), format="%.4f", key="max_dino")
kept = A.kept_mask(summary, max_lpips, max_dino).to_numpy()
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
    fig.add_hline(y=limit, line_dash="dash", annotation_text="threshold")
    fig.update_layout(xaxis_title="", yaxis_title="distance", height=380, legend_title_text="", boxmode="overlay")
    col.plotly_chart(fig, key=f"box_{metric}")

bar = px.scatter(table.assign(status=status.to_numpy()), x="lpips_mean", y="dino_mean", text="aug",
                 color="status", color_discrete_map=colours,
                 error_x="lpips_std", error_y="dino_std", title="Mean distances (± std)")
bar.add_vline(x=max_lpips, line_dash="dash")
bar.add_hline(y=max_dino, line_dash="dash")
bar.update_traces(textposition="top center")
bar.update_layout(xaxis_title=f"LPIPS ({report.lpips_model})", yaxis_title=f"DINO ({report.dino_model})", height=420)
st.plotly_chart(bar, key="means")

kept_names = [a for a, keep in zip(summary["aug"], kept) if keep]
st.markdown(f"**Kept ({len(kept_names)})**: {', '.join(kept_names) or '—'}")
st.dataframe(table[["aug", "lpips_mean", "lpips_std", "dino_mean", "dino_std", "kept", "params"]],
             hide_index=True, key="kept_table")

# ---------------------------------------------------------------------------------------- save
st.subheader("Save as training policy")
s1, s2 = st.columns([3, 1])
name = s1.text_input("Policy name", value="lab_policy", key="policy_name")
if s2.button("Save policy", key="save_policy"):
    try:
        pol = A.select_policy(table, max_lpips, max_dino, name)
        path = A.save_policy(pol)
        from mai_core.app.training import policy_choices

        policy_choices.clear()  # the sidebar's training form lists it right away
        st.success(f"Saved **{pol.name}** ({len(pol.items)} augmentations) to `{path}`: {pol.describe()}")
    except MaiError as exc:
        ui.show_error(exc)

st.markdown("**Available policies** (pick one in the training form)")
st.dataframe(pd.DataFrame(A.policy_table(data_dir=root)), hide_index=True, key="policy_list")
