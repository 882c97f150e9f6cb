"""ALS on MovieLens latest-small: tunelab's vectorised ALS against Spark ML's ALS, one run.

    pip install pyspark==4.3.0     # bench only (needs Java 17+; not in requirements/)
    python bench/als_bench.py --ratings ../shared/datasets/movielens/ml-latest-small/ratings.csv \\
        --out bench/results/als_movielens.json

Why Spark: ``pyspark.ml.recommendation.ALS`` is the best-known library that
solves the *explicit-feedback* ALS objective, and its objective is exactly
tunelab's with ``biases: false, weighted_reg: true``: r̂ = p_u·q_i, loss
Σ(r - r̂)² + λ(Σ_u n_u‖p_u‖² + Σ_i n_i‖q_i‖²). Other well-known libraries do
not fit: ``implicit`` solves the implicit-feedback (confidence-weighted, all
pairs) objective; Surprise's SVD/SVD++ are fitted by SGD and its ALS only
estimates biases (BaselineOnly); LightFM and Spotlight use SGD on other losses.

Setups, all on the same seeded 80/20 random split (``lowrank.als.split`` of
params.yaml) with rank, λ and iterations from profiles/gpu.yaml's
``lowrank.als.model`` (the MovieLens profile):

* ``tunelab`` - the `als` stage's model (biases, ALS-WR λ, predictions clipped
  to [0.5, 5]), at 1 BLAS thread and at ``--threads``.
* ``tunelab_spark_objective`` - the same code with ``biases: false`` and no
  clipping: Spark's model and objective (no μ either, so cold pairs are
  predicted 0: only its warm RMSE is comparable).
* ``spark`` - Spark ALS, ``local[--threads]``, same rank, regParam = λ, maxIter,
  seed 0, coldStartStrategy "nan".

RMSE on the test ratings whose user and item both occur in training ("warm":
Spark cannot score the others) for every setup, and on all test ratings for
tunelab (cold pairs get μ + the known bias). Time per iteration: tunelab's
median iteration wall time; Spark's from two fits, (t(maxIter) - t(1)) /
(maxIter - 1), best of ``--repeats``, after a warm-up fit (JVM start and JIT
not counted). Spark runs its pure-Java BLAS fallback unless the system has
libblas.so.3 / liblapack.so.3 (it says so on stderr). The machine's load
average is recorded with the figures: on a shared machine it moves the timings.

Measured (bench/results/als_movielens.json; 2 cores, load average ~11, rank 10,
λ 0.15, 15 iterations): tunelab test RMSE 0.855 (warm 0.846), 0.18 s/iteration
at 1 thread (0.24 s at 2: oversubscribed); Spark's objective in tunelab 0.872
warm vs Spark ALS 0.869 warm, 2.16 s/iteration on local[2].
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shlex
import subprocess
import sys
import tempfile
import time
from importlib import metadata
from pathlib import Path
from typing import Any

import numpy as np
import yaml

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

from tunelab.config import load_section  # noqa: E402
from tunelab.lowrank import als as lals  # noqa: E402


def gpu_model_params(params_file: Path) -> tuple[Any, Any]:
    """lowrank.als with profiles/gpu.yaml's model values (and the shipped split)."""
    section = load_section("lowrank.als", params_file)
    overlay = yaml.safe_load((ROOT / "profiles/gpu.yaml").read_text())["lowrank"]["als"]
    model = section.model.model_copy(update=overlay["model"])
    return section.split, type(section.model).model_validate(model.model_dump())


def run_tunelab(train: Any, test: Any, model_params: Any, threads: int) -> dict[str, Any]:
    from threadpoolctl import threadpool_limits

    with threadpool_limits(limits=threads):
        start = time.perf_counter()
        model, history = lals.fit_als(train, model_params, test)
        total = time.perf_counter() - start
    warm = lals.warm(test, train)
    return {
        "threads": threads,
        "test_rmse": round(history[-1]["test_rmse"], 5),
        "test_rmse_warm": round(lals.rmse(model, warm), 5),
        "seconds_per_iteration": round(float(np.median([h["seconds"] for h in history])), 4),
        "fit_seconds": round(total, 3),
        "test_rmse_per_iteration": [round(h["test_rmse"], 5) for h in history],
    }


def run_spark(
    train: Any, test: Any, model_params: Any, threads: int, repeats: int
) -> dict[str, Any]:
    from pyspark.ml.recommendation import ALS
    from pyspark.sql import SparkSession

    spark = (
        SparkSession.builder.master(f"local[{threads}]")
        .appName("tunelab-als-bench")
        .config("spark.ui.enabled", "false")
        .config("spark.ui.showConsoleProgress", "false")
        .config("spark.driver.memory", "4g")
        .config("spark.driver.extraJavaOptions", "-Xss16m")
        .config("spark.sql.shuffle.partitions", str(2 * threads))
        .getOrCreate()
    )
    spark.sparkContext.setLogLevel("ERROR")
    # ALS's RDD lineage grows with every iteration; without checkpoints (every 10
    # iterations, Spark's default interval) task serialisation can overflow the stack.
    checkpoints = tempfile.TemporaryDirectory(prefix="als-bench-")
    spark.sparkContext.setCheckpointDir(checkpoints.name)
    try:

        def frame(r: Any) -> Any:
            rows = zip(r.users.tolist(), r.items.tolist(), r.values.tolist(), strict=True)
            return spark.createDataFrame(list(rows), ["user", "item", "rating"])

        train_df = frame(train).cache()
        train_df.count()
        warm = lals.warm(test, train)
        warm_df = frame(warm).cache()
        warm_df.count()

        def fit(iterations: int) -> tuple[Any, float]:
            als = ALS(
                rank=model_params.factors,
                maxIter=iterations,
                regParam=model_params.reg,
                userCol="user",
                itemCol="item",
                ratingCol="rating",
                coldStartStrategy="nan",
                nonnegative=False,
                implicitPrefs=False,
                seed=0,
            )
            start = time.perf_counter()
            model = als.fit(train_df)
            model.userFactors.count()  # force the lazy parts
            model.itemFactors.count()
            return model, time.perf_counter() - start

        fit(2)  # warm-up: JVM, JIT, broadcast machinery
        n = model_params.iterations
        t_full = min(fit(n)[1] for _ in range(repeats))
        t_one = min(fit(1)[1] for _ in range(repeats))
        model, _ = fit(n)
        pred = model.transform(warm_df).select("rating", "prediction").toPandas()
        err = pred["prediction"].to_numpy() - pred["rating"].to_numpy()
        nan = int(np.isnan(err).sum())
        return {
            "threads": threads,
            "test_rmse_warm": round(float(np.sqrt(np.nanmean(err**2))), 5),
            "nan_predictions": nan,
            "seconds_per_iteration": round((t_full - t_one) / (n - 1), 4),
            "fit_seconds": round(t_full, 3),
            "fit_seconds_one_iteration": round(t_one, 3),
        }
    finally:
        spark.stop()
        checkpoints.cleanup()


def java_version() -> str:
    try:
        out = subprocess.run(["java", "-version"], capture_output=True, text=True, check=True)
    except (OSError, subprocess.CalledProcessError) as err:
        return f"unavailable ({err})"
    return out.stderr.splitlines()[0]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--ratings", required=True, help="ml-latest-small ratings.csv (or zip)")
    parser.add_argument("--out", default="bench/results/als_movielens.json")
    parser.add_argument("--params", default="params.yaml")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--no-spark", action="store_true", help="tunelab only")
    args = parser.parse_args()
    os.chdir(ROOT)

    split, model_params = gpu_model_params(Path(args.params))
    spark_objective = model_params.model_copy(update={"biases": False, "clip": None})
    ratings = lals.load_ratings(Path(args.ratings))
    train, test = lals.random_split(ratings, split.test_fraction, split.seed)
    load_before = os.getloadavg()

    results: dict[str, Any] = {
        "tunelab": [run_tunelab(train, test, model_params, t) for t in sorted({1, args.threads})],
        "tunelab_spark_objective": run_tunelab(train, test, spark_objective, args.threads),
    }
    if args.no_spark:
        results["spark"] = {"skipped": "--no-spark"}
    else:
        try:
            results["spark"] = run_spark(train, test, model_params, args.threads, args.repeats)
        except ImportError as err:
            results["spark"] = {"skipped": f"pyspark not installed ({err})"}

    report = {
        "command": "python " + shlex.join(["bench/als_bench.py", *sys.argv[1:]]),
        "data": {
            "ratings": len(ratings),
            "users": ratings.n_users,
            "items": ratings.n_items,
            "train": len(train),
            "test": len(test),
            "test_warm": len(lals.warm(test, train)),
            "split": split.model_dump(),
        },
        "model": model_params.model_dump(),
        "results": results,
        "environment": {
            "cpu_count": os.cpu_count(),
            "load_average_before": [round(x, 2) for x in load_before],
            "load_average_after": [round(x, 2) for x in os.getloadavg()],
            "python": platform.python_version(),
            "numpy": np.__version__,
            "scipy": metadata.version("scipy"),
            "pyspark": _version("pyspark"),
            "java": java_version(),
        },
    }
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")

    print(
        f"ml-latest-small: {len(train)} train / {len(test)} test ratings "
        f"({report['data']['test_warm']} warm); rank {model_params.factors}, "
        f"λ {model_params.reg}, {model_params.iterations} iterations"
    )
    print(f"{'setup':<34}{'RMSE all':>10}{'RMSE warm':>11}{'s/iter':>9}{'fit s':>8}")
    rows = [(f"tunelab biased ({r['threads']} thr)", r) for r in results["tunelab"]]
    rows.append((f"tunelab p.q only ({args.threads} thr)", results["tunelab_spark_objective"]))
    if "skipped" not in results["spark"]:
        rows.append((f"Spark ALS local[{args.threads}]", results["spark"]))
    for name, r in rows:
        # p.q alone (Spark's model) has no mu or biases: cold pairs are predicted 0, so only
        # its warm RMSE means something; Spark cannot score cold pairs at all.
        all_rmse = f"{r['test_rmse']:.4f}" if "biased" in name else "-"
        print(
            f"{name:<34}{all_rmse:>10}{r['test_rmse_warm']:>11.4f}"
            f"{r['seconds_per_iteration']:>9.3f}{r['fit_seconds']:>8.2f}"
        )
    if "skipped" in results["spark"]:
        print(f"spark: skipped ({results['spark']['skipped']})")
    print(f"load average {report['environment']['load_average_before']} -> "
          f"{report['environment']['load_average_after']}; wrote {out}")  # fmt: skip


def _version(name: str) -> str | None:
    try:
        return metadata.version(name)
    except metadata.PackageNotFoundError:
        return None


if __name__ == "__main__":
    main()
