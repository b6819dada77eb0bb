"""float32 ``tanh`` as a rational function, for the Inductor builds odeserve makes.

Inductor lowers ``torch.tanh`` to Sleef's vectorised ``tanh`` (≤ 1 ulp), or to scalar libm
``tanhf`` where it cannot vectorise the load (a 3-input first layer), and at batch 1 that is
a large share of a step: 17 % of an AOTInductor dopri5 step on the 2/64 MLP.  XLA (and so
diffrax under ``jax.jit``) evaluates float32 ``tanh`` as Eigen's rational approximation
instead: an odd degree-13 polynomial over an even degree-6 one on the input clamped to
±7.9053 (beyond which float32 ``tanh`` is ±1; ``x`` itself below 4e-4), a dozen
multiply-adds and one division
that Inductor fuses into the surrounding kernel.  Its relative error is ≤ 3.1 float32 eps
over the whole line (measured in tests/test_fast_tanh.py against float64), NaN stays NaN
and ±inf gives ±1; it is relative near 0, where ``2 / (1 + exp(-2x)) - 1`` (Inductor's own
``cpp.use_decompose_tanh``) cancels.

Measured (``to_aoti``, batch 1, one thread): dopri5 on MLP 2/64 0.182 → 0.147 ms, RK4 100
steps on MLP 64/256 6.49 → 5.70 ms.  Used by ``to_aoti`` and ``compile_solve``'s inference
graphs unless ``fast_tanh=False``; float64 keeps ``torch.tanh`` (the decomposition declines
it), and so do ONNX (ONNX Runtime's ``Tanh`` is its own fast kernel), TorchScript and the
exported program (an input for other compilers, which keep their own choice), and every
graph that computes gradients.
"""

from __future__ import annotations

from typing import Any, Callable

import torch
from torch import Tensor

__all__ = ["rational_tanh", "fast_tanh_decompositions"]

#: |x| beyond which float32 tanh(x) rounds to ±1, and below which it is x.
_CLAMP, _TINY = 7.90531110763549805, 4e-4
# Eigen's float32 tanh approximation (Eigen/src/Core/MathFunctionsImpl.h,
# generic_fast_tanh_float; XLA:CPU uses the same): numerator coefficients of x, x³, ..., x¹³
# and denominator coefficients of 1, x², x⁴, x⁶.
_NUMERATOR = (4.89352455891786e-03, 6.37261928875436e-04, 1.48572235717979e-05, 5.12229709037114e-08,
              -8.60467152213735e-11, 2.00018790482477e-13, -2.76076847742355e-16)
_DENOMINATOR = (4.89352518554385e-03, 2.26843463243900e-03, 1.18534705686654e-04, 1.19825839466702e-06)


def _horner(x2: Tensor, coefficients: tuple[float, ...]) -> Tensor:
    """Σ_k c_k x2^k by Horner's rule."""
    acc = x2 * coefficients[-1] + coefficients[-2]
    for c in reversed(coefficients[:-2]):
        acc = acc * x2 + c
    return acc


def rational_tanh(x: Tensor) -> Any:
    """``tanh(x)`` for float32 ``x`` as Eigen's rational approximation; ``NotImplemented``
    for any other dtype, which a decomposition table reads as "keep the op"."""
    if x.dtype != torch.float32:
        return NotImplemented
    c = x.clamp(-_CLAMP, _CLAMP)
    c2 = c * c
    # Below 4e-4, tanh(x) = x to within float32 rounding (x³/3 < 0.5 eps·|x|), and x is
    # exact where the product would lose digits (subnormal x).
    return torch.where(x.abs() < _TINY, x, c * _horner(c2, _NUMERATOR) / _horner(c2, _DENOMINATOR))


def fast_tanh_decompositions() -> dict[Any, Callable[..., Any]]:
    """The decomposition table entry: ``aten.tanh`` → :func:`rational_tanh`."""
    return {torch.ops.aten.tanh.default: rational_tanh}
