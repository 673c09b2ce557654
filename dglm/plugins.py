"""Plugin discovery (the `dglm` entry-point group) and the registries built from it: attributes, samplers and
evaluation methods.

Each registry is built once per process and built again only when the set of registered plugins changes
(`register_plugin` / `unregister_plugin`), so that asking for attributes does not reload every probe."""

from __future__ import annotations

import importlib.metadata
import sys
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

import pluggy

from dglm import hookspecs
from dglm.attributes.probes import Probe, load_probe
from dglm.constraints import PHRASE, Constraint
from dglm.errors import DglmError
from dglm.hookspecs import ENTRY_POINT_GROUP
from dglm.interfaces import Method, Sampler

plugin_manager = pluggy.PluginManager("dglm")
plugin_manager.add_hookspecs(hookspecs)
_entry_points_loaded = False
_registries: dict[str, tuple[tuple, dict]] = {}  # registry name -> (the plugins it was built from, the registry)


_failed: dict[str, str] = {}  # plugin name -> why it failed to load or to register, for error messages
# "plugin", "attribute", ... -> {a name two plugins claim: the sentence saying so}
_clashes: dict[str, dict[str, str]] = {}
_warned: set[str] = set()


def _manager() -> pluggy.PluginManager:
    global _entry_points_loaded
    if not _entry_points_loaded:
        _entry_points_loaded = True
        clashing = _entry_point_clashes()
        for entry_point in importlib.metadata.entry_points(group=ENTRY_POINT_GROUP):
            if entry_point.name in clashing:
                continue
            if plugin_manager.get_plugin(entry_point.name) is None and not plugin_manager.is_blocked(entry_point.name):
                try:
                    plugin_manager.register(entry_point.load(), name=entry_point.name)
                except Exception as error:  # a broken plugin must not take dglm down with it
                    _skip(entry_point.name, error)
        _note_clashes("plugin", clashing)
    return plugin_manager


def _entry_point_clashes() -> dict[str, str]:
    """Plugin names claimed by entry points of two distributions (a plugin named like a built-in attribute, say):
    neither is loaded, since which one wins would depend on the order the distributions are found in."""
    owners: dict[str, list[str]] = {}
    for entry_point in importlib.metadata.entry_points(group=ENTRY_POINT_GROUP):
        owner = entry_point.dist.name if entry_point.dist is not None else "an unnamed distribution"
        if owner not in owners.setdefault(entry_point.name, []):
            owners[entry_point.name].append(owner)
    return {name: f"the plugin name {name!r} is claimed by two installed distributions, "
                  f"{' and '.join(map(repr, sorted(dists)))}; uninstall one of them, or rename its entry "
                  "point in the `dglm` group"
            for name, dists in owners.items() if len(dists) > 1}


def _note_clashes(kind: str, clashes: dict[str, str]) -> None:
    """Keep the clashes of one kind of name (as of the registry's last build), with a one-line warning the first
    time each is seen: what the clashing plugins provide under a name is left out, the rest keeps working, and only
    a request for that name fails (`why_missing`)."""
    _clashes[kind] = clashes
    for name, message in clashes.items():
        if message not in _warned:
            _warned.add(message)
            print(f"dglm: warning: {message}; until then {name!r} is left out", file=sys.stderr)


def _skip(plugin: str, error: Exception) -> None:
    """Note a plugin that failed, with a one-line warning the first time."""
    if plugin not in _failed:
        _failed[plugin] = f"{type(error).__name__}: {error}"
        print(f"dglm: warning: plugin {plugin!r} failed to load and is skipped ({_failed[plugin]})", file=sys.stderr)


def failed_plugins() -> dict[str, str]:
    """Plugins that failed to load or to register, with why."""
    _manager()
    return dict(_failed)


def _claims(hook: str, make_entry) -> dict[str, list[tuple[object, str]]]:
    """Each name the plugins register through `hook`, with every (entry, plugin) that claims it. `make_entry` turns
    a `register(...)` call's argument into (name, entry). A plugin whose hook raises registers nothing and is
    skipped."""
    claims: dict[str, list[tuple[object, str]]] = {}
    for impl in getattr(_manager().hook, hook).get_hookimpls():
        registered: list[tuple[str, object]] = []
        try:
            impl.function(register=lambda item: registered.append(make_entry(item)))
        except Exception as error:  # a broken plugin must not take dglm down with it
            _skip(impl.plugin_name, error)
            continue
        for name, entry in registered:
            claims.setdefault(name, []).append((entry, impl.plugin_name))
    return claims


def _unclashed(kind: str, claims: dict[str, list[tuple[object, str]]]) -> dict[str, tuple[object, str]]:
    """The names only one plugin claims, each with its (entry, plugin); a name claimed twice is left out and noted."""
    found, clashes = {}, {}
    for name, owners in claims.items():
        if len(owners) == 1:
            found[name] = owners[0]
        else:
            plugins = " and ".join(repr(plugin) for _, plugin in owners)
            clashes[name] = f"{kind} {name!r} is registered by two plugins, {plugins}; uninstall or rename one of them"
    _note_clashes(kind, clashes)
    return found


def register_plugin(plugin: object, name: str | None = None) -> None:
    """Register a plugin object (a module or class with hookimpls) from application code."""
    _manager().register(plugin, name=name)


def unregister_plugin(name: str) -> None:
    _manager().unregister(name=name)
    _failed.pop(name, None)


@dataclass
class Attribute:
    """A named attribute: its probe (labels and card inside) and the plugin that registered it."""

    probe: Probe
    card_path: Path
    plugin: str

    @property
    def name(self) -> str:
        return self.probe.name

    @property
    def labels(self) -> list[str]:
        return self.probe.labels

    def summary(self) -> dict:
        """What `dglm attributes --json` and the server's /v1/attributes list."""
        card = self.probe.card
        return {"name": self.name, "labels": self.labels, "encoder": card["encoder"],
                "encoder_dim": card["encoder_dim"],
                "held_out_accuracy": card.get("held_out_accuracy"),
                "noise_conditioned": self.probe.noise_conditioned is not None, "plugin": self.plugin}


@dataclass
class PluginInfo:
    name: str
    version: str | None
    hooks: list[str]
    attributes: list[str]
    samplers: list[str]
    methods: list[str]


def _distribution_versions() -> dict[str, str]:
    """Map entry-point module names to the version of the distribution that ships them."""
    versions = {}
    for dist in importlib.metadata.distributions():
        for entry_point in dist.entry_points:
            if entry_point.group == ENTRY_POINT_GROUP:
                versions[entry_point.name] = dist.version
    return versions


def _cached(registry: str, build) -> dict:
    """`build()`'s registry, rebuilt only when the registered plugins differ from those it was built from."""
    plugins = tuple((name, id(plugin)) for name, plugin in _manager().list_name_plugin())
    if registry not in _registries or _registries[registry][0] != plugins:
        _registries[registry] = (plugins, build())
    return _registries[registry][1]


def get_attributes() -> dict[str, Attribute]:
    """Every attribute registered by every plugin; a name two plugins claim is left out, with a warning, and a
    request for it fails saying so (`why_missing`)."""
    return _cached("attributes", _build_attributes)


def _build_attributes() -> dict[str, Attribute]:
    def entry(card_path: Path | str) -> tuple[str, tuple[Probe, Path]]:
        probe = load_probe(card_path)
        if probe.name == PHRASE:
            raise DglmError("the attribute name 'phrase' is reserved for phrase constraints (--toward / --away); "
                            "rename the probe")
        return probe.name, (probe, Path(card_path))

    registered = _unclashed("attribute", _claims("register_attributes", entry))
    return {name: Attribute(*found, plugin) for name, (found, plugin) in sorted(registered.items())}


def get_samplers() -> dict[str, type[Sampler]]:
    """Every registered sampler (the built-in ones are registered by the `dglm-samplers` plugin), by name."""
    return {name: sampler for name, (sampler, _) in _cached("samplers", _build_samplers).items()}


def _build_samplers() -> dict[str, tuple[type, str]]:
    return _named_classes("register_samplers", Sampler, "sampler")


def get_methods() -> dict[str, type[Method]]:
    """Every registered evaluation method (DGLM and the baselines come from the `dglm-methods` plugin), by name."""
    return {name: method for name, (method, _) in _cached("methods", _build_methods).items()}


def _build_methods() -> dict[str, tuple[type, str]]:
    return _named_classes("register_methods", Method, "method")


def _named_classes(hook: str, base: type, kind: str) -> dict[str, tuple[type, str]]:
    """Classes by their `name`, each with the plugin that registered it."""
    def entry(cls: type) -> tuple[str, type]:
        if not (isinstance(cls, type) and issubclass(cls, base) and cls.name):
            raise DglmError(f"it registered {cls!r}, which is not a named {base.__module__}.{base.__name__} subclass")
        return cls.name, cls

    return _unclashed(kind, _claims(hook, entry))


def get_sampler(name: str) -> type[Sampler]:
    samplers = get_samplers()
    if not samplers:
        raise DglmError("no sampler is registered, not even the built-in ones (the `dglm-samplers` entry point): "
                        "reinstall dglm (`pip install -e .` in a checkout) so that its entry points are current",
                        field="sampler")
    if name not in samplers:
        raise DglmError(f"unknown sampler {name!r}; known samplers: "
                        f"{', '.join(samplers)}{why_missing(name)}", field="sampler")
    return samplers[name]


def why_missing(name: str) -> str:
    """What to add to an 'unknown name' message: that two plugins claim the name, or else which plugins failed (the
    name may have been theirs)."""
    _manager()
    clash = next((clashes[name] for clashes in _clashes.values() if name in clashes), None)
    if clash:
        return f"; {clash}"
    return "".join(f"; plugin {plugin!r} failed to load ({why}), so what it provides is missing"
                   for plugin, why in failed_plugins().items())


def attribute_terms(constraints: list[Constraint]) -> list[tuple[Probe, int, float]]:
    """Each constraint's probe, label index and weight from the registered attributes: an unknown attribute or label
    fails here, with what is known, before any model loads. Phrases are no probes (`dglm.stages.guidance`)."""
    attributes, terms = get_attributes(), []
    for constraint in constraints:
        if constraint.attribute == PHRASE:
            continue
        if constraint.attribute not in attributes:
            known = ", ".join(attributes) or "none (install an attribute plugin)"
            raise DglmError(f"unknown attribute {constraint.attribute!r}; known attributes: {known}"
                            f"{why_missing(constraint.attribute)}")
        probe = attributes[constraint.attribute].probe
        terms.append((probe, probe.label_index(constraint.label), constraint.weight))
    return terms


def get_plugins() -> list[PluginInfo]:
    """Installed plugins with the hooks each implements and what it registers through them."""
    versions = _distribution_versions()
    attributes = _by_plugin((attribute.name, attribute.plugin) for attribute in get_attributes().values())
    samplers = _by_plugin((name, plugin) for name, (_, plugin) in _cached("samplers", _build_samplers).items())
    methods = _by_plugin((name, plugin) for name, (_, plugin) in _cached("methods", _build_methods).items())
    infos = []
    for name, plugin in sorted(_manager().list_name_plugin()):
        hooks = sorted(caller.name for caller in _manager().get_hookcallers(plugin) or [])
        infos.append(PluginInfo(name, versions.get(name), hooks, attributes.get(name, []), samplers.get(name, []),
                                methods.get(name, [])))
    return infos


def _by_plugin(registered: Iterable[tuple[str, str]]) -> dict[str, list[str]]:
    """Names grouped by the plugin that registered them, from (name, plugin) pairs."""
    grouped: dict[str, list[str]] = {}
    for name, plugin in registered:
        grouped.setdefault(plugin, []).append(name)
    return grouped
