"""Ridge regression on frozen embeddings (the HEST-Benchmark baseline protocol).

embeddings → standardise → (optional) PCA → ridge, with the penalty chosen on the validation split
from a log-spaced grid. All alphas are solved at once from one SVD. The fitted map is affine, so it is
folded into a single ``nn.Linear`` head of the expression model: a ridge run is an ordinary run
directory that ``predict`` and ``evaluate`` use like any other.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

DEFAULT_ALPHAS = tuple(float(a) for a in np.logspace(-1, 5, 13))


@dataclass
class RidgeFit:
    weight: np.ndarray  # (d_in, G): prediction = features @ weight + bias (standardised targets)
    bias: np.ndarray  # (G,)
    alpha: float
    pca: int
    scores: dict = field(default_factory=dict)  # alpha -> validation gene-wise PCC


def _gene_pcc(y: np.ndarray, p: np.ndarray) -> float:
    from mai_core.metrics import gene_pearson

    return gene_pearson(y, p)[0]


def thin_svd(x: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``u, s, vt`` of ``x`` (n×d) from the eigen-decomposition of its smaller Gram matrix, largest first.

    Ridge needs only the directions that carry variance: components with s below 1e-9 of the largest are
    dropped (ridge shrinks them to nothing anyway). On a small CPU the Gram route took under a millisecond
    where LAPACK's SVD of the same 64×1280 matrix took 0.4-1.6 s.
    """
    wide = x.shape[0] <= x.shape[1]
    lam, vecs = np.linalg.eigh(x @ x.T if wide else x.T @ x)
    order = np.argsort(lam)[::-1]
    lam, vecs = lam[order], vecs[:, order]
    s = np.sqrt(np.clip(lam, 0.0, None))
    keep = s > (s[0] if len(s) else 0.0) * 1e-9
    s, vecs = s[keep], vecs[:, keep]
    if wide:
        return vecs, s, (vecs.T @ x) / s[:, None]
    return (x @ vecs) / s, s, vecs.T


def fit_ridge(f_train: np.ndarray, y_train: np.ndarray, f_val: np.ndarray | None = None,
              y_val: np.ndarray | None = None, alphas=DEFAULT_ALPHAS, pca: int = 256) -> RidgeFit:
    """Fit ridge on (features, standardised targets); choose alpha by validation gene PCC.

    Without a validation set, alpha is chosen by leave-one-out error (closed form for ridge). BLAS runs on one
    thread here: these matrices are small, and on a busy 2-core machine two BLAS threads made the fit 4-12x
    slower than one (``bench/train_throughput.py`` prints the fit time).
    """
    from threadpoolctl import threadpool_limits

    with threadpool_limits(limits=1, user_api="blas"):
        return _fit(f_train, y_train, f_val, y_val, alphas, pca)


def _fit(f_train, y_train, f_val, y_val, alphas, pca) -> RidgeFit:
    f_train = np.asarray(f_train, dtype=np.float64)
    y_train = np.asarray(y_train, dtype=np.float64)
    mu = f_train.mean(0)
    sd = f_train.std(0)
    sd = np.where(sd > 1e-8, sd, 1.0)
    xs = (f_train - mu) / sd
    proj = None  # no PCA: the standardised features themselves (no d×d identity product)
    k = 0
    if pca and 0 < pca < min(xs.shape):
        _, _, vt = thin_svd(xs)
        proj = vt[:pca].T
        k = int(pca)
    xp = xs if proj is None else xs @ proj
    y_mu = y_train.mean(0)
    yc = y_train - y_mu
    u, s, vt = thin_svd(xp)
    uty = u.T @ yc

    def weights_for(alpha: float) -> np.ndarray:
        return vt.T @ ((s / (s * s + alpha))[:, None] * uty)

    scores: dict[float, float] = {}
    if f_val is not None and y_val is not None and len(f_val) >= 2:
        xv = (np.asarray(f_val, dtype=np.float64) - mu) / sd
        xv = xv if proj is None else xv @ proj
        for a in alphas:
            scores[float(a)] = _gene_pcc(np.asarray(y_val, dtype=np.float64), xv @ weights_for(a) + y_mu)
        finite = {a: v for a, v in scores.items() if np.isfinite(v)}
        best = max(finite, key=finite.get) if finite else float(np.median(alphas))
    else:
        # generalised cross-validation style: leave-one-out residuals from the hat matrix diagonal
        uty = u.T @ yc
        for a in alphas:
            d = s * s / (s * s + a)  # hat matrix H = U diag(d) U^T, never formed (n×n)
            fitted = u @ (d[:, None] * uty)
            resid = (yc - fitted) / (1 - (u * u) @ d)[:, None].clip(1e-6)
            scores[float(a)] = -float(np.mean(resid ** 2))
        best = max(scores, key=scores.get)
    w_p = weights_for(best)
    # fold standardisation and projection into one affine map on raw features
    weight = (w_p if proj is None else proj @ w_p) / sd[:, None]
    bias = y_mu - mu @ weight
    return RidgeFit(weight=weight.astype(np.float32), bias=bias.astype(np.float32), alpha=float(best),
                    pca=k, scores=scores)


def predict_ridge(fit: RidgeFit, features: np.ndarray) -> np.ndarray:
    return (np.asarray(features, dtype=np.float32) @ fit.weight + fit.bias).astype(np.float32)
