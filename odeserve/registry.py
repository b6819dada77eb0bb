"""The plugin registry: a pluggy manager plus the tables of solvers, controllers, sensitivities.

Built-in and third-party plugins arrive the same way: entry points of the group ``odeserve``
(or :func:`odeserve.register` at run time).  A plugin that fails to import, or whose hook
raises, is recorded with its name and error and reported (warning, ``odeserve plugins``);
the others keep working.  Lookups happen once per solve, before any loop starts.
"""

from __future__ import annotations

import difflib
import importlib.metadata as md
import inspect
import warnings
from dataclasses import dataclass
from typing import Any, Iterator

import pluggy

from . import hookspecs
from .errors import DuplicatePluginError, OdeserveError, PluginLoadError, UnknownPluginError
from .solver import Sensitivity, Solver, StepSizeController

__all__ = ["Registry", "Registrar", "PluginEntry", "get_registry", "set_registry", "register"]

KINDS = {"solver": Solver, "controller": StepSizeController, "sensitivity": Sensitivity}


@dataclass(frozen=True)
class PluginEntry:
    """One registered name: what it is and who provided it."""

    kind: str
    name: str
    obj: type
    plugin: str
    distribution: str

    @property
    def provider(self) -> str:
        return f"{self.plugin} ({self.distribution})"


class Registrar:
    """Handed to the ``odeserve_register_*`` hooks; records who registers what."""

    def __init__(self, registry: "Registry", plugin: str, distribution: str) -> None:
        self._registry = registry
        self._plugin = plugin
        self._distribution = distribution

    def add_solver(self, name: str, cls: type) -> None:
        self._registry._add("solver", name, cls, self._plugin, self._distribution)

    def add_controller(self, name: str, cls: type) -> None:
        self._registry._add("controller", name, cls, self._plugin, self._distribution)

    def add_sensitivity(self, name: str, cls: type) -> None:
        self._registry._add("sensitivity", name, cls, self._plugin, self._distribution)


class Registry:
    """Plugin manager and name tables.  ``entry_points=False`` gives an empty registry
    (tests fill it with :meth:`register`)."""

    def __init__(self, entry_points: bool = True) -> None:
        self.pm = pluggy.PluginManager(hookspecs.PROJECT)
        self.pm.add_hookspecs(hookspecs)
        self._tables: dict[str, dict[str, PluginEntry]] = {k: {} for k in KINDS}
        self.errors: list[OdeserveError] = []
        self._entry_points = entry_points
        self._loaded = False

    # ------------------------------------------------------------------ loading
    def load(self) -> "Registry":
        if self._loaded:
            return self
        self._loaded = True
        if not self._entry_points:
            return self
        for ep in md.entry_points(group=hookspecs.PROJECT):
            dist = f"{ep.dist.name} {ep.dist.version}" if ep.dist is not None else "unknown distribution"
            try:
                module = ep.load()
            except Exception as exc:  # a broken plugin must not take the others down
                self._report(PluginLoadError(f"odeserve plugin {ep.name!r} ({dist}) failed to import: {exc!r}"))
                continue
            self._register_plugin(module, ep.name, dist)
        if not self._tables["solver"]:
            self._report(
                PluginLoadError(
                    "no solvers were found through the 'odeserve' entry-point group: install the package "
                    "(pip install -e .) so its built-in plugins are registered"
                )
            )
        return self

    def register(self, plugin: Any, name: str | None = None) -> str:
        """Add a plugin object (module, class or instance with hookimpls) at run time.
        Errors (a failing hook, a duplicate name) raise here instead of being recorded."""
        self.load()
        name = name or getattr(plugin, "__name__", None) or type(plugin).__name__
        self._register_plugin(plugin, name, "registered at run time", strict=True)
        return name

    def _register_plugin(self, plugin: Any, name: str, dist: str, strict: bool = False) -> None:
        if self.pm.is_registered(plugin) or self.pm.has_plugin(name):
            err = DuplicatePluginError(f"a plugin named {name!r} is already registered")
            if strict:
                raise err
            self._report(err)
            return
        try:
            self.pm.register(plugin, name=name)
        except Exception as exc:
            err = PluginLoadError(f"odeserve plugin {name!r} ({dist}) could not be registered: {exc}")
            if strict:
                raise err from exc
            self._report(err)
            return
        registrar = Registrar(self, name, dist)
        for hook in (
            self.pm.hook.odeserve_register_solvers,
            self.pm.hook.odeserve_register_controllers,
            self.pm.hook.odeserve_register_sensitivities,
        ):
            for impl in hook.get_hookimpls():
                if impl.plugin is not plugin:
                    continue
                try:
                    impl.function(register=registrar)
                except DuplicatePluginError as exc:
                    if strict:
                        raise
                    self._report(exc)
                except Exception as exc:
                    err = PluginLoadError(f"odeserve plugin {name!r} ({dist}): hook {hook.name} failed: {exc!r}")
                    if strict:
                        raise err from exc
                    self._report(err)

    def _report(self, err: OdeserveError) -> None:
        self.errors.append(err)
        warnings.warn(str(err), RuntimeWarning, stacklevel=3)

    def _add(self, kind: str, name: str, obj: type, plugin: str, dist: str) -> None:
        base = KINDS[kind]
        if not (inspect.isclass(obj) and issubclass(obj, base)):
            raise PluginLoadError(
                f"odeserve plugin {plugin!r} ({dist}) registered {kind} {name!r} as {obj!r}, "
                f"which is not a subclass of odeserve.{base.__name__}"
            )
        if kind == "solver":
            missing = [a for a in ("order", "evals_per_step") if not hasattr(obj, a)]
            if missing:
                raise PluginLoadError(
                    f"odeserve plugin {plugin!r} ({dist}) registered solver {name!r} without {', '.join(missing)}"
                )
        table = self._tables[kind]
        if name in table:
            old = table[name]
            raise DuplicatePluginError(
                f"{kind} {name!r} is registered twice: by {old.provider} and by {plugin} ({dist}); "
                "rename one of them or uninstall one plugin"
            )
        table[name] = PluginEntry(kind, name, obj, plugin, dist)

    # ------------------------------------------------------------------ lookup
    def entries(self, kind: str) -> dict[str, PluginEntry]:
        self.load()
        return dict(sorted(self._tables[kind].items()))

    def get(self, kind: str, name: str) -> type:
        table = self.entries(kind)
        if not isinstance(name, str) or name not in table:
            known = ", ".join(table) or "(none registered)"
            close = difflib.get_close_matches(str(name), list(table), n=1)
            hint = f" Did you mean {close[0]!r}?" if close else ""
            broken = f" ({len(self.errors)} plugin(s) failed to load: see `odeserve plugins`)" if self.errors else ""
            plural = kind[:-1] + "ies" if kind.endswith("y") else kind + "s"
            raise UnknownPluginError(f"unknown {kind} {name!r}; known {plural}: {known}.{hint}{broken}")
        return table[name].obj

    def solver(self, name: str) -> type[Solver]:
        return self.get("solver", name)

    def controller(self, name: str) -> type[StepSizeController]:
        return self.get("controller", name)

    def sensitivity(self, name: str) -> type[Sensitivity]:
        return self.get("sensitivity", name)

    def __iter__(self) -> Iterator[PluginEntry]:
        for kind in KINDS:
            yield from self.entries(kind).values()


_REGISTRY: Registry | None = None


def get_registry() -> Registry:
    """The process-wide registry, loaded from entry points on first use."""
    global _REGISTRY
    if _REGISTRY is None:
        _REGISTRY = Registry()
    return _REGISTRY.load()


def set_registry(registry: Registry | None) -> Registry | None:
    """Swap the process-wide registry (tests use a fresh one each); returns the old one."""
    global _REGISTRY
    old, _REGISTRY = _REGISTRY, registry
    return old


def register(plugin: Any, name: str | None = None) -> str:
    """Add a plugin at run time to the process-wide registry."""
    return get_registry().register(plugin, name)
