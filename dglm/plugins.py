"""Plugin discovery (the `dglm` entry-point group) and the attribute registry built from it."""

from __future__ import annotations

import importlib.metadata
from dataclasses import dataclass
from pathlib import Path

import pluggy

from dglm import hookspecs
from dglm.errors import DglmError
from dglm.probes import Probe, load_probe

ENTRY_POINT_GROUP = "dglm"

plugin_manager = pluggy.PluginManager("dglm")
plugin_manager.add_hookspecs(hookspecs)
_entry_points_loaded = False


def _manager() -> pluggy.PluginManager:
    global _entry_points_loaded
    if not _entry_points_loaded:
        plugin_manager.load_setuptools_entrypoints(ENTRY_POINT_GROUP)
        _entry_points_loaded = True
    return plugin_manager


def register_plugin(plugin: object, name: str | None = None) -> None:
    """Register a plugin object (a module or class with hookimpls) from application code."""
    _manager().register(plugin, name=name)


def unregister_plugin(name: str) -> None:
    _manager().unregister(name=name)


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


@dataclass
class PluginInfo:
    name: str
    version: str | None
    attributes: list[str]


def _distribution_versions() -> dict[str, str]:
    """Map entry-point module names to the version of the distribution that ships them."""
    versions = {}
    for dist in importlib.metadata.distributions():
        for entry_point in dist.entry_points:
            if entry_point.group == ENTRY_POINT_GROUP:
                versions[entry_point.name] = dist.version
    return versions


def get_attributes() -> dict[str, Attribute]:
    """Every attribute registered by every plugin; two plugins claiming one name is an error."""
    attributes: dict[str, Attribute] = {}
    for impl in _manager().hook.register_attributes.get_hookimpls():

        def register(card_path: Path | str, _plugin: str = impl.plugin_name) -> None:
            probe = load_probe(card_path)
            if probe.name in attributes:
                raise DglmError(
                    f"attribute {probe.name!r} is registered by two plugins, "
                    f"{attributes[probe.name].plugin!r} and {_plugin!r}; uninstall or rename one"
                )
            attributes[probe.name] = Attribute(probe, Path(card_path), _plugin)

        impl.function(register=register)
    return dict(sorted(attributes.items()))


def get_plugins() -> list[PluginInfo]:
    """Installed plugins with the attributes each one registers."""
    versions = _distribution_versions()
    by_plugin: dict[str, list[str]] = {}
    for attribute in get_attributes().values():
        by_plugin.setdefault(attribute.plugin, []).append(attribute.name)
    names = [name for name, _ in _manager().list_name_plugin()]
    return [PluginInfo(name, versions.get(name), by_plugin.get(name, [])) for name in sorted(names)]
