"""ALS: batched solves equal per-user reference solves, planted-model recovery, MovieLens RMSE."""

from __future__ import annotations

import json
import zipfile
from pathlib import Path

import numpy as np
import pytest
import yaml

from tunelab.config.profiles import leaves
from tunelab.errors import TunelabError
from tunelab.lowrank import als as lals

from .conftest import ROOT, params_dict, run_module, section, shared_dataset


def tiny_ratings(seed: int = 0) -> lals.Ratings:
    """9 users x 7 items, 30 ratings; user 8 and item 6 have none."""
    rng = np.random.default_rng(seed)
    flat = rng.choice(8 * 6, size=30, replace=False)
    users, items = np.divmod(flat, 6)
    return lals.Ratings(users, items, rng.uniform(0.5, 5.0, 30), 9, 7)


@pytest.mark.parametrize("biases", [True, False])
@pytest.mark.parametrize("weighted", [True, False])
def test_batched_solve_equals_a_per_user_reference(biases: bool, weighted: bool) -> None:
    r = tiny_ratings()
    rng = np.random.default_rng(1)
    k, reg, reg_bias = 3, 0.3, 0.7
    q, c = rng.normal(size=(r.n_items, k)), rng.normal(size=r.n_items)
    mu = r.values.mean() if biases else 0.0
    groups = lals.Groups(r.users, r.items, r.n_users, r.n_items)
    p, b = lals.solve_side(
        groups, r.items, r.values - mu, q, c if biases else None, reg, reg_bias, weighted
    )
    for u in range(r.n_users):
        rows = np.flatnonzero(r.users == u)
        if len(rows) == 0:
            assert not p[u].any() and (not biases or b[u] == 0)
            continue
        z = q[r.items[rows]]
        t = r.values[rows] - mu
        if biases:
            z = np.hstack([z, np.ones((len(rows), 1))])
            t = t - c[r.items[rows]]
        n = len(rows) if weighted else 1
        penalty = np.diag([reg] * k + ([reg_bias] if biases else []))
        x = np.linalg.solve(z.T @ z + n * penalty, z.T @ t)
        np.testing.assert_allclose(p[u], x[:k], rtol=1e-10, atol=1e-12)
        if biases:
            assert b[u] == pytest.approx(x[k], rel=1e-10, abs=1e-12)
        else:
            assert b is None
        # the solution is the minimiser: the gradient of the ridge loss vanishes
        grad = z.T @ (z @ x - t) + n * penalty @ x
        assert np.abs(grad).max() < 1e-9


def test_planted_low_rank_model_is_recovered() -> None:
    params = section("lowrank.als")  # the shipped (smoke) profile: synthetic data
    assert params.dataset == "synthetic"
    ratings, truth = lals.synthetic_ratings(params.synthetic)
    assert len(ratings) == round(params.synthetic.density * 1000 * 800)
    assert len(set(zip(ratings.users.tolist(), ratings.items.tolist(), strict=True))) == len(
        ratings
    )
    train, test = lals.random_split(ratings, params.split.test_fraction, params.split.seed)
    model, history = lals.fit_als(train, params.model, test)
    objective = [h["objective"] for h in history]
    assert all(b <= a * (1 + 1e-12) for a, b in zip(objective, objective[1:], strict=False))
    rec = lals.recovery(model, truth, test)
    noise = params.synthetic.noise_std
    assert rec["oracle_test_rmse"] == pytest.approx(noise, rel=0.05)
    assert history[-1]["test_rmse"] < 1.15 * rec["oracle_test_rmse"]  # near the noise floor
    assert rec["signal_rel_error"] < 0.15
    assert rec["user_subspace_angle_deg"] < 10 and rec["item_subspace_angle_deg"] < 10
    assert rec["user_bias_corr"] > 0.95 and rec["item_bias_corr"] > 0.95
    # a wrong rank does worse: rank 1 cannot hold a rank-5 signal
    small = params.model.model_copy(update={"factors": 1})
    _, h1 = lals.fit_als(train, small, test)
    assert h1[-1]["test_rmse"] > 2 * history[-1]["test_rmse"]


def test_subspace_angle() -> None:
    a = np.eye(4)[:, :2]
    assert lals.subspace_angle_deg(a, a @ np.array([[2.0, 1.0], [0.0, 3.0]])) < 1e-6
    b = np.eye(4)[:, [0, 2]]
    assert lals.subspace_angle_deg(a, b) == pytest.approx(90.0)


def gpu_als_params(ratings_path: Path) -> object:
    """lowrank.als with the gpu profile's values (MovieLens hyperparameters)."""
    overlay = yaml.safe_load((ROOT / "profiles/gpu.yaml").read_text())["lowrank"]["als"]
    overrides = {k.replace(".", "__"): v for k, v in leaves(overlay).items()}
    overrides["ratings_path"] = str(ratings_path)
    return section("lowrank.als", **overrides)


def test_movielens_latest_small_rmse_at_most_0_88() -> None:
    path = shared_dataset("movielens", "ml-latest-small", "ratings.csv")
    params = gpu_als_params(path)
    assert params.dataset == "movielens" and params.split.test_fraction == 0.2
    ratings = lals.load_ratings(path)
    assert (len(ratings), ratings.n_users, ratings.n_items) == (100836, 610, 9724)
    train, test = lals.random_split(ratings, 0.2, params.split.seed)
    model, history = lals.fit_als(train, params.model, test)
    rmse = history[-1]["test_rmse"]
    global_mean = np.sqrt(np.mean((test.values - train.values.mean()) ** 2))
    _, biases_only = lals.fit_als(train, params.model.model_copy(update={"factors": 0}), test)
    print(f"ml-latest-small: test RMSE {rmse:.4f}, biases only {biases_only[-1]['test_rmse']:.4f}")
    assert rmse <= 0.88
    assert rmse < biases_only[-1]["test_rmse"] - 0.005 < global_mean - 0.1
    assert lals.rmse(model, lals.warm(test, train)) <= rmse  # cold rows are the hard ones


def test_ratings_loader_reads_zip_and_names_bad_rows(tmp_path: Path) -> None:
    csv = "userId,movieId,rating,timestamp\r\n1,10,4.0,1\r\n1,20,3.5,2\r\n7,10,5,3\r\n"
    with zipfile.ZipFile(tmp_path / "ml.zip", "w") as zf:
        zf.writestr("ml-latest-small/movies.csv", "movieId,title\n")
        zf.writestr("ml-latest-small/ratings.csv", csv)
    r = lals.load_ratings(tmp_path / "ml.zip")
    assert (len(r), r.n_users, r.n_items) == (3, 2, 2)
    assert r.users.tolist() == [0, 0, 1] and r.items.tolist() == [0, 1, 0]
    assert r.values.tolist() == [4.0, 3.5, 5.0]
    (tmp_path / "bad.csv").write_text(csv + "7,20,five,4\r\n")
    with pytest.raises(TunelabError, match=r"bad.csv line 5: rating 'five' is not a number"):
        lals.load_ratings(tmp_path / "bad.csv")
    (tmp_path / "cols.csv").write_text("user,movieId,rating\n1,2,3\n")
    with pytest.raises(TunelabError, match=r"missing column\(s\) \['userId'\]"):
        lals.load_ratings(tmp_path / "cols.csv")
    (tmp_path / "empty_id.csv").write_text("userId,movieId,rating\n1,2,3\n,2,4\n")
    with pytest.raises(TunelabError, match="empty_id.csv line 3: empty userId"):
        lals.load_ratings(tmp_path / "empty_id.csv")
    with pytest.raises(TunelabError, match="ratings file not found"):
        lals.load_ratings(tmp_path / "absent.csv")


def test_als_params_validate() -> None:
    with pytest.raises(ValueError, match="dataset movielens needs ratings_path"):
        section("lowrank.als", dataset="movielens")
    with pytest.raises(ValueError, match="factors 0 without biases"):
        section("lowrank.als", model__factors=0, model__biases=False)
    with pytest.raises(ValueError, match="low < high"):
        section("lowrank.als", model__clip=[5.0, 1.0])


def run_stage(tmp_path: Path, **als: object) -> tuple[object, Path]:
    params = params_dict()
    params["lowrank"]["als"] |= als
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params, allow_unicode=True))
    res = run_module(["stages.als"], cwd=tmp_path, env={"PYTHONPATH": str(ROOT)}, timeout=300)
    return res, tmp_path


def test_als_stage_writes_metrics_curves_and_plots(tmp_path: Path) -> None:
    res, work = run_stage(tmp_path)
    assert res.returncode == 0, res.stderr
    m = json.loads((work / "reports/metrics/als/synthetic.json").read_text())
    assert m["test_rmse"] < 1.15 * m["recovery"]["oracle_test_rmse"]
    assert m["test_rmse"] < m["baselines"]["biases_only_test_rmse"]
    assert m["baselines"]["biases_only_test_rmse"] < m["baselines"]["global_mean_test_rmse"]
    assert m["iterations"] == 15 and "seconds_per_iteration" not in m  # metrics: deterministic
    timing = json.loads((work / "reports/als/synthetic/timing.json").read_text())
    assert timing["seconds_per_iteration"] > 0 and timing["threads"] == 1
    curve = (work / "reports/als/synthetic/curve.tsv").read_text().splitlines()
    assert curve[0].split("\t")[:3] == ["iteration", "train_rmse", "test_rmse"]
    assert len(curve) == 16
    for name in ("convergence.png", "recovery.png"):
        assert (work / "reports/als/synthetic" / name).read_bytes()[:4] == b"\x89PNG"


def test_als_stage_stops_on_missing_ratings_and_writes_nothing(tmp_path: Path) -> None:
    res, work = run_stage(tmp_path, dataset="movielens", ratings_path="data/raw/none.csv")
    assert res.returncode == 1
    assert res.stderr.strip().splitlines()[-1] == (
        "error: data/raw/none.csv: ratings file not found"
    )
    assert not (work / "reports").exists()
