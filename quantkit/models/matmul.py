"""The float32 CPU products of the forward and the calibration statistics, through oneDNN.

torch's `F.linear` and `@` on CPU go to MKL's sgemm, which on AMD CPUs does not take its AVX-512 path; oneDNN
(also inside torch, used by `torch.utils.mkldnn`) does. Float32 on the 2-core AMD EPYC kind, best of 20 runs (3 for the head)
(2026-12-03; `benches/forward.py` prints this table for the machine it runs on):

    tokens x in -> out          F.linear   oneDNN (GFLOP/s)
    512 x 2048 -> 640           162        354
    255 x 640 -> 262,144 (head)  69        202
    2048 x 6144 -> 2048         184        361

Both are IEEE float32 products (no reduced-precision accumulation); only the order of the additions differs.
Anything else (another device, dtype, or a torch without oneDNN) goes through `F.linear` as before.

    w = pack(weight)          # once per weight: a oneDNN copy when it helps, else the weight itself
    y = linear(x, w)          # x [..., in] -> [..., out]
    h = gram(x)               # X^T X of a [tokens, in] float32 matrix
    c = mm(a, b)              # a @ b of 2-D matrices (GPTQ's triangular inverse by halves)
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

ONEDNN = torch.backends.mkldnn.is_available()


def _fits(t: torch.Tensor) -> bool:
    return ONEDNN and t.device.type == "cpu" and t.dtype == torch.float32


def pack(w: torch.Tensor) -> torch.Tensor:
    """`w` [out, in] in the layout `linear` multiplies fastest: oneDNN's for float32 on the CPU."""
    return w.to_mkldnn() if _fits(w) and w.ndim == 2 else w


def linear(x: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
    """x @ w^T for x [..., in] and w [out, in], plain or from `pack`."""
    if not w.is_mkldnn:
        return F.linear(x, w)
    if not _fits(x):  # the model computes in float32; a packed weight never meets another dtype
        raise TypeError(f"oneDNN weight with a {x.dtype} input on {x.device}")
    x2 = x.reshape(-1, x.shape[-1]).contiguous()
    y = torch._C._nn.mkldnn_linear(x2.to_mkldnn(), w, None).to_dense()
    return y.reshape(*x.shape[:-1], y.shape[-1])


def gram(x: torch.Tensor) -> torch.Tensor:
    """X^T X [in, in] of x [tokens, in] (float32 products and sums)."""
    if not _fits(x):
        return x.T @ x
    xt = x.T.contiguous().to_mkldnn()  # (X^T)(X^T)^T = X^T X
    return torch._C._nn.mkldnn_linear(xt, xt, None).to_dense()


def mm(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """a @ b of 2-D matrices."""
    if not (_fits(a) and _fits(b)):
        return a @ b
    return torch._C._nn.mkldnn_linear(a.contiguous().to_mkldnn(), b.T.contiguous().to_mkldnn(), None).to_dense()
