"""Batch-invariant kernels: a row's result does not depend on the other rows beside it.

cuBLAS picks its GEMM algorithm (tiling, split-K) by the problem's shape, so the same
row multiplied in a batch of 48 and in a batch of 192 is summed in another order and can
come out one bf16 ulp apart; on random-weight or near-tie logits that flips a greedy
token. The same holds for reductions (RMSNorm's mean, softmax) whose launch shape
depends on the number of rows or the row length. Inside ``batch_invariant()`` the
matmuls (``mm``, ``addmm``, ``bmm``), the last-dimension ``mean`` and ``_softmax`` of
tensors on the given device go through the Triton kernels below instead, whose reduction
order is fixed by the weight's shape alone:

* matmul: one program per output tile, the whole K loop in the program (no split-K),
  tiles chosen from N and K only (never from M), fp32 accumulation. Extra rows, or extra
  K positions holding exact zeros (masked attention keys), leave every other element's
  sum unchanged;
* row mean and row softmax: one program per row, the row walked in fixed blocks with a
  fixed reduction tree, so a longer row whose tail is masked (probability 0) sums the
  same values in the same order.

The approach is that of Thinking Machines' batch-invariant ops (He et al., "Defeating
Nondeterminism in LLM Inference", 2025): replace the kernels whose reduction order
depends on the batch, nothing else. Written here because that package is not on PyPI
and pins its own torch; the kernels are small. What it simplifies: no persistent
kernel, no autotuning (one tile shape per weight shape), fp32 inputs use IEEE fp32 dot
products (not TF32). The override is process-wide while the context is open: use it
around a generation call, not around training. torch.compile bypasses these overrides
(inductor lowers the matmuls itself), so the continuous engine runs its layer eagerly
in this mode, still inside its CUDA graph.
"""

from __future__ import annotations

import math
import os
import warnings
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import torch
import triton
import triton.language as tl

_ACTIVE: list[Any] = []  # the open torch.library registrations (one at a time)
CALLS: Counter[str] = Counter()  # overridden calls, by op (the tests and the bench read it)


@triton.jit
def _matmul_kernel(
    a_ptr, b_ptr, c_ptr, bias_ptr,
    M, N, K,
    stride_ab, stride_am, stride_ak,
    stride_bb, stride_bk, stride_bn,
    stride_cb, stride_cm, stride_cn,
    alpha, beta,
    HAS_BIAS: tl.constexpr,
    IEEE: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr,
):  # fmt: skip
    batch = tl.program_id(2)
    pid_m = tl.program_id(0)
    pid_n = tl.program_id(1)
    rm = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    rn = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    rk = tl.arange(0, BLOCK_K)
    a = a_ptr + batch * stride_ab + rm[:, None] * stride_am + rk[None, :] * stride_ak
    b = b_ptr + batch * stride_bb + rk[:, None] * stride_bk + rn[None, :] * stride_bn
    acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
    for k in range(0, tl.cdiv(K, BLOCK_K)):
        left = K - k * BLOCK_K
        x = tl.load(a, mask=(rm[:, None] < M) & (rk[None, :] < left), other=0.0)
        y = tl.load(b, mask=(rk[:, None] < left) & (rn[None, :] < N), other=0.0)
        if IEEE:
            acc += tl.dot(x, y, input_precision="ieee")
        else:
            acc += tl.dot(x, y)
        a += BLOCK_K * stride_ak
        b += BLOCK_K * stride_bk
    acc = acc * alpha
    if HAS_BIAS:
        bias = tl.load(bias_ptr + rn, mask=rn < N, other=0.0).to(tl.float32)
        acc += beta * bias[None, :]
    c = c_ptr + batch * stride_cb + rm[:, None] * stride_cm + rn[None, :] * stride_cn
    tl.store(c, acc.to(c_ptr.dtype.element_ty), mask=(rm[:, None] < M) & (rn[None, :] < N))


def tiles(n: int, k: int) -> tuple[int, int, int]:
    """(BLOCK_M, BLOCK_N, BLOCK_K) from the weight's shape alone: the same for every M."""
    block_n = 128 if n >= 128 else max(16, triton.next_power_of_2(n))
    block_k = 64 if k >= 64 else max(16, triton.next_power_of_2(k))
    return 64, block_n, block_k


def _matmul3(a: torch.Tensor, b: torch.Tensor, bias: torch.Tensor | None = None,
             alpha: float = 1.0, beta: float = 1.0) -> torch.Tensor:  # fmt: skip
    """(batch, M, K) @ (batch, K, N) [+ beta * bias over N], in a's dtype."""
    batch, m, k = a.shape
    n = b.shape[2]
    out = torch.empty((batch, m, n), dtype=a.dtype, device=a.device)
    if m == 0 or n == 0:
        return out
    if k == 0:
        return out.zero_() if bias is None else out.copy_((beta * bias).expand_as(out))
    block_m, block_n, block_k = tiles(n, k)
    grid = (triton.cdiv(m, block_m), triton.cdiv(n, block_n), batch)
    _matmul_kernel[grid](
        a, b, out, bias if bias is not None else a,
        m, n, k,
        a.stride(0), a.stride(1), a.stride(2),
        b.stride(0), b.stride(1), b.stride(2),
        out.stride(0), out.stride(1), out.stride(2),
        alpha, beta,
        HAS_BIAS=bias is not None,
        IEEE=a.dtype == torch.float32,
        BLOCK_M=block_m, BLOCK_N=block_n, BLOCK_K=block_k,
        num_warps=4, num_stages=3,
    )  # fmt: skip
    return out


def mm(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    return _matmul3(a[None], b[None])[0]


def addmm(
    bias: torch.Tensor, a: torch.Tensor, b: torch.Tensor, *, beta: float = 1, alpha: float = 1
) -> torch.Tensor:
    if bias.dim() == 1 or (bias.dim() == 2 and bias.shape[0] == 1):
        return _matmul3(a[None], b[None], bias.reshape(-1), alpha, beta)[0]
    return beta * bias + alpha * mm(a, b)  # a full bias matrix: elementwise, invariant


def bmm(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    return _matmul3(a, b)


@triton.jit
def _row_sum_kernel(x_ptr, out_ptr, n_cols, stride, scale, BLOCK: tl.constexpr):
    row = tl.program_id(0)
    acc = tl.zeros((BLOCK,), dtype=tl.float32)
    for start in range(0, n_cols, BLOCK):
        cols = start + tl.arange(0, BLOCK)
        acc += tl.load(x_ptr + row * stride + cols, mask=cols < n_cols, other=0.0).to(tl.float32)
    total = tl.sum(acc, axis=0) * scale
    tl.store(out_ptr + row, total.to(out_ptr.dtype.element_ty))


@triton.jit
def _row_softmax_kernel(x_ptr, out_ptr, n_cols, stride, BLOCK: tl.constexpr):
    row = tl.program_id(0)
    base = x_ptr + row * stride
    top = tl.full((BLOCK,), float("-inf"), dtype=tl.float32)
    for start in range(0, n_cols, BLOCK):
        cols = start + tl.arange(0, BLOCK)
        v = tl.load(base + cols, mask=cols < n_cols, other=float("-inf")).to(tl.float32)
        top = tl.maximum(top, v)
    peak = tl.max(top, axis=0)
    acc = tl.zeros((BLOCK,), dtype=tl.float32)
    for start in range(0, n_cols, BLOCK):
        cols = start + tl.arange(0, BLOCK)
        v = tl.load(base + cols, mask=cols < n_cols, other=float("-inf")).to(tl.float32)
        acc += tl.exp(v - peak)
    total = tl.sum(acc, axis=0)
    for start in range(0, n_cols, BLOCK):
        cols = start + tl.arange(0, BLOCK)
        v = tl.load(base + cols, mask=cols < n_cols, other=float("-inf")).to(tl.float32)
        p = tl.exp(v - peak) / total
        tl.store(out_ptr + row * n_cols + cols, p.to(out_ptr.dtype.element_ty), mask=cols < n_cols)


ROW_BLOCK = 1024  # columns a reduction program reads at a time (fixed: the tree is fixed)


def _rows(x: torch.Tensor) -> torch.Tensor:
    return x.reshape(-1, x.shape[-1]).contiguous()


def mean(x: torch.Tensor, dim: Any = None, keepdim: bool = False, *, dtype: Any = None):
    last = dim is not None and list(dim) in ([-1], [x.dim() - 1])
    if not last or x.numel() == 0 or (dtype is not None and dtype != x.dtype):
        n = x.numel() if dim is None else math.prod(x.shape[d] for d in dim)
        return torch.sum(x, dim=dim, keepdim=keepdim, dtype=dtype) / n  # not overridden
    rows = _rows(x)
    out = torch.empty(rows.shape[0], dtype=x.dtype, device=x.device)
    _row_sum_kernel[(rows.shape[0],)](rows, out, rows.shape[1], rows.stride(0),
                                      1.0 / rows.shape[1], BLOCK=ROW_BLOCK)  # fmt: skip
    shape = (*x.shape[:-1], 1) if keepdim else x.shape[:-1]
    return out.reshape(shape)


def softmax(x: torch.Tensor, dim: int, half_to_float: bool) -> torch.Tensor:
    dtype = torch.float32 if half_to_float else x.dtype
    if dim not in (-1, x.dim() - 1) or x.numel() == 0:
        shifted = x.to(dtype) - x.to(dtype).amax(dim, keepdim=True)
        e = torch.exp(shifted)
        return e / e.sum(dim, keepdim=True)
    rows = _rows(x)
    out = torch.empty(rows.shape, dtype=dtype, device=x.device)
    _row_softmax_kernel[(rows.shape[0],)](rows, out, rows.shape[1], rows.stride(0),
                                          BLOCK=ROW_BLOCK)  # fmt: skip
    return out.reshape(x.shape)


def _counted(op: str, fn: Any) -> Any:
    def run(*args: Any, **kwargs: Any) -> Any:
        CALLS[op] += 1
        return fn(*args, **kwargs)

    return run


OVERRIDES = {
    op: _counted(op, fn)
    for op, fn in {
        "mm": mm,
        "addmm": lambda bias, a, b, beta=1, alpha=1: addmm(bias, a, b, beta=beta, alpha=alpha),
        "bmm": bmm,
        "mean.dim": lambda x, dim, keepdim=False, dtype=None: mean(x, dim, keepdim, dtype=dtype),
        "_softmax": softmax,
    }.items()
}


@contextmanager
def batch_invariant(device_type: str = "cuda") -> Iterator[None]:
    """Route the ops in ``OVERRIDES`` on ``device_type`` tensors through these kernels."""
    if _ACTIVE:  # already on (a nested generation call)
        yield
        return
    if device_type != "cuda" and os.environ.get("TRITON_INTERPRET") != "1":
        from tunelab.errors import TunelabError

        raise TunelabError(
            "generation.batch_invariant",
            f"its kernels are Triton's and need a CUDA GPU (this model is on {device_type}; "
            "the CPU runs them only in Triton's interpreter, TRITON_INTERPRET=1); set false",
        )
    key = {"cuda": "CUDA", "cpu": "CPU"}[device_type]
    lib = torch.library.Library("aten", "IMPL")
    with warnings.catch_warnings():  # "overriding a previously registered kernel": meant
        warnings.simplefilter("ignore")
        for op, fn in OVERRIDES.items():
            lib.impl(op, fn, key)
    _ACTIVE.append(lib)
    try:
        yield
    finally:
        _ACTIVE.pop()
        lib._destroy()
