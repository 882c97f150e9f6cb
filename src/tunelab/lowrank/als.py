"""Explicit-feedback matrix factorisation by alternating least squares (ALS).

Model: r̂_ui = μ + b_u + c_i + p_u·q_i (with ``biases``), or r̂_ui = p_u·q_i
without them, which is exactly Spark ML's ALS model. Objective over the observed
training ratings:

    Σ (r_ui - r̂_ui)² + λ Σ_u n_uʷ ‖p_u‖² + λ Σ_i n_iʷ ‖q_i‖²
                     + λ_b (Σ_u n_uʷ b_u² + Σ_i n_iʷ c_i²)

with w = 1 when ``weighted_reg`` (ALS-WR, Zhou et al. 2008, Spark's scaling)
and w = 0 otherwise; μ is the training mean and stays fixed. With the items
fixed, each user's [p_u, b_u] is the solution of a (k+1) x (k+1) ridge system
(item rows augmented with a constant 1, targets r - μ - c_i); the solves for all
users are one batched ``np.linalg.solve``, and the normal matrices are built for
all users at once as one sparse-dense product (the user x item indicator matrix
times the items' flattened outer products z zᵀ, scipy), so there is no Python
loop over ratings or users. Items are solved the same way. Each half-step
minimises the objective exactly, so it never increases.

Simplified: the (k+1)² outer products of the fixed side are held in memory
(fine for MovieLens sizes; a huge catalogue at high rank would need chunks); μ
is not learnt; users or items without training ratings keep zero factors and
biases (they are predicted μ + the other side's bias); no implicit feedback, no
confidence weights.
"""

from __future__ import annotations

import time
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from tunelab.errors import TunelabError

# ---------------------------------------------------------------------------- data


@dataclass(frozen=True)
class Ratings:
    """Ratings as parallel arrays of dense user/item indices (0..n-1) and values."""

    users: np.ndarray
    items: np.ndarray
    values: np.ndarray
    n_users: int
    n_items: int

    def __len__(self) -> int:
        return len(self.values)

    def subset(self, index: np.ndarray) -> Ratings:
        return Ratings(
            self.users[index], self.items[index], self.values[index], self.n_users, self.n_items
        )


@dataclass(frozen=True)
class Truth:
    """The planted model of synthetic ratings."""

    mu: float
    user_bias: np.ndarray
    item_bias: np.ndarray
    p: np.ndarray
    q: np.ndarray

    def signal(self) -> np.ndarray:
        """Noise-free ratings of every user x item pair."""
        return self.mu + self.user_bias[:, None] + self.item_bias[None, :] + self.p @ self.q.T


COLUMNS = ("userId", "movieId", "rating")


def load_ratings(path: Path) -> Ratings:
    """MovieLens ratings: a userId,movieId,rating CSV, or a GroupLens zip holding one."""
    import pandas as pd

    path = Path(path)
    if not path.is_file():
        raise TunelabError(str(path), "ratings file not found")
    where = str(path)
    try:
        if path.suffix == ".zip":
            with zipfile.ZipFile(path) as zf:
                members = [n for n in zf.namelist() if n.rsplit("/", 1)[-1] == "ratings.csv"]
                if len(members) != 1:
                    raise TunelabError(where, f"expected one ratings.csv inside, found {members}")
                where = f"{path}:{members[0]}"
                with zf.open(members[0]) as fh:
                    frame = pd.read_csv(fh, dtype=str)
        else:
            frame = pd.read_csv(path, dtype=str)
    except (zipfile.BadZipFile, pd.errors.ParserError, UnicodeDecodeError) as err:
        raise TunelabError(where, f"cannot parse ({str(err).splitlines()[0]})") from None
    missing = [c for c in COLUMNS if c not in frame.columns]
    if missing:
        raise TunelabError(where, f"missing column(s) {missing} (have {list(frame.columns)})")
    values = pd.to_numeric(frame["rating"].str.strip(), errors="coerce")
    for col, series in (("userId", frame["userId"]), ("movieId", frame["movieId"])):
        bad = series.isna() | (series.str.strip() == "")
        if bad.any():
            row = int(np.flatnonzero(bad.to_numpy())[0])
            raise TunelabError(f"{where} line {row + 2}", f"empty {col}")
    bad = values.isna().to_numpy() | ~np.isfinite(values.to_numpy(dtype=float, na_value=np.nan))
    if bad.any():
        row = int(np.flatnonzero(bad)[0])
        raise TunelabError(
            f"{where} line {row + 2}", f"rating {frame['rating'].iloc[row]!r} is not a number"
        )
    if len(frame) == 0:
        raise TunelabError(where, "no ratings")
    users, _ = pd.factorize(frame["userId"].str.strip())
    items, _ = pd.factorize(frame["movieId"].str.strip())
    return Ratings(
        users.astype(np.int64),
        items.astype(np.int64),
        values.to_numpy(dtype=np.float64),
        int(users.max()) + 1,
        int(items.max()) + 1,
    )


def synthetic_ratings(p: Any) -> tuple[Ratings, Truth]:
    """Ratings from a planted low-rank model plus Gaussian noise (params: lowrank.als.synthetic)."""
    rng = np.random.default_rng(p.seed)
    truth = Truth(
        mu=p.global_mean,
        user_bias=rng.normal(0.0, p.bias_std, p.users),
        item_bias=rng.normal(0.0, p.bias_std, p.items),
        p=rng.normal(0.0, p.factor_std, (p.users, p.rank)),
        q=rng.normal(0.0, p.factor_std, (p.items, p.rank)),
    )
    n = round(p.density * p.users * p.items)
    flat = np.sort(rng.choice(p.users * p.items, size=n, replace=False))
    users, items = np.divmod(flat, p.items)
    clean = (
        truth.mu
        + truth.user_bias[users]
        + truth.item_bias[items]
        + np.einsum("nk,nk->n", truth.p[users], truth.q[items])
    )
    values = clean + rng.normal(0.0, p.noise_std, n)
    return Ratings(users, items, values, p.users, p.items), truth


def random_split(ratings: Ratings, test_fraction: float, seed: int) -> tuple[Ratings, Ratings]:
    """A seeded uniform random split of the ratings (not per user, not by time)."""
    rng = np.random.default_rng(seed)
    order = rng.permutation(len(ratings))
    n_test = round(test_fraction * len(ratings))
    if n_test == 0 or n_test == len(ratings):
        raise TunelabError(
            "lowrank.als.split.test_fraction", f"leaves an empty side with {len(ratings)} ratings"
        )
    return ratings.subset(np.sort(order[n_test:])), ratings.subset(np.sort(order[:n_test]))


# ---------------------------------------------------------------------------- ALS


class Groups:
    """The ratings of one side (users or items) as a CSR matrix skeleton, sorted once.

    Row g holds the ratings of user (or item) g; ``matrix(data)`` fills the
    skeleton with one value per rating, so per-row sums become one sparse-dense
    product (scipy, compiled) instead of a Python loop.
    """

    def __init__(self, keys: np.ndarray, others: np.ndarray, n: int, n_other: int) -> None:
        self.order = np.argsort(keys, kind="stable")
        self.counts = np.bincount(keys, minlength=n)
        self.indptr = np.concatenate([[0], np.cumsum(self.counts)])
        self.indices = others[self.order]
        self.n, self.shape = n, (n, n_other)
        self.ones = self.matrix(np.ones(len(keys)))

    def matrix(self, data: np.ndarray) -> Any:
        from scipy.sparse import csr_array

        return csr_array((data[self.order], self.indices, self.indptr), shape=self.shape)


def solve_side(
    groups: Groups,
    other: np.ndarray,
    target: np.ndarray,
    y: np.ndarray,
    y_bias: np.ndarray | None,
    reg: float,
    reg_bias: float,
    weighted: bool,
) -> tuple[np.ndarray, np.ndarray | None]:
    """Closed-form update of one side: every row's ridge system, solved in one batch.

    ``other`` holds each rating's index on the fixed side, ``target`` its rating
    minus μ, ``y``/``y_bias`` the fixed side's factors/biases (``y_bias`` None: a
    model without biases). Row g's system is (Σ z zᵀ + n_gʷ Λ) x = Σ z t over its
    ratings, with z = [y_j, 1] and t = target - bias_j. Returns (factors, biases).
    """
    k = y.shape[1]
    z = y
    t = target
    if y_bias is not None:
        z = np.hstack([y, np.ones((len(y), 1))])
        t = target - y_bias[other]
    d = z.shape[1]
    outer = (z[:, :, None] * z[:, None, :]).reshape(len(z), d * d)
    gram = (groups.ones @ outer).reshape(groups.n, d, d)
    rhs = groups.matrix(t) @ z
    penalty = np.full(d, reg)
    if y_bias is not None:
        penalty[k] = reg_bias
    scale = groups.counts.astype(np.float64) if weighted else np.ones(groups.n)
    gram += scale[:, None, None] * np.diag(penalty)[None]
    gram[groups.counts == 0] = np.eye(d)  # no ratings: rhs is 0, so the solution is 0
    sol = np.linalg.solve(gram, rhs[..., None])[..., 0]
    return sol[:, :k], (sol[:, k] if y_bias is not None else None)


@dataclass
class AlsModel:
    mu: float
    user_bias: np.ndarray
    item_bias: np.ndarray
    p: np.ndarray
    q: np.ndarray
    clip: tuple[float, float] | None

    def raw(self, users: np.ndarray, items: np.ndarray) -> np.ndarray:
        return (
            self.mu
            + self.user_bias[users]
            + self.item_bias[items]
            + np.einsum("nk,nk->n", self.p[users], self.q[items])
        )

    def predict(self, users: np.ndarray, items: np.ndarray) -> np.ndarray:
        pred = self.raw(users, items)
        return np.clip(pred, *self.clip) if self.clip else pred

    def signal(self) -> np.ndarray:
        """Unclipped predictions for every user x item pair."""
        return self.mu + self.user_bias[:, None] + self.item_bias[None, :] + self.p @ self.q.T


def rmse(model: AlsModel, data: Ratings) -> float:
    if len(data) == 0:
        return float("nan")
    err = model.predict(data.users, data.items) - data.values
    return float(np.sqrt(np.mean(err**2)))


def objective(model: AlsModel, train: Ratings, m: Any, ug: Groups, ig: Groups) -> float:
    """The regularised least-squares loss that ALS minimises (unclipped predictions)."""
    err = model.raw(train.users, train.items) - train.values
    wu = ug.counts if m.weighted_reg else np.ones(ug.n)
    wi = ig.counts if m.weighted_reg else np.ones(ig.n)
    loss = float(err @ err)
    loss += m.reg * (wu @ np.sum(model.p**2, 1) + wi @ np.sum(model.q**2, 1))
    loss += m.reg_bias * (wu @ model.user_bias**2 + wi @ model.item_bias**2)
    return loss


def fit_als(
    train: Ratings, m: Any, test: Ratings | None = None
) -> tuple[AlsModel, list[dict[str, float]]]:
    """ALS with params ``m`` (lowrank.als.model); one history row per iteration."""
    rng = np.random.default_rng(m.seed)
    k = m.factors
    model = AlsModel(
        mu=float(train.values.mean()) if m.biases else 0.0,
        user_bias=np.zeros(train.n_users),
        item_bias=np.zeros(train.n_items),
        p=rng.normal(0.0, m.init_std, (train.n_users, k)),
        q=rng.normal(0.0, m.init_std, (train.n_items, k)),
        clip=tuple(m.clip) if m.clip else None,
    )
    ug = Groups(train.users, train.items, train.n_users, train.n_items)
    ig = Groups(train.items, train.users, train.n_items, train.n_users)
    model.p[ug.counts == 0] = 0.0  # nothing to learn from: predict from the other side
    model.q[ig.counts == 0] = 0.0
    target = train.values - model.mu
    history = []
    for it in range(1, m.iterations + 1):
        start = time.perf_counter()
        model.p, ub = solve_side(
            ug,
            train.items,
            target,
            model.q,
            model.item_bias if m.biases else None,
            m.reg,
            m.reg_bias,
            m.weighted_reg,
        )
        model.q, ib = solve_side(
            ig,
            train.users,
            target,
            model.p,
            ub if m.biases else None,
            m.reg,
            m.reg_bias,
            m.weighted_reg,
        )
        if m.biases:
            model.user_bias, model.item_bias = ub, ib
        seconds = time.perf_counter() - start
        row = {
            "iteration": it,
            "seconds": seconds,
            "train_rmse": rmse(model, train),
            "objective": objective(model, train, m, ug, ig),
        }
        if test is not None:
            row["test_rmse"] = rmse(model, test)
        history.append(row)
    return model, history


def warm(test: Ratings, train: Ratings) -> Ratings:
    """The test ratings whose user and item both have training ratings."""
    seen_u = np.bincount(train.users, minlength=train.n_users) > 0
    seen_i = np.bincount(train.items, minlength=train.n_items) > 0
    return test.subset(np.flatnonzero(seen_u[test.users] & seen_i[test.items]))


def subspace_angle_deg(a: np.ndarray, b: np.ndarray) -> float:
    """Largest principal angle between the column spaces of a and b, in degrees."""
    qa, _ = np.linalg.qr(a)
    qb, _ = np.linalg.qr(b)
    cos = np.linalg.svd(qa.T @ qb, compute_uv=False)
    k = min(qa.shape[1], qb.shape[1])
    return float(np.degrees(np.arccos(np.clip(cos[:k].min(), -1.0, 1.0))))


def recovery(model: AlsModel, truth: Truth, test: Ratings) -> dict[str, float]:
    """How close the fitted model is to the planted one, on every user x item pair.

    Factor subspaces are compared after centring each column: with biases in the
    model, p_u·q̄ (q̄ the mean item vector) is a per-user constant that the user
    bias can absorb, so only the centred factors are identifiable.
    """
    s_true, s_hat = truth.signal(), model.signal()
    oracle = s_true[test.users, test.items] - test.values

    def centred(a: np.ndarray) -> np.ndarray:
        return a - a.mean(axis=0)

    def corr(a: np.ndarray, b: np.ndarray) -> float:
        return float(np.corrcoef(a, b)[0, 1]) if np.std(a) > 0 and np.std(b) > 0 else 0.0

    return {
        "signal_rel_error": float(
            np.linalg.norm(s_hat - s_true) / np.linalg.norm(s_true - s_true.mean())
        ),
        "user_subspace_angle_deg": subspace_angle_deg(centred(model.p), centred(truth.p)),
        "item_subspace_angle_deg": subspace_angle_deg(centred(model.q), centred(truth.q)),
        "user_bias_corr": corr(model.user_bias, truth.user_bias),
        "item_bias_corr": corr(model.item_bias, truth.item_bias),
        "oracle_test_rmse": float(np.sqrt(np.mean(oracle**2))),
    }
