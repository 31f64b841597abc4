"""The inferer MONAI Label runs: class logits and the normalised lesion CAM, as one dictionary.

MONAI Label's ``BasicInferTask.run_inferer`` calls ``inferer(image[None], network)`` once and decollates a
dictionary output, so :class:`LocalizationInferer` returns ``{"pred": logits, "cam": map}`` from a single
forward pass of the bundle's CAM extractor (by default ``forward_cam``, through
:class:`monai_wsol.extractors.ForwardCAM`, as :class:`monai_wsol.engines.CAMInferer`).

Viewers (3D Slicer, OHIF) always send volumes. A 2D network given a 3D volume ``(B, C, X, Y, Z)`` runs slice
by slice (:class:`monai_wsol.extractors.SliceBySliceExtractor`, as the bundle's inference), by default along
the last array axis (the slice axis of NIfTI files and of MONAI's DICOM series); the raw CAMs of all slices
are normalised **together**, so a slice without a lesion keeps low values instead of being stretched to
[0, 1] on its own, and the volume's class probabilities are those of the slice most likely to hold the lesion
(a volume holds a lesion when one of its slices does).
"""

from __future__ import annotations

from typing import Any

import torch
from monai.data import MetaTensor
from monai.inferers import Inferer

from monai_wsol.engines.inference import unwrap_network
from monai_wsol.extractors import CAMExtractor, SliceBySliceExtractor, get_extractor

__all__ = ["LocalizationInferer", "InputShapeError"]


class InputShapeError(ValueError):
    """The image does not fit the network (spatial dims or channels): a client error, not a server one."""


class LocalizationInferer(Inferer):
    """``extractor(network)`` -> ``{pred_key: logits (B, K), cam_key: CAM (B, 1, *spatial) in [0, 1]}``.

    Args:
        cam_class: the class whose activation map is the lesion map (the bundle's ``cam_class``).
        extractor: the CAM extractor (an instance or a name of :func:`monai_wsol.extractors.get_extractor`,
            e.g. the bundle method's, with its flip test-time augmentation); default ``"cam"``.
        slice_axis: the volume axis a 2D network runs along (see
            :class:`~monai_wsol.extractors.SliceBySliceExtractor`).
        slice_batch: slices per forward pass when a 2D network runs through a 3D volume (bounds memory).
        pred_key, cam_key: output keys.
        slice_key: output key of the per-slice logits ``(B, Z, K)`` of a volume run slice by slice (absent
            otherwise); ``None`` leaves them out.

    Input: ``(B, C, *spatial)`` with the network's ``spatial_dims`` spatial axes, or ``(B, C, X, Y, Z)`` for a
    2D network. The CAM is upsampled to the input grid, so the input's affine is the CAM's.
    """

    def __init__(
        self,
        cam_class: int = 1,
        extractor: CAMExtractor | str = "cam",
        slice_axis: int = -1,
        slice_batch: int = 16,
        pred_key: str = "pred",
        cam_key: str = "cam",
        slice_key: str | None = "slice_pred",
    ) -> None:
        super().__init__()
        if isinstance(cam_class, bool) or not isinstance(cam_class, int) or cam_class < 0:
            raise ValueError(f"cam_class must be a non-negative int class index, got {cam_class!r}.")
        self.cam_class = cam_class
        self.pred_key, self.cam_key, self.slice_key = pred_key, cam_key, slice_key
        self._extractor = get_extractor(extractor)
        self._slice_extractor = SliceBySliceExtractor(
            self._extractor, slice_axis=slice_axis, positive_class=cam_class, slice_batch=slice_batch
        )

    def __call__(self, inputs: torch.Tensor, network: torch.nn.Module, *args: Any, **kwargs: Any) -> dict:
        net = unwrap_network(network)
        sd = getattr(net, "spatial_dims", None)
        if sd not in (2, 3):
            raise TypeError(
                "LocalizationInferer needs a monai_wsol CAM network (spatial_dims 2 or 3); "
                f"got {type(net).__name__}."
            )
        x = inputs.as_tensor() if isinstance(inputs, MetaTensor) else inputs
        channels = getattr(net, "in_channels", None)
        if x.ndim >= 3 and channels is not None and x.shape[1] != channels:
            raise InputShapeError(
                f"the image has {x.shape[1]} channel(s), the network takes {channels} "
                "(e.g. an RGB image sent to a grayscale model)."
            )
        if x.ndim == sd + 2:
            logits, cams = self._extractor(net, x, self.cam_class)
            out = {self.pred_key: logits}
        elif sd == 2 and x.ndim == 5:
            logits, cams, slice_logits = self._slice_extractor.extract(net, x, self.cam_class)
            out = {self.pred_key: logits}
            if self.slice_key is not None:
                out[self.slice_key] = slice_logits
        else:
            raise InputShapeError(
                f"LocalizationInferer: input of shape {tuple(x.shape)} does not fit a {sd}D network: "
                f"expected (B, C, *spatial) with {sd} spatial axes"
                + (" or a 3D volume (B, C, X, Y, Z)." if sd == 2 else ".")
            )
        out[self.cam_key] = cams
        return out
