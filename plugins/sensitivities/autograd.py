"""``autograd``: backpropagate through the solver's own operations (the default)."""

from __future__ import annotations

from typing import Any

from torch import Tensor

from odeserve.solver import Sensitivity


class Autograd(Sensitivity):
    """Differentiate the discretised solve exactly, as PyTorch recorded it.  Memory grows
    with the number of steps (every stage's activations are kept); works with every
    solver, both batch modes and tuple states.  With ``loop="while"`` the backward pass
    is whatever ``torch.while_loop`` supports in the running PyTorch."""

    name = "autograd"

    def __init__(self, **options: Any) -> None:
        if options:
            from odeserve.errors import InvalidOptionError

            raise InvalidOptionError(f"sensitivity 'autograd' takes no options, got {sorted(options)}")

    def run(self, prepared: Any, y0: Tensor) -> tuple[Tensor, Any]:
        return prepared.run(y0)
