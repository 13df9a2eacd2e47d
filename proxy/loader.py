"""Resolve proxy.yaml's `plugins:` list into validated plugin instances.

`use:` is an entry-point name in the `weir.plugins` group (built-ins register there too),
or a `module:attr` import path. An installed plugin is inactive until it is listed.
Any load or config error stops startup with the YAML path in the message. An entry's
`timeout:` and `lifespan_timeout:` become the plugin's time limits.
"""

from __future__ import annotations

import importlib
from importlib.metadata import entry_points
from typing import Any

from proxy.config import PluginSpec
from proxy.dataclass_builder import ConfigError, build
from proxy.plugin import Plugin

GROUP = "weir.plugins"


def resolve(use: str, path: str) -> type[Plugin]:
    """The plugin class named by `use`."""
    target: Any
    if ":" in use:
        module_name, _, attr = use.partition(":")
        try:
            target = importlib.import_module(module_name)
            for part in attr.split("."):
                target = getattr(target, part)
        except (ImportError, AttributeError) as exc:
            raise ConfigError(path, f"cannot import {use!r}: {exc}") from exc
    else:
        found = [ep for ep in entry_points(group=GROUP) if ep.name == use]
        if not found:
            names = sorted({ep.name for ep in entry_points(group=GROUP)})
            raise ConfigError(path, f"no plugin named {use!r} (installed: {', '.join(names) or 'none'})")
        try:
            target = found[0].load()
        except Exception as exc:
            raise ConfigError(path, f"cannot load plugin {use!r}: {exc}") from exc
    if not (isinstance(target, type) and issubclass(target, Plugin)):
        raise ConfigError(path, f"{use!r} is not a weir Plugin subclass")
    return target


def load_plugins(specs: tuple[PluginSpec, ...]) -> list[Plugin]:
    """Instantiate every listed plugin with its validated config, in order."""
    plugins: list[Plugin] = []
    for i, spec in enumerate(specs):
        cls = resolve(spec.use, f"plugins[{i}].use")
        config = build(cls.Config, spec.config, f"plugins[{i}].config")
        try:
            plugin = cls(config)
        except (ValueError, TypeError) as exc:
            raise ConfigError(f"plugins[{i}].config", str(exc)) from exc
        if spec.timeout is not None:
            plugin.timeout = spec.timeout
        if spec.lifespan_timeout is not None:
            plugin.lifespan_timeout = spec.lifespan_timeout
        plugins.append(plugin)
    return plugins
