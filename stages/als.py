"""Stage als: explicit-feedback ALS on planted synthetic ratings (smoke) or MovieLens (gpu).

    python -m stages.als

Reads params lowrank.als (and, for dataset movielens, the ratings file it names).
Writes reports/metrics/als/<dataset>.json (test RMSE, baselines, time per
iteration; for synthetic data, recovery of the planted model) and
reports/als/<dataset>/: curve.tsv (per-iteration curves, a dvc plot),
timing.json (wall time per iteration: kept out of the metrics, which must not
change when nothing else does), convergence.png and, for synthetic data, recovery.png.
"""

from __future__ import annotations

from pathlib import Path

from tunelab import provenance
from tunelab.runtime import run_stage

OUT = Path("reports/als")
METRICS = Path("reports/metrics/als")


def als() -> None:
    from tunelab.config import load_section

    params = load_section("lowrank.als")
    from threadpoolctl import threadpool_limits

    with provenance.Timer() as timer, threadpool_limits(limits=params.threads):
        fit = fit_all(params)
    metrics, timing = summarise(params, fit)
    write_outputs(params, fit, metrics, timing)
    print_summary(params, fit, metrics, timing, timer.seconds)


def fit_all(params: object) -> dict:
    """Ratings, split, the ALS model, the biases-only baseline, the global-mean RMSE and,
    for synthetic data, the recovery of the planted model."""
    import numpy as np

    from tunelab.lowrank import als as lals

    truth = None
    if params.dataset == "synthetic":
        ratings, truth = lals.synthetic_ratings(params.synthetic)
    else:
        ratings = lals.load_ratings(Path(params.ratings_path))
    train, test = lals.random_split(ratings, params.split.test_fraction, params.split.seed)
    model, history = lals.fit_als(train, params.model, test)
    biases_only = params.model.model_copy(update={"factors": 0, "biases": True})
    _, baseline = lals.fit_als(train, biases_only, test)
    global_mean = float(np.sqrt(np.mean((test.values - train.values.mean()) ** 2)))
    warm = lals.warm(test, train)
    recovery = lals.recovery(model, truth, test) if truth is not None else None
    return dict(
        ratings=ratings,
        truth=truth,
        train=train,
        test=test,
        model=model,
        history=history,
        baseline=baseline,
        global_mean=global_mean,
        warm=warm,
        recovery=recovery,
    )


def summarise(params: object, fit: dict) -> tuple[dict, dict]:
    """(the metrics file, the timing file). Wall times vary run to run: they stay out of
    the metrics, which must be byte-identical when the stage reruns (dvc metrics diff)."""
    import numpy as np

    from tunelab.lowrank import als as lals

    history, ratings = fit["history"], fit["ratings"]
    seconds = [h["seconds"] for h in history]
    timing = {
        "seconds_per_iteration": round(float(np.median(seconds)), 4),
        "fit_seconds": round(float(np.sum(seconds)), 3),
        "threads": params.threads,
    }
    metrics = {
        "dataset": params.dataset,
        "ratings": len(ratings),
        "users": ratings.n_users,
        "items": ratings.n_items,
        "train_ratings": len(fit["train"]),
        "test_ratings": len(fit["test"]),
        "test_ratings_warm": len(fit["warm"]),
        "factors": params.model.factors,
        "iterations": params.model.iterations,
        "train_rmse": round(history[-1]["train_rmse"], 5),
        "test_rmse": round(history[-1]["test_rmse"], 5),
        "test_rmse_warm": round(lals.rmse(fit["model"], fit["warm"]), 5),
        "best_iteration": int(np.argmin([h["test_rmse"] for h in history])) + 1,
        "baselines": {
            "global_mean_test_rmse": round(fit["global_mean"], 5),
            "biases_only_test_rmse": round(fit["baseline"][-1]["test_rmse"], 5),
        },
    }
    if fit["recovery"] is not None:
        metrics["recovery"] = {k: round(v, 5) for k, v in fit["recovery"].items()}
        metrics["recovery"]["noise_std"] = params.synthetic.noise_std
    return metrics, timing


def write_outputs(params: object, fit: dict, metrics: dict, timing: dict) -> None:
    """reports/als/<dataset>/ (curve.tsv, timing.json, the plots) and the metrics file."""
    import numpy as np

    from tunelab.io import atomic_dir, dump_json, write_json
    from tunelab.lowrank import plots

    history, baseline, truth = fit["history"], fit["baseline"], fit["truth"]
    constants = {"global mean": fit["global_mean"]}
    if fit["recovery"] is not None:
        constants["oracle (planted model)"] = fit["recovery"]["oracle_test_rmse"]
    with atomic_dir(OUT / params.dataset) as tmp:
        columns = ["iteration", "train_rmse", "test_rmse", "biases_only_test_rmse"]
        columns += ["global_mean_test_rmse", "objective", "seconds"]
        lines = ["\t".join(columns)]
        for h, b in zip(history, baseline, strict=True):
            row = {
                **h,
                "biases_only_test_rmse": b["test_rmse"],
                "global_mean_test_rmse": fit["global_mean"],
            }
            lines.append("\t".join(f"{row[c]:.6g}" for c in columns))
        (tmp / "curve.tsv").write_text("\n".join(lines) + "\n", encoding="utf-8")
        dump_json(tmp / "timing.json", timing)
        plots.als_convergence(
            history,
            baseline,
            constants,
            f"{params.dataset}: k={params.model.factors}, λ={params.model.reg:g}",
            tmp / "convergence.png",
        )
        if truth is not None:
            ratings = fit["ratings"]
            rng = np.random.default_rng(0)
            users = rng.integers(0, ratings.n_users, 5000)
            items = rng.integers(0, ratings.n_items, 5000)
            true = truth.signal()[users, items]
            plots.als_recovery(true, fit["model"].raw(users, items), tmp / "recovery.png")
    write_json(METRICS / f"{params.dataset}.json", metrics)


def print_summary(params: object, fit: dict, metrics: dict, timing: dict, seconds: float) -> None:
    ratings = fit["ratings"]
    b = metrics["baselines"]
    print(
        f"als {params.dataset}: {len(ratings)} ratings ({ratings.n_users} users x "
        f"{ratings.n_items} items), test RMSE {metrics['test_rmse']:.4f} (warm "
        f"{metrics['test_rmse_warm']:.4f}) vs biases only {b['biases_only_test_rmse']:.4f}, "
        f"global mean {b['global_mean_test_rmse']:.4f}; {timing['seconds_per_iteration']:.3f} "
        f"s/iteration"
    )
    if "recovery" in metrics:
        r = metrics["recovery"]
        print(
            f"als recovery: oracle RMSE {r['oracle_test_rmse']:.4f}, signal rel. error "
            f"{r['signal_rel_error']:.4f}, subspace angles {r['user_subspace_angle_deg']:.1f}° "
            f"(users) {r['item_subspace_angle_deg']:.1f}° (items)"
        )
    print(f"als: {seconds:.1f}s")


def main() -> None:
    import argparse

    argparse.ArgumentParser(description=__doc__).parse_args()
    run_stage(als)


if __name__ == "__main__":
    main()
