"""Batch modes: ``per_sample`` (each sample its own time, step size and accept/reject) and
``joint`` (one step size and one error norm for the whole batch).

Per-sample mode must be exactly "solve each sample alone, at once": same values, same step
counts.  Its compaction (finished samples leave the batch ``f`` sees) must not change any
result, only the work done, and the work it reports must be the work ``f`` actually did.
"""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch

import odeserve
from odeserve import SolveFailedError, Status

try:
    from .problems import make_van_der_pol, tolerances, van_der_pol
except ImportError:
    from problems import make_van_der_pol, tolerances, van_der_pol

DT = torch.float64
SOLVERS = odeserve.get_registry().entries("solver")
ALL = sorted(SOLVERS)
ADAPTIVE = sorted(n for n, e in SOLVERS.items() if e.obj.adaptive)

VDP = make_van_der_pol(1.0)
VDP_Y0 = torch.tensor([[2.0, 0.0], [0.5, 0.5], [-1.0, 2.0]], dtype=DT)
T_VDP = torch.tensor([0.0, 0.7, 1.4, 2.0], dtype=DT)


def _opts(name: str) -> dict:
    cls = SOLVERS[name].obj
    if cls.adaptive:
        rtol, atol = tolerances(cls.order)
        return {"rtol": rtol, "atol": atol}
    return {"steps": 12}


def _close(a, b):
    # Same arithmetic on fewer rows: equal up to the rounding of a differently blocked product.
    torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-14)


@pytest.mark.parametrize("name", ALL)
def test_per_sample_equals_each_sample_alone(name):
    opts = _opts(name)
    batch = odeserve.solve(VDP, VDP_Y0, T_VDP, solver=name, batch="per_sample", **opts)
    assert batch.success and batch.batch == "per_sample"
    assert batch.ys.shape == (4, 3, 2) and batch.status.shape == (3,)
    for key in ("steps", "accepted", "rejected", "t_final"):
        assert batch.stats[key].shape == (3,), key
    for i in range(VDP_Y0.shape[0]):
        alone = odeserve.solve(VDP, VDP_Y0[i : i + 1], T_VDP, solver=name, batch="per_sample", **opts)
        _close(batch.ys[:, i], alone.ys[:, 0])
        for key in ("steps", "accepted", "rejected"):
            assert int(batch.stats[key][i]) == int(alone.stats[key][0]), (key, i)
        # and a joint solve of that one sample is the same computation
        joint = odeserve.solve(VDP, VDP_Y0[i], T_VDP, solver=name, **opts)
        _close(batch.ys[:, i], joint.ys)
        assert int(batch.stats["steps"][i]) == int(joint.stats["steps"])
    if SOLVERS[name].obj.adaptive:  # the samples really are stepped independently
        assert len(set(batch.stats["steps"].tolist())) > 1, batch.stats["steps"]


def test_per_sample_parameter_with_compact_false():
    """A per-row parameter in f (here Van der Pol's mu) needs the full batch on every call:
    compact=False keeps it, and each sample then matches a joint solve with its own mu."""
    mus = torch.tensor([0.5, 1.0, 2.0, 3.0, 5.0], dtype=DT)
    seen_rows = set()

    def f(t, y):
        seen_rows.add(y.shape[0])
        x, v = y[:, 0], y[:, 1]
        return torch.stack([v, mus * (1 - x * x) * v - x], dim=-1)

    y0 = torch.tensor([[2.0, 0.0]] * 5, dtype=DT)
    t = torch.tensor([0.0, 1.5, 3.0], dtype=DT)
    sol = odeserve.solve(f, y0, t, batch="per_sample", compact=False, rtol=1e-6, atol=1e-9)
    assert sol.success
    assert seen_rows == {5}
    for i, mu in enumerate(mus.tolist()):
        alone = odeserve.solve(make_van_der_pol(mu), y0[i], t, rtol=1e-6, atol=1e-9)
        _close(sol.ys[:, i], alone.ys)
        assert int(sol.stats["steps"][i]) == int(alone.stats["steps"])
    assert len(set(sol.stats["steps"].tolist())) == 5  # five different difficulties


def _blowup_batch():
    """y' = y², y = 1/(1/y0 - t): on [0, 1] the sample with y0 = 0.8 needs many more steps
    than y0 = 0.1 (a mixed batch)."""
    y0 = torch.tensor([[0.1], [0.3], [0.5], [0.7], [0.8]], dtype=DT)
    t = torch.tensor([0.0, 0.5, 1.0], dtype=DT)
    exact = 1 / (1 / y0[:, 0] - t.reshape(-1, 1))  # (T, B)
    return y0, t, exact


def test_compaction_changes_work_not_results():
    y0, t, exact = _blowup_batch()
    calls: dict[bool, list] = {True: [], False: []}
    sols = {}
    for compact in (True, False):

        def f(tt, y, log=calls[compact]):
            log.append((tuple(tt.shape), y.shape[0], tt.detach().clone()))
            return y * y

        sols[compact] = odeserve.solve(f, y0, t, batch="per_sample", compact=compact, rtol=1e-6, atol=1e-9)
    a, b = sols[True], sols[False]
    assert torch.equal(a.ys, b.ys)
    for key in ("steps", "accepted", "rejected", "t_final"):
        assert torch.equal(a.stats[key], b.stats[key]), key
    torch.testing.assert_close(a.ys[..., 0], exact, rtol=1e-5, atol=0)
    # f gets one time per row, and rows are at different times (samples step independently)
    assert all(shape == (rows,) for shape, rows, _ in calls[True])
    assert any(len(set(tt.tolist())) > 1 for _, _, tt in calls[True])
    # compaction: finished samples leave the batch f sees; without it every call has all 5
    assert min(rows for _, rows, _ in calls[True]) < 5
    assert {rows for _, rows, _ in calls[False]} == {5}


@pytest.mark.parametrize("compact", [True, False])
def test_eval_accounting(compact):
    """``stats["evals"]`` counts each sample's f evaluations: at least f(t0, y0) plus one
    step's worth per attempted step, the same whether or not the batch is compacted, and
    ``useful_evals`` (accepted steps' evaluations / all) is a fraction.  With compaction,
    the per-sample counts add up to the rows f was actually called on."""
    y0, t, _ = _blowup_batch()
    rows_seen = []

    def f(tt, y):
        rows_seen.append(y.shape[0])
        return y * y

    sol = odeserve.solve(f, y0, t[[0, -1]], batch="per_sample", compact=compact, rtol=1e-6, atol=1e-9)
    eps = SOLVERS["dopri5"].obj.evals_per_step
    attempted = sol.stats["accepted"] + sol.stats["rejected"]
    evals = sol.stats["evals"]
    assert evals.shape == (5,)
    assert bool((evals >= eps * attempted + 1).all()), (evals, attempted)
    assert 0.0 < sol.stats["useful_evals"] <= 1.0, sol.stats["useful_evals"]
    if compact:
        # rows_seen[0] is solve()'s validation call f(t0, y0), whose value the loop may reuse
        # (then it is not one of the loop's evaluations) or recompute
        assert int(evals.sum()) in (sum(rows_seen[1:]), sum(rows_seen)), (evals, rows_seen)
        assert sol.stats["nfe"] in (len(rows_seen) - 1, len(rows_seen))
    else:
        ref = odeserve.solve(lambda tt, y: y * y, y0, t[[0, -1]], batch="per_sample", rtol=1e-6, atol=1e-9)
        assert torch.equal(attempted, ref.stats["accepted"] + ref.stats["rejected"])
        assert torch.equal(evals, ref.stats["evals"]), (evals, ref.stats["evals"])


def test_useful_evals_on_mixed_batch():
    """y' = -y², y = y0 / (1 + y0 t) with y0 over three decades: the fast samples need ten
    times the steps of the slow one; compaction keeps the evaluations useful."""
    y0 = torch.tensor([[0.1], [1.0], [10.0], [100.0]], dtype=DT)
    t = torch.tensor([0.0, 0.5, 1.0], dtype=DT)
    f = lambda tt, y: -y * y  # noqa: E731
    sol = odeserve.solve(f, y0, t, batch="per_sample", rtol=1e-6, atol=1e-9)
    steps = sol.stats["steps"]
    assert int(steps.max()) >= 5 * int(steps.min()), steps  # the batch really is mixed
    assert sol.stats["useful_evals"] >= 0.9, sol.stats
    torch.testing.assert_close(sol.ys[..., 0], y0[:, 0] / (1 + y0[:, 0] * t.reshape(-1, 1)), rtol=1e-5, atol=0)
    # joint mode on the same batch: one step sequence for all (each step costs all rows),
    # no per-sample statistics, the same answer within the tolerance
    joint = odeserve.solve(f, y0, t, rtol=1e-6, atol=1e-9)
    assert joint.stats["steps"].shape == () and "useful_evals" not in joint.stats
    assert int(joint.stats["steps"]) > int(steps.min())
    torch.testing.assert_close(joint.ys, sol.ys, rtol=1e-5, atol=1e-8)


@pytest.mark.parametrize("name", ADAPTIVE)
def test_joint_mode_meets_tolerance(name):
    """Joint mode (one RMS error norm over the batch) still meets the tolerance per sample."""
    rtol, atol = tolerances(SOLVERS[name].obj.order)
    sol = odeserve.solve(VDP, VDP_Y0, T_VDP, solver=name, rtol=rtol, atol=atol)
    assert sol.success and sol.batch == "joint" and sol.status.shape == ()
    for i in range(VDP_Y0.shape[0]):
        p = dataclasses.replace(van_der_pol, name=f"vdp{i}", y0=tuple(VDP_Y0[i].tolist()), t1=2.0)
        ref = p.solution(T_VDP.numpy())
        err = np.abs(sol.ys[:, i].numpy() - ref).max(axis=1)
        bound = 10 * (atol + rtol * np.abs(ref).max(axis=1))
        assert (err <= bound).all(), (i, err, bound)
    per = odeserve.solve(VDP, VDP_Y0, T_VDP, solver=name, rtol=rtol, atol=atol, batch="per_sample")
    torch.testing.assert_close(sol.ys, per.ys, rtol=0, atol=20 * (atol + rtol * 3.0))


def test_per_sample_failure_is_isolated():
    """One sample blowing up (y' = y², y0 = 2 → singular at t = 0.5) stops only that sample."""
    y0 = torch.tensor([[0.5], [2.0]], dtype=DT)
    t = torch.tensor([0.0, 0.25, 0.75, 1.0], dtype=DT)
    kw = {"rtol": 1e-6, "atol": 1e-9}
    sol = odeserve.solve(lambda tt, y: y * y, y0, t, batch="per_sample", throw=False, **kw)
    assert not sol.success
    assert sol.status.tolist() == [Status.SUCCESS, Status.DT_UNDERFLOW]
    assert sol.failed_samples().tolist() == [1]
    alone = odeserve.solve(lambda tt, y: y * y, y0[:1], t, batch="per_sample", **kw)
    _close(sol.ys[:, 0], alone.ys[:, 0])
    torch.testing.assert_close(sol.ys[:, 0, 0], 1 / (2 - t), rtol=1e-5, atol=0)
    assert abs(float(sol.stats["t_final"][1]) - 0.5) < 1e-3
    assert float(sol.ys[1, 1, 0]) == pytest.approx(4.0, rel=1e-5)  # before the failure
    assert torch.isnan(sol.ys[2:, 1]).all()  # past it
    with pytest.raises(SolveFailedError, match=r"1 of 2 samples: DT_UNDERFLOW") as info:
        odeserve.solve(lambda tt, y: y * y, y0, t, batch="per_sample", **kw)
    assert info.value.solution.status.tolist() == sol.status.tolist()


def test_per_sample_tuple_state_matches_flat():
    """A tuple state (position, velocity), batch on axis 0 of each, gives the same per-sample
    solve as the concatenated (B, 2) state."""
    x0, v0 = VDP_Y0[:, :1].clone(), VDP_Y0[:, 1:].clone()

    def f_tuple(t, y):
        x, v = y
        return v, (1 - x * x) * v - x

    sol = odeserve.solve(f_tuple, (x0, v0), T_VDP, batch="per_sample", rtol=1e-7, atol=1e-9)
    flat = odeserve.solve(VDP, VDP_Y0, T_VDP, batch="per_sample", rtol=1e-7, atol=1e-9)
    assert isinstance(sol.ys, tuple) and len(sol.ys) == 2
    assert sol.ys[0].shape == (4, 3, 1) and sol.ys[1].shape == (4, 3, 1)
    _close(torch.cat(sol.ys, dim=-1), flat.ys)
    assert torch.equal(sol.stats["steps"], flat.stats["steps"])
