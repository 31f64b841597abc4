"""Plug-in registry: any backbone of ``monai_wsol.networks.nets`` takes any plug-in at a named position.

A plug-in is a factory ``factory(spatial_dims, in_channels, **kwargs) -> nn.Module`` whose module maps
(B, C, *spatial) to (B, C, *spatial). Built-in plug-ins are registered as ``"module.path:Attribute"`` strings
and imported only when first asked for, so importing the registry never imports every plug-in (nor fails
because one plug-in module is missing).

Example::

    from monai_wsol.networks.blocks.registry import get_plugin
    block = get_plugin("dual_suppression")(2, 512, cr=0.8, t=0.4)
"""

from __future__ import annotations

import importlib
from collections.abc import Callable

import torch.nn as nn

__all__ = ["PluginFactory", "available_plugins", "get_plugin", "register_plugin"]

PluginFactory = Callable[..., nn.Module]

_REGISTRY: dict[str, str | PluginFactory] = {
    "dual_suppression": "monai_wsol.networks.blocks.dual_suppression:DualSuppressionBlock",
    "adl": "monai_wsol.networks.blocks.adl:ADL",
}


def available_plugins() -> tuple[str, ...]:
    """The registered plug-in names, sorted."""
    return tuple(sorted(_REGISTRY))


def register_plugin(name: str, factory: str | PluginFactory, overwrite: bool = False) -> None:
    """Register ``factory`` under ``name``.

    Args:
        name: the name nets accept as ``plugin=``.
        factory: a callable ``factory(spatial_dims, in_channels, **kwargs) -> nn.Module`` or a lazy
            ``"package.module:Attribute"`` string resolved on first :func:`get_plugin`.
        overwrite: replace an existing entry instead of raising.
    """
    if not isinstance(name, str) or not name:
        raise ValueError(f"plug-in name must be a non-empty string, got {name!r}.")
    if isinstance(factory, str):
        if factory.count(":") != 1:
            raise ValueError(f"lazy plug-in factory must read 'package.module:Attribute', got {factory!r}.")
    elif not callable(factory):
        raise TypeError(f"plug-in factory for {name!r} must be callable or a 'module:Attribute' string.")
    if name in _REGISTRY and not overwrite:
        raise ValueError(f"plug-in {name!r} is already registered; pass overwrite=True to replace it.")
    _REGISTRY[name] = factory


def get_plugin(name: str) -> PluginFactory:
    """The factory registered as ``name``; lazy entries are imported now.

    Raises:
        KeyError: unknown name (the message lists the valid ones).
        ImportError: a lazy entry whose module or attribute cannot be imported.
    """
    if name not in _REGISTRY:
        raise KeyError(f"unknown plug-in {name!r}; valid plug-ins: {', '.join(available_plugins())}.")
    factory = _REGISTRY[name]
    if isinstance(factory, str):
        module_name, attr = factory.split(":")
        try:
            factory = getattr(importlib.import_module(module_name), attr)
        except (ImportError, AttributeError) as e:
            raise ImportError(f"plug-in {name!r}: cannot import {attr!r} from {module_name!r} ({e}).") from e
        _REGISTRY[name] = factory
    return factory
