"""Network blocks: the dual-suppression (SFS) block and the plug-in registry (ADL is resolved lazily)."""

from monai_wsol.networks.blocks.dual_suppression import (
    G_FAMILIES,
    DualSuppressionBlock,
    g_alpha,
    suppress_discriminative,
    suppress_irrelevant,
)
from monai_wsol.networks.blocks.registry import available_plugins, get_plugin, register_plugin

__all__ = [
    "G_FAMILIES",
    "DualSuppressionBlock",
    "available_plugins",
    "g_alpha",
    "get_plugin",
    "register_plugin",
    "suppress_discriminative",
    "suppress_irrelevant",
]
