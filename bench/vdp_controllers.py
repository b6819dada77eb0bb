"""Van der Pol batch of bench_core.py (b): batched f calls and useful evaluations of odeserve's
per-sample mode under different controllers and dopri5 error estimators (counts only, no timing).

python bench/vdp_controllers.py

Explains the two VdP targets: the batched-call count is set by the slowest sample's attempted
steps (2 + 6 × steps), the useful share by the rejection rate.  Two dopri5 embedded
estimates exist in the wild: b̂ = (5179/57600, 0, 7571/16695, 393/640, −92097/339200,
187/2100, 1/40) (Dormand & Prince 1980, Hairer's DOPRI5, odeserve) and b̂ = (1951/21600, 0,
22642/50085, 451/720, −12231/42400, 649/6300, 1/60) (torchdiffeq, torchode).  The variant
below swaps only b_error, as a Solver class passed to solve(solver=...).
Writes bench/results/vdp_controllers.json / .md.
"""

from __future__ import annotations

import sys
import warnings
from fractions import Fraction as F
from pathlib import Path
from typing import Any

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import CountingF, md_table, odeserve_runner, torchode_runner, vdp_f, vdp_y0, write_json, write_text  # noqa: E402

from odeserve.registry import get_registry  # noqa: E402
from odeserve.tableau import ButcherTableau  # noqa: E402

B = [F(35, 384), 0, F(500, 1113), F(125, 192), F(-2187, 6784), F(11, 84), 0]
BHAT_TORCHODE = [F(1951, 21600), 0, F(22642, 50085), F(451, 720), F(-12231, 42400), F(649, 6300), F(1, 60)]


def dopri5_with_torchode_estimate() -> type:
    base = get_registry().solver("dopri5")
    tab = base.tableau
    new = ButcherTableau(
        "dopri5_bhat_1951", c=tab.c, a=tab.a, b=tab.b, order=tab.order,
        b_error=[float(b - bh) for b, bh in zip(B, BHAT_TORCHODE)], error_order=4, b_mid=tab.b_mid,
    )
    return type("Dopri5TorchodeEstimate", (base,), {"tableau": new})


def main() -> None:
    torch.set_num_threads(1)
    torch.set_grad_enabled(False)
    warnings.filterwarnings("ignore")
    y0 = vdp_y0(256, 0.5, 5.0, torch.float32)
    alt = dopri5_with_torchode_estimate()
    configs: list[tuple[str, Any, str, dict[str, Any]]] = [
        ("dopri5 (odeserve b̂)", "dopri5", "pi", {}),
        ("dopri5 (odeserve b̂)", "dopri5", "i", {}),
        ("dopri5 (odeserve b̂)", "dopri5", "pi", {"beta1": 0.85, "beta2": 0.2}),
        ("dopri5 (odeserve b̂)", "dopri5", "pi", {"beta1": 0.85, "beta2": 0.2, "safety": 0.8}),
        ("dopri5 (odeserve b̂)", "dopri5", "i", {"safety": 0.8}),
        ("dopri5 (torchode b̂)", alt, "pi", {}),
        ("dopri5 (torchode b̂)", alt, "i", {}),
        ("dopri5 (torchode b̂)", alt, "pi", {"beta1": 0.85, "beta2": 0.2}),
        ("dopri5 (torchode b̂)", alt, "pi", {"beta1": 0.85, "beta2": 0.2, "safety": 0.8}),
        ("dopri5 (torchode b̂)", alt, "i", {"safety": 0.8}),
        ("dopri5 (odeserve b̂)", "dopri5", "pi", {"beta1": 0.7, "beta2": 0.4}),
        ("dopri5 (torchode b̂)", alt, "pi", {"beta1": 0.7, "beta2": 0.4}),
        ("dopri5 (torchode b̂)", alt, "pi", {"beta1": 0.7, "beta2": 0.4, "safety": 0.85}),
        ("dopri5 (torchode b̂)", alt, "pi", {"beta1": 0.85, "beta2": 0.2, "factor_max": 4.0}),
    ]
    rows, out = [], []
    c = CountingF(vdp_f)
    r = torchode_runner(c, y0, 0.0, 10.0)()
    acc, steps = r.stats["n_accepted"], r.stats["n_steps"]
    tref = {"label": "torchode Dopri5 + IntegralController", "batched_calls": r.nfe,
            "useful": 6 * int(acc.sum()) / (r.nfe * 256), "max_steps": int(steps.max()),
            "max_accepted": int(acc.max()), "rejected_sum": int((steps - acc).sum())}
    for label, solver, ctrl, opts in configs:
        c = CountingF(vdp_f)
        res = odeserve_runner(c, y0, 0.0, 10.0, method=solver, batch="per_sample", controller=ctrl,
                              controller_options=opts)()
        a, rj = res.stats["accepted"], res.stats["rejected"]
        row = {"label": label, "controller": ctrl, "options": opts, "batched_calls": res.nfe,
               "useful": float(res.stats["useful_evals"]), "max_steps": int((a + rj).max()),
               "max_accepted": int(a.max()), "rejected_sum": int(rj.sum()),
               "max_abs_diff_vs_default": None, "y1": res.y1}
        out.append(row)
    ref = out[0]["y1"]
    for row in out:
        row["max_abs_diff_vs_default"] = float((row.pop("y1") - ref).abs().max())
        met = row["batched_calls"] <= 656 and row["useful"] >= 0.95
        rows.append([row["label"], row["controller"], ", ".join(f"{k}={v}" for k, v in row["options"].items()) or "defaults",
                     row["batched_calls"], f"{100 * row['useful']:.1f}%", row["max_steps"], row["max_accepted"],
                     row["rejected_sum"], "both" if met else "–"])
    rows.append([tref["label"], "I", "safety 0.9", tref["batched_calls"], f"{100 * tref['useful']:.1f}%", tref["max_steps"],
                 tref["max_accepted"], tref["rejected_sum"], ""])
    from common import environment

    env = environment()
    md = ("# Van der Pol batch: controllers and error estimates (odeserve per_sample)\n\n"
          f"odeserve at {env.get('git_commit', '?')}{' + uncommitted library changes' if env.get('git_dirty_library') else ''} "
          "('defaults' = that commit's PI defaults).\n\n"
          "256 samples, μ = linspace(0.5, 5), y0 = (2, 0), t ∈ [0, 10], float32, rtol 1e-5, atol 1e-7. "
          "Batched calls = 2 + 6 × (attempted steps of the slowest sample); useful = 6 × Σ accepted / per-sample evals.\n\n"
          + md_table(["method", "controller", "options", "batched calls", "useful", "max steps/sample",
                      "max accepted/sample", "rejected (Σ)", "targets ≤656 & ≥95%"], rows, "llllrrrrr"))
    write_json("vdp_controllers.json", {"env": env, "odeserve": out, "torchode": tref})
    write_text("vdp_controllers.md", md)
    print(md)


if __name__ == "__main__":
    main()
