"""lowrank.svd and lowrank.als: the low-rank demos."""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import Field, model_validator

from tunelab.config.core import (
    NonNegFloat,
    NonNegInt,
    OpenFraction,
    PosFloat,
    PosInt,
    Section,
)


class LoraSpectrumParams(Section):
    """lowrank.svd.lora: singular values of trained LoRA updates next to their base weights."""

    base: str  # the base stage's output folder (models/base/text)
    adapters: Annotated[list[str], Field(min_length=1)]  # adapter folders (also dvc.yaml deps)
    layers: list[NonNegInt] | None  # decoder layers analysed; null: every layer
    top_k: Annotated[list[PosInt], Field(min_length=1)]  # energy captured by the top-k directions
    rank_rtol: OpenFraction  # singular values below rank_rtol x the largest count as zero
    # full: SVDs of ΔW and W as they are (the demonstration); factored: ΔW's spectrum from
    # its r x r core (QR of B and Aᵀ, exact) and W's from the eigenvalues of its Gram matrix
    method: Literal["full", "factored"]


class SvdParams(Section):
    """lowrank.svd: rank sweep of an image's truncated SVD, then the LoRA spectra."""

    image: str  # skimage.data.<name> (ships with scikit-image) or an image file path
    ranks: Annotated[list[PosInt], Field(min_length=1)]
    show_ranks: Annotated[list[PosInt], Field(min_length=1)]  # reconstructions drawn
    tolerance: PosFloat  # allowed |error - Eckart-Young optimum| / ||X||_F
    threads: PosInt  # BLAS/LAPACK/torch CPU threads
    lora: LoraSpectrumParams

    @model_validator(mode="after")
    def _ranks(self) -> SvdParams:
        if self.ranks != sorted(set(self.ranks)):
            raise ValueError("ranks must be increasing, without repeats")
        if not set(self.show_ranks) <= set(self.ranks):
            raise ValueError("show_ranks must be a subset of ranks")
        return self


class SyntheticRatingsParams(Section):
    """Ratings = mu + b_u + c_i + p_u.q_i + N(0, noise_std^2) on a random subset of pairs."""

    users: Annotated[int, Field(ge=2)]
    items: Annotated[int, Field(ge=2)]
    rank: PosInt
    density: Annotated[float, Field(gt=0, le=1)]  # share of user x item pairs observed
    global_mean: float
    bias_std: NonNegFloat
    factor_std: PosFloat
    noise_std: NonNegFloat
    seed: int


class RatingsSplitParams(Section):
    test_fraction: OpenFraction
    seed: int


class AlsModelParams(Section):
    factors: NonNegInt  # rank k; 0 with biases: the biases-only model
    biases: bool  # mu + b_u + c_i + p.q; false: p.q alone (Spark ML's ALS model)
    reg: PosFloat  # lambda on the factors
    reg_bias: NonNegFloat  # lambda on the biases
    weighted_reg: bool  # scale lambda by each user's/item's rating count (ALS-WR, as Spark)
    init_std: PosFloat
    iterations: PosInt
    clip: Annotated[list[float], Field(min_length=2, max_length=2)] | None  # [low, high]
    seed: int

    @model_validator(mode="after")
    def _model(self) -> AlsModelParams:
        if self.factors == 0 and not self.biases:
            raise ValueError("factors 0 without biases is no model")
        if self.clip is not None and not self.clip[0] < self.clip[1]:
            raise ValueError("clip must be [low, high] with low < high")
        return self


class AlsParams(Section):
    """lowrank.als: explicit-feedback ALS on planted synthetic ratings or MovieLens."""

    dataset: Literal["synthetic", "movielens"]
    ratings_path: str | None  # movielens: ratings.csv, or the GroupLens zip holding it
    synthetic: SyntheticRatingsParams
    split: RatingsSplitParams
    model: AlsModelParams
    threads: PosInt  # BLAS/LAPACK CPU threads

    @model_validator(mode="after")
    def _data(self) -> AlsParams:
        if self.dataset == "movielens" and not self.ratings_path:
            raise ValueError("dataset movielens needs ratings_path")
        return self
