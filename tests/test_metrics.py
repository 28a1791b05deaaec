import numpy as np
import pytest
from scipy import stats

from mai_core import metrics


@pytest.fixture()
def yp():
    rng = np.random.default_rng(0)
    y = rng.normal(size=(50, 30)) * rng.uniform(0.1, 10, size=30)
    p = 0.6 * y + rng.normal(size=y.shape)
    return y, p


def test_gene_pearson_matches_scipy(yp):
    y, p = yp
    mean, per_gene = metrics.gene_pearson(y, p)
    expected = np.array([stats.pearsonr(y[:, j], p[:, j])[0] for j in range(y.shape[1])])
    np.testing.assert_allclose(per_gene, expected, atol=1e-10)
    assert mean == pytest.approx(expected.mean())


def test_sample_pearson_raw_and_standardised(yp):
    y, p = yp
    mean, per_sample = metrics.sample_pearson(y, p)
    expected = np.array([stats.pearsonr(y[i], p[i])[0] for i in range(y.shape[0])])
    np.testing.assert_allclose(per_sample, expected, atol=1e-10)
    assert mean == pytest.approx(expected.mean())
    mean_s, per_s = metrics.sample_pearson(y, p, standardize=True)
    mu, sd = y.mean(0), y.std(0)
    zs = np.array([stats.pearsonr((y[i] - mu) / sd, (p[i] - mu) / sd)[0] for i in range(y.shape[0])])
    np.testing.assert_allclose(per_s, zs, atol=1e-10)
    # Gene scales differ 100-fold, so raw sample-wise PCC is inflated relative to the standardised one.
    assert mean > mean_s


def test_constant_genes_are_excluded_not_nan_mean(yp):
    y, p = yp
    y = y.copy()
    p = p.copy()
    y[:, 3] = 2.5  # constant truth
    p[:, 7] = 0.0  # constant prediction
    mean, per_gene = metrics.gene_pearson(y, p)
    assert np.isnan(per_gene[3]) and np.isnan(per_gene[7])
    assert np.isfinite(mean)
    assert mean == pytest.approx(np.nanmean(per_gene))
    out = metrics.evaluate_predictions(y, p)
    assert out["n_constant_genes"] == 2


def test_perfect_prediction_scores_one_and_zero_mse(yp):
    y, _ = yp
    out = metrics.evaluate_predictions(y, y.copy(), genes=[f"g{i}" for i in range(y.shape[1])], top_k=(10,))
    assert out["gene_pcc_mean"] == pytest.approx(1.0)
    assert out["sample_pcc_standardised"] == pytest.approx(1.0)
    assert out["mse"] == 0.0
    assert out["gene_pcc_top10"] == pytest.approx(1.0)
    assert set(out["per_gene_pcc"]) == {f"g{i}" for i in range(y.shape[1])}


def test_mse_and_topk(yp):
    y, p = yp
    assert metrics.mse(y, p) == pytest.approx(((y - p) ** 2).mean())
    idx = metrics.top_variable_genes(y, 5)
    var = y.var(0)
    assert set(idx) == set(np.argsort(-var)[:5])
    assert var[idx[0]] == var.max()
    out = metrics.evaluate_predictions(y, p, reference_X=y, top_k=(5,))
    _, per_gene = metrics.gene_pearson(y, p)
    assert out["gene_pcc_top5"] == pytest.approx(per_gene[idx].mean())


def test_shape_mismatch_raises():
    with pytest.raises(ValueError, match="shape mismatch"):
        metrics.gene_pearson(np.zeros((3, 2)), np.zeros((2, 3)))
