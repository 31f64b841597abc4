"""Network blocks: the dual-suppression (SFS) block and the plug-in registry.

The registry resolves plug-in names lazily.
"""

from monai_wsol.networks.blocks.adl import ADL
from monai_wsol.networks.blocks.dual_suppression import (
    G_FAMILIES,
    DualSuppressionBlock,
    g_alpha,
    suppress_discriminative,
    suppress_irrelevant,
)
from monai_wsol.networks.blocks.registry import available_plugins, get_plugin, register_plugin

__all__ = [
    "ADL",
    "G_FAMILIES",
    "DualSuppressionBlock",
    "available_plugins",
    "g_alpha",
    "get_plugin",
    "register_plugin",
    "suppress_discriminative",
    "suppress_irrelevant",
]
