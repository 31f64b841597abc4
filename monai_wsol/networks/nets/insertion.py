"""Insert plug-ins into a backbone without renaming any of its parameters, and load plain checkpoints after.

A plug-in becomes a NEW named entry of the ``nn.Sequential`` that holds its anchor (the layer it follows): the
container is rebuilt from an ``OrderedDict`` of its children with the new entry after the anchor, so every
existing child keeps its name and every backbone parameter keeps its state-dict key. A checkpoint of the plain
network (no plug-in) therefore loads into the network with plug-ins; :func:`load_plain_state_dict` checks that
only plug-in keys are left out.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Mapping, Sequence

import torch
import torch.nn as nn

__all__ = ["insert_after", "load_plain_state_dict", "resolve_positions"]


def resolve_positions(
    positions: str | Sequence[str], presets: Mapping[str, Sequence[str]], valid: Sequence[str]
) -> tuple[str, ...]:
    """Turn ``positions`` (a preset name, one position name or a list of names) into position names.

    Args:
        positions: e.g. ``"two"``, ``"conv5_3"`` or ``["conv4_3", "conv5_3"]``.
        presets: preset name -> position names (e.g. ``{"one": ("conv5_3",), "two": (...)}``).
        valid: every valid position name, in network order (used to sort and in error messages).

    Returns:
        The position names, unique, in network order.
    """
    if isinstance(positions, str):
        names = tuple(presets[positions]) if positions in presets else (positions,)
    elif isinstance(positions, Sequence) and all(isinstance(p, str) for p in positions):
        names = tuple(positions)
    else:
        raise TypeError(
            f"positions must be a preset name, a position name or a list of names, got {positions!r}."
        )
    unknown = [n for n in names if n not in valid]
    if unknown or not names:
        raise ValueError(
            f"unknown plug-in position(s) {unknown or names!r}; valid presets: {', '.join(presets)}; "
            f"valid positions: {', '.join(valid)}."
        )
    if len(set(names)) != len(names):
        raise ValueError(f"plug-in positions must be unique, got {list(names)}.")
    return tuple(sorted(names, key=list(valid).index))


def insert_after(root: nn.Module, anchor: str, name: str, module: nn.Module) -> str:
    """Insert ``module`` as entry ``name`` right after the child ``anchor`` of an ``nn.Sequential`` in
    ``root``.

    Args:
        root: the network.
        anchor: dotted path of the layer to follow, e.g. ``"backbone.29"`` or ``"backbone.transition3.relu"``;
            its parent must be an ``nn.Sequential``.
        name: the new entry's name inside that parent (must be new there).
        module: the plug-in.

    Returns:
        The dotted path of the inserted module, e.g. ``"backbone.plugin_conv5_3"``.
    """
    parent_path, _, child = anchor.rpartition(".")
    parent = root.get_submodule(parent_path) if parent_path else root
    if not isinstance(parent, nn.Sequential):
        raise TypeError(
            f"cannot insert after {anchor!r}: its parent is a {type(parent).__name__}, not nn.Sequential."
        )
    children = OrderedDict(parent.named_children())
    if child not in children:
        raise KeyError(f"cannot insert after {anchor!r}: no such layer (children: {', '.join(children)}).")
    if name in children:
        raise KeyError(f"cannot insert {name!r} after {anchor!r}: the name is taken.")
    rebuilt: OrderedDict[str, nn.Module] = OrderedDict()
    for key, value in children.items():
        rebuilt[key] = value
        if key == child:
            rebuilt[name] = module
    new_parent = nn.Sequential(rebuilt)
    if parent_path:
        grand_path, _, parent_name = parent_path.rpartition(".")
        grand = root.get_submodule(grand_path) if grand_path else root
        setattr(grand, parent_name, new_parent)
    else:
        raise TypeError(
            "cannot insert into the root module itself; anchor must name a layer inside a Sequential."
        )
    return f"{parent_path}.{name}"


def load_plain_state_dict(net: nn.Module, state_dict: Mapping[str, torch.Tensor]) -> None:
    """Load a checkpoint of the plain network (no plug-in) into ``net``, which may carry plug-ins.

    The plug-ins keep their own (initial) parameters; everything else must match exactly: a key of ``net``
    that is missing from ``state_dict`` and is not a plug-in's, or a key of ``state_dict`` that ``net`` does
    not have, raises. Shape mismatches raise as in ``load_state_dict``.

    Args:
        net: a network exposing ``plugin_names`` (dotted paths of its plug-ins), e.g. any
            :class:`~monai_wsol.networks.nets.CAMClassifier`.
        state_dict: the plain checkpoint (e.g. ``torch.load(path, weights_only=True)``).
    """
    prefixes = tuple(f"{p}." for p in getattr(net, "plugin_names", ()))
    own = set(net.state_dict())
    missing = sorted(k for k in own - set(state_dict) if not k.startswith(prefixes))
    unexpected = sorted(set(state_dict) - own)
    # Checked before loading, so a mismatching checkpoint leaves ``net`` untouched.
    if missing or unexpected:
        raise KeyError(
            f"plain checkpoint does not match {type(net).__name__} outside its plug-ins "
            f"({', '.join(p.rstrip('.') for p in prefixes) or 'none'}): missing keys {missing[:10]}"
            f"{' ...' if len(missing) > 10 else ''}, unexpected keys {unexpected[:10]}"
            f"{' ...' if len(unexpected) > 10 else ''}."
        )
    net.load_state_dict(dict(state_dict), strict=False)
