"""Low-rank demos: what LoRA does, shown on problems where the answer is known.

svd   truncated SVD of an image (Eckart–Young), and the singular-value spectra of
      trained LoRA updates ΔW = s·B·A next to their base weights.
als   explicit-feedback matrix factorisation by alternating least squares.
plots matplotlib figures for both (Agg backend, PNG files).
"""
