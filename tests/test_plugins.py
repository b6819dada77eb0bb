"""The plugin system: built-ins arrive through the ``odeserve`` entry-point group, custom
solvers / controllers / sensitivities can be registered at run time, conflicts and broken
plugins are reported by name without taking the others down, and ``odeserve plugins`` lists
everything.  Every test works on a fresh registry (the ``fresh_registry`` fixture).

Every hook in ``odeserve/hookspecs.py`` must have a docstring and a test here named
``test_hook_<hook name>`` (checked by ``test_plugin_hooks_have_tests``).
"""

from __future__ import annotations

import importlib.metadata as md
import inspect
import subprocess
import sys
import textwrap

import numpy as np
import pytest
import torch

import odeserve
import odeserve.registry
from odeserve import (
    ButcherTableau,
    DuplicatePluginError,
    PluginLoadError,
    Sensitivity,
    StepSizeController,
    UnknownPluginError,
    hookimpl,
)
from odeserve import hookspecs
from odeserve.cli import main as cli_main
from odeserve.plugins.solvers import ExplicitRK

DT = torch.float64
Y0 = torch.tensor([1.0, 0.0], dtype=DT)
T = torch.tensor([0.0, 0.5, 1.0], dtype=DT)
EXACT = torch.stack([torch.cos(T), torch.sin(T)], dim=-1)
BUILTIN_PLUGINS = {"builtin_solvers": "solver", "builtin_controllers": "controller", "builtin_sensitivities": "sensitivity"}


def rot(t, y):
    return torch.stack([-y[..., 1], y[..., 0]], dim=-1)


class SSPRK3(ExplicitRK):
    """Shu–Osher SSP Runge–Kutta: order 3, 3 stages, not embedded."""

    tableau = ButcherTableau(
        "ssprk3", c=[0, 1, 0.5], a=[(), (1,), (0.25, 0.25)], b=[1 / 6, 1 / 6, 2 / 3], order=3
    )


class SolverPlugin:
    @hookimpl
    def odeserve_register_solvers(self, register):
        register.add_solver("ssprk3", SSPRK3)


def _fake_entry_points(monkeypatch, *extra: md.EntryPoint) -> None:
    """Make odeserve.registry see the installed entry points plus ``extra``."""
    real = md.entry_points

    def entry_points(**kw):
        eps = list(real(**kw))
        if kw.get("group") == hookspecs.PROJECT:
            eps.extend(extra)
        return eps

    monkeypatch.setattr(odeserve.registry.md, "entry_points", entry_points)


def _plugin_module(tmp_path, monkeypatch, name: str, body: str) -> md.EntryPoint:
    (tmp_path / f"{name}.py").write_text(textwrap.dedent(body))
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.delitem(sys.modules, name, raising=False)
    return md.EntryPoint(name=name, value=name, group=hookspecs.PROJECT)


# ----------------------------------------------------------------------------- built-ins


def test_builtins_arrive_through_entry_points(fresh_registry):
    group = {ep.name: ep for ep in md.entry_points(group=hookspecs.PROJECT)}
    assert set(BUILTIN_PLUGINS) <= set(group)
    for ep_name in BUILTIN_PLUGINS:
        assert group[ep_name].dist is not None and group[ep_name].dist.name == "odeserve"
    dist = f"odeserve {md.version('odeserve')}"
    from odeserve.plugins.sensitivities import SENSITIVITIES
    from odeserve.plugins.solvers import SOLVERS

    expected = {
        "solver": set(SOLVERS),
        "controller": {"i", "pi"},
        "sensitivity": set(SENSITIVITIES) | {"autograd"},
    }
    for plugin, kind in BUILTIN_PLUGINS.items():
        entries = fresh_registry.entries(kind)
        builtin = {name for name, e in entries.items() if e.plugin == plugin}
        assert builtin == expected[kind], kind
        for name in builtin:
            e = entries[name]
            assert e.kind == kind and e.name == name
            assert e.distribution == dist
            assert e.provider == f"{plugin} ({dist})"
    assert fresh_registry.entries("solver")["dopri5"].obj is SOLVERS["dopri5"]
    assert not fresh_registry.errors
    # the registry is what solve() resolves names through
    assert odeserve.solve(rot, Y0, T).success


def test_empty_registry_without_entry_points(fresh_registry):
    empty = odeserve.Registry(entry_points=False)
    odeserve.set_registry(empty)
    assert empty.entries("solver") == {}
    with pytest.raises(UnknownPluginError, match=r"\(none registered\)"):
        odeserve.solve(rot, Y0, T, solver="rk4", steps=4)
    odeserve.register(SolverPlugin(), name="only_ssprk3")
    assert list(empty.entries("solver")) == ["ssprk3"]


# ----------------------------------------------------------------------------- hooks


def test_hook_odeserve_register_solvers(fresh_registry):
    """A tableau subclass registered at run time is a solver like the built-ins."""
    assert odeserve.register(SolverPlugin(), name="ssprk3_plugin") == "ssprk3_plugin"
    entry = fresh_registry.entries("solver")["ssprk3"]
    assert entry.obj is SSPRK3 and entry.plugin == "ssprk3_plugin"
    assert entry.distribution == "registered at run time"
    assert SSPRK3.order == 3 and not SSPRK3.adaptive and SSPRK3.evals_per_step == 3
    sol = odeserve.solve(rot, Y0, T, solver="ssprk3", steps=40)
    assert sol.success and sol.solver == "ssprk3" and int(sol.stats["steps"]) == 40
    torch.testing.assert_close(sol.ys, EXACT, rtol=0, atol=1e-5)
    # third order: halving the step divides the error by ~8
    errs = []
    for n in (16, 32, 64):
        ys = odeserve.solve(rot, Y0, T[[0, -1]], solver="ssprk3", steps=n).ys[-1]
        errs.append(float((ys - EXACT[-1]).abs().max()))
    slope = np.polyfit(np.log([1 / 16, 1 / 32, 1 / 64]), np.log(errs), 1)[0]
    assert abs(slope - 3) <= 0.2, (slope, errs)
    # the registered name is listed with the others
    assert "ssprk3" in fresh_registry.entries("solver") and "dopri5" in fresh_registry.entries("solver")


class HalvingController(StepSizeController):
    """Grow by ``grow`` after an accepted step, halve after a rejection."""

    instances: list = []

    def __init__(self, *, error_exponent, dtype, device, grow: float = 1.5):
        super().__init__(error_exponent=error_exponent, dtype=dtype, device=device)
        self.grow, self.half = self.const(grow), self.const(0.5)
        self.calls = 0
        HalvingController.instances.append(self)

    def init_memory(self, like):
        return torch.zeros_like(like)

    def adapt(self, dt, ratio, memory, accept):
        self.calls += 1
        return torch.where(accept, self.grow, self.half), memory + 1


def test_hook_odeserve_register_controllers(fresh_registry):
    class ControllerPlugin:
        @hookimpl
        def odeserve_register_controllers(self, register):
            register.add_controller("halving", HalvingController)

    odeserve.register(ControllerPlugin(), name="halving_plugin")
    assert fresh_registry.entries("controller")["halving"].plugin == "halving_plugin"
    HalvingController.instances.clear()
    sol = odeserve.solve(rot, Y0, T, controller="halving", controller_options={"grow": 1.25}, rtol=1e-7, atol=1e-9)
    assert sol.success
    torch.testing.assert_close(sol.ys, EXACT, rtol=0, atol=1e-6)
    (ctrl,) = HalvingController.instances
    assert ctrl.k == odeserve.get_registry().solver("dopri5").error_order + 1
    assert float(ctrl.grow) == 1.25
    assert ctrl.calls == int(sol.stats["steps"]) > 0
    # its step sequence is its own: not the default PI controller's
    assert int(sol.stats["steps"]) != int(odeserve.solve(rot, Y0, T, rtol=1e-7, atol=1e-9).stats["steps"])


class RecordingSensitivity(Sensitivity):
    name = "recording"
    runs: list = []

    def __init__(self, **options):
        self.options = options

    def run(self, prepared, y0):
        RecordingSensitivity.runs.append((self.options, prepared.solver_name, tuple(y0.shape)))
        return prepared.run(y0)


def test_hook_odeserve_register_sensitivities(fresh_registry):
    class SensitivityPlugin:
        @hookimpl
        def odeserve_register_sensitivities(self, register):
            register.add_sensitivity("recording", RecordingSensitivity)

    odeserve.register(SensitivityPlugin(), name="recording_plugin")
    assert fresh_registry.entries("sensitivity")["recording"].obj is RecordingSensitivity
    RecordingSensitivity.runs.clear()
    sol = odeserve.solve(rot, Y0, T, sensitivity="recording", sensitivity_options={"tag": 7}, solver="rk4", steps=8)
    assert RecordingSensitivity.runs == [({"tag": 7}, "rk4", (1, 2))]
    ref = odeserve.solve(rot, Y0, T, solver="rk4", steps=8)
    assert torch.equal(sol.ys, ref.ys)


def test_plugin_hooks_have_tests():
    """datasette-style: every hook is documented and exercised by a test_hook_<name> here."""
    marker = f"{hookspecs.PROJECT}_spec"
    hooks = [name for name, fn in vars(hookspecs).items() if callable(fn) and hasattr(fn, marker)]
    assert len(hooks) >= 3, hooks
    registrar_methods = {n for n in dir(odeserve.registry.Registrar) if n.startswith("add_")}
    for name in hooks:
        doc = inspect.getdoc(getattr(hookspecs, name)) or ""
        assert len(doc) > 40, f"hook {name} has no real docstring"
        assert any(m in doc for m in registrar_methods), f"hook {name}'s docstring does not say how to register"
        assert f"test_hook_{name}" in globals(), f"hook {name} has no test_hook_{name} in tests/test_plugins.py"



def test_registry_calls_every_hook(fresh_registry):
    """A plugin implementing every hookspec gets each one called on registration (a new
    hookspec that the registry never calls would be dead documentation)."""
    marker = f"{hookspecs.PROJECT}_spec"
    hooks = [name for name, fn in vars(hookspecs).items() if callable(fn) and hasattr(fn, marker)]
    called = []
    impls = {}
    for name in hooks:

        def impl(_name=name, **kwargs):
            called.append((_name, sorted(kwargs)))

        impls[name] = hookimpl(specname=name)(impl)
    plugin = type("AllHooks", (), {f"impl_{n}": staticmethod(f) for n, f in impls.items()})
    odeserve.register(plugin, name="all_hooks")
    assert sorted(n for n, _ in called) == sorted(hooks)
    assert all(kw == ["register"] for _, kw in called)


# ----------------------------------------------------------------------------- conflicts and failures


def test_duplicate_solver_name_names_both_providers(fresh_registry):
    class Impostor(ExplicitRK):
        tableau = ButcherTableau("rk4", c=[0], a=[()], b=[1], order=1)

    class DuplicatePlugin:
        @hookimpl
        def odeserve_register_solvers(self, register):
            register.add_solver("rk4", Impostor)

    builtin = fresh_registry.entries("solver")["rk4"]
    with pytest.raises(DuplicatePluginError) as info:
        odeserve.register(DuplicatePlugin(), name="dup_plugin")
    msg = str(info.value)
    assert "solver 'rk4' is registered twice" in msg
    assert builtin.provider in msg  # builtin_solvers (odeserve x.y.z)
    assert "dup_plugin (registered at run time)" in msg
    # the first registration stands
    assert fresh_registry.entries("solver")["rk4"].obj is builtin.obj
    sol = odeserve.solve(rot, Y0, T, solver="rk4", steps=10)
    torch.testing.assert_close(sol.ys, EXACT, rtol=0, atol=1e-5)


def test_duplicate_plugin_name(fresh_registry):
    odeserve.register(SolverPlugin(), name="twice")
    with pytest.raises(DuplicatePluginError, match="'twice' is already registered"):
        odeserve.register(SolverPlugin(), name="twice")


def test_failing_hook_is_reported_by_name(fresh_registry):
    class ExplodingPlugin:
        @hookimpl
        def odeserve_register_solvers(self, register):
            raise RuntimeError("tableau exploded")

    before = dict(fresh_registry.entries("solver"))
    with pytest.raises(PluginLoadError) as info:
        odeserve.register(ExplodingPlugin(), name="exploding")
    msg = str(info.value)
    assert "'exploding'" in msg and "odeserve_register_solvers" in msg and "tableau exploded" in msg
    assert isinstance(info.value, ImportError)
    # the built-ins keep working
    assert fresh_registry.entries("solver") == before
    assert odeserve.solve(rot, Y0, T).success


def test_registering_a_non_solver_class_fails(fresh_registry):
    class NotASolverPlugin:
        @hookimpl
        def odeserve_register_solvers(self, register):
            register.add_solver("bogus", dict)

    with pytest.raises(PluginLoadError, match=r"'bogus'.*not a subclass of odeserve\.Solver"):
        odeserve.register(NotASolverPlugin(), name="not_a_solver")
    assert "bogus" not in fresh_registry.entries("solver")


def test_broken_entry_point_is_reported_and_others_work(fresh_registry, monkeypatch, capsys):
    _fake_entry_points(monkeypatch, md.EntryPoint("broken_plugin", "odeserve_no_such_module_xyz", hookspecs.PROJECT))
    with pytest.warns(RuntimeWarning, match="broken_plugin"):
        fresh_registry.load()
    (err,) = fresh_registry.errors
    assert isinstance(err, PluginLoadError)
    assert "'broken_plugin'" in str(err) and "failed to import" in str(err)
    assert "odeserve_no_such_module_xyz" in str(err)
    # everything else loaded and works
    assert {"dopri5", "rk4"} <= set(fresh_registry.entries("solver"))
    assert odeserve.solve(rot, Y0, T).success
    # lookups of unknown names point at the broken plugin
    with pytest.raises(UnknownPluginError, match=r"1 plugin\(s\) failed to load"):
        odeserve.solve(rot, Y0, T, solver="from_broken_plugin")
    # and `odeserve plugins` lists it and exits non-zero
    assert cli_main(["plugins"]) == 1
    out = capsys.readouterr().out
    assert "1 plugin problem(s)" in out and "PluginLoadError" in out and "broken_plugin" in out
    assert "dopri5" in out


def test_entry_point_whose_hook_raises(fresh_registry, monkeypatch, tmp_path):
    ep = _plugin_module(tmp_path, monkeypatch, "odeserve_test_exploding_plugin", """
        from odeserve import hookimpl

        @hookimpl
        def odeserve_register_solvers(register):
            raise RuntimeError("tableau exploded")
    """)
    _fake_entry_points(monkeypatch, ep)
    with pytest.warns(RuntimeWarning, match="odeserve_test_exploding_plugin"):
        fresh_registry.load()
    (err,) = fresh_registry.errors
    assert isinstance(err, PluginLoadError)
    assert "odeserve_register_solvers failed" in str(err) and "tableau exploded" in str(err)
    assert odeserve.solve(rot, Y0, T, solver="tsit5").success


def test_entry_point_duplicate_is_reported_not_raised(fresh_registry, monkeypatch, tmp_path):
    ep = _plugin_module(tmp_path, monkeypatch, "odeserve_test_dup_plugin", """
        from odeserve import hookimpl
        from odeserve.plugins.solvers import Euler

        @hookimpl
        def odeserve_register_solvers(register):
            register.add_solver("dopri5", Euler)
    """)
    _fake_entry_points(monkeypatch, ep)
    with pytest.warns(RuntimeWarning, match="registered twice"):
        fresh_registry.load()
    (err,) = fresh_registry.errors
    assert isinstance(err, DuplicatePluginError)
    assert "builtin_solvers (odeserve" in str(err) and "odeserve_test_dup_plugin" in str(err)
    assert fresh_registry.entries("solver")["dopri5"].plugin == "builtin_solvers"
    assert odeserve.solve(rot, Y0, T, solver="dopri5").success


# ----------------------------------------------------------------------------- CLI


def test_cli_plugins_lists_everything():
    proc = subprocess.run(
        [sys.executable, "-m", "odeserve", "plugins"], capture_output=True, text=True, timeout=120, check=False
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    rows = {}
    lines = proc.stdout.splitlines()
    assert lines[0].split()[:4] == ["kind", "name", "order", "adaptive"]
    for line in lines[1:]:
        parts = line.split()
        if parts:
            rows[(parts[0], parts[1])] = parts
    reg = odeserve.Registry()
    solvers = reg.entries("solver")
    assert solvers
    for name, e in solvers.items():
        parts = rows[("solver", name)]
        err = getattr(e.obj, "error_order", None)
        order = f"{e.obj.order}({err})" if err else str(e.obj.order)
        assert parts[2] == order, (name, parts)
        assert parts[3] == ("yes" if e.obj.adaptive else "no")
        assert " ".join(parts[4:]) == e.provider
    for kind in ("controller", "sensitivity"):
        for name, e in reg.entries(kind).items():
            assert " ".join(rows[(kind, name)][4:]) == e.provider
    assert len(rows) == sum(len(reg.entries(k)) for k in ("solver", "controller", "sensitivity"))
