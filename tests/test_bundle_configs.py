"""The bundle's configs.

Shared model keys agree, every default path hangs off bundle_root, methods by name.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from monai.bundle import ConfigParser

from monai_wsol.engines import default_bundle_root
from monai_wsol.methods import available_methods

REPO = Path(__file__).resolve().parents[1]
CONFIGS = REPO / "bundle" / "configs"
#: the keys that describe the trained model: training and inference must agree on them
MODEL_KEYS = (
    "spatial_dims",
    "in_channels",
    "num_classes",
    "class_names",
    "method",
    "method_options",
    "backbone",
    "network_kwargs",
    "spacing",
    "orientation",
    "intensity_percentiles",
    "intensity_clip",
    "cam_class",
    "bundle_root",
    "dataset_dir",
    "datalist",
    "wsol_method",
    "network_def",
)


def _load(name: str) -> dict:
    return json.loads((CONFIGS / name).read_text())


def test_training_and_inference_share_the_model_keys():
    train, infer = _load("train.json"), _load("inference.json")
    for key in MODEL_KEYS:
        assert key in train and key in infer, key
        assert train[key] == infer[key], key


@pytest.mark.parametrize("name", ["train.json", "inference.json"])
def test_default_paths_follow_bundle_root(name, tmp_path):
    parser = ConfigParser()
    parser.read_config(str(CONFIGS / name))
    parser["bundle_root"] = str(tmp_path / "b")
    assert parser.get_parsed_content("dataset_dir") == str(tmp_path / "data" / "embedded_default")
    assert parser.get_parsed_content("output_dir").startswith(str(tmp_path / "b"))
    path_key = "model_path" if name == "train.json" else "ckpt_path"
    assert parser.get_parsed_content(path_key) == str(tmp_path / "b" / "models" / "model.pt")


def test_default_bundle_root_is_the_folder_of_configs(tmp_path):
    cfg = tmp_path / "my_bundle" / "configs" / "train.json"
    assert default_bundle_root(["run", "training", "--config_file", str(cfg)]) == str(tmp_path / "my_bundle")
    merged = f"['{cfg}','{cfg.parent / 'multi_gpu_train.json'}']"
    assert default_bundle_root(["run", "training", "--config_file", merged]) == str(tmp_path / "my_bundle")
    assert default_bundle_root([f"--config_file={cfg}"]) == str(tmp_path / "my_bundle")
    # without a command line: the bundle of this source checkout
    assert default_bundle_root([]) == str(CONFIGS.parent)


@pytest.mark.parametrize("method", available_methods())
def test_every_registry_method_builds_in_the_bundle(method):
    parser = ConfigParser()
    parser.read_config(str(CONFIGS / "train.json"))
    parser.update({"method": method, "network_kwargs": {"channels": [4, 8], "stages": [1, 1]}})
    spec = parser.get_parsed_content("wsol_method")
    assert spec.name == method
    assert parser.get_parsed_content("network_def") is spec.net


def test_inference_config_parses_without_monai_label():
    # the MONAI Label keys (inferer, post_transforms) need only MONAI: every key resolves in this environment
    parser = ConfigParser()
    parser.read_config(str(CONFIGS / "inference.json"))
    parser["network_kwargs"] = {"channels": [4, 8], "stages": [1, 1]}
    for key in ("inferer", "post_transforms", "preprocessing", "postprocessing", "network_def"):
        assert parser.get_parsed_content(key) is not None, key
    assert type(parser.get_parsed_content("inferer")).__name__ == "LocalizationInferer"


@pytest.mark.parametrize("method", ["cam", "gradcam", "gradcampp", "sfs2"])
def test_evaluate_runs_the_methods_extractor(method):
    # evaluate.json overrides inference.json: its evaluator must keep the method's extractor (Grad-CAM maps
    # for the post-hoc methods, not the in-graph CAM)
    from monai_wsol.extractors import ForwardCAM, GradCAMExtractor, SliceBySliceExtractor

    parser = ConfigParser()
    parser.read_config([str(CONFIGS / "inference.json"), str(CONFIGS / "evaluate.json")])
    parser.update({"method": method, "network_kwargs": {"channels": [4, 8], "stages": [1, 1]}})
    wrapper = parser.get_parsed_content("evaluator#extractor")
    # a 2D model runs volumes slice by slice along the bundle's slice axis, picking slices by the lesion class
    assert isinstance(wrapper, SliceBySliceExtractor)
    assert (wrapper.slice_axis, wrapper.positive_class) == (2, parser.get_parsed_content("cam_class"))
    extractor = wrapper.part_extractor
    expected = GradCAMExtractor if method.startswith("gradcam") else ForwardCAM
    assert isinstance(extractor, expected)
    # the method's own extractor with the bundle's flip TTA (left-right, chosen on validation)
    method_extractor = parser.get_parsed_content("wsol_method").extractor
    assert type(extractor) is type(method_extractor) and method_extractor.flip_axes == ()
    assert extractor.flip_axes == wrapper.flip_axes == (0,)
    parser["tta_flip_axes"] = []
    parser["slice_axis"] = "none"
    assert (
        parser.get_parsed_content("evaluator#extractor", lazy=False)
        is parser.get_parsed_content("wsol_method").extractor
    )
    assert parser.get("evaluator#batch_keys") == ["mask", "boxes"]
    assert parser.get("evaluator#_target_") == "monai_wsol.engines.CAMEvaluator"
    if method == "gradcampp":
        assert extractor.plusplus


def test_training_preprocessing_is_cached_up_to_the_first_random_transform():
    # CacheDataset caches the transforms before the first random one: a nested Compose (random for MONAI)
    # first in the chain would make it cache nothing, re-reading every file every epoch
    from monai.transforms import Randomizable

    from monai_wsol.data import make_preprocessing

    for stage in ("train", "validate"):
        chain = make_preprocessing(stage, spatial_dims=2, spatial_size=[32, 32]).transforms
        first_random = next((i for i, t in enumerate(chain) if isinstance(t, Randomizable)), len(chain))
        names = [type(t).__name__ for t in chain[:first_random]]
        assert names[0] == "LoadImageCheckedd" and "ScaleIntensityRangePercentilesd" in names, (stage, names)
        assert "Resized" in names, (stage, names)


def test_input_checks_are_part_of_the_preprocessing_every_path_runs():
    # MONAI Label runs "preprocessing" as its pre-transforms, the bundle's dataset runs it too: one set of
    # input checks, which let volumes through to a 2D model run slice by slice
    from monai_wsol.data.input_checks import InputChecksd

    parser = ConfigParser()
    parser.read_config(str(CONFIGS / "inference.json"))
    checks = [
        t
        for t in parser.get_parsed_content("preprocessing").flatten().transforms
        if isinstance(t, InputChecksd)
    ]
    assert len(checks) == 1 and checks[0].slice_axis == 2 and checks[0].spatial_dims == 2
    assert parser.get_parsed_content("dataset#transform") is parser.get_parsed_content("preprocessing")
    parser["spatial_dims"] = 3
    checks = [t for t in parser.get_parsed_content("preprocessing", lazy=False).flatten().transforms]
    assert [t.slice_axis for t in checks if isinstance(t, InputChecksd)] == [None]
    parser = ConfigParser()
    parser.read_config([str(CONFIGS / "inference.json"), str(CONFIGS / "evaluate.json")])
    names = [type(t).__name__ for t in parser.get_parsed_content("dataset#transform").flatten().transforms]
    assert names.count("InputChecksd") == 1


def test_the_3d_training_override_builds_a_model_inference_loads(tmp_path):
    # configs/train_3d.json changes the dimensions, not the network: inference with --spatial_dims 3 (what
    # the input checks tell users of volumes) must load the model it trains
    train = ConfigParser()
    train.read_config([str(CONFIGS / "train.json"), str(REPO / "configs" / "train_3d.json")])
    net = train.get_parsed_content("network_def")
    assert net.spatial_dims == 3
    size = train.get_parsed_content("spatial_size")
    logits, maps = net.forward_cam(torch.rand(1, 1, *size), class_idx=1)
    assert logits.shape == (1, 2) and maps.ndim == 5
    torch.save(net.state_dict(), tmp_path / "model.pt")
    infer = ConfigParser()
    infer.read_config(str(CONFIGS / "inference.json"))
    infer["spatial_dims"] = 3
    loaded = infer.get_parsed_content("network_def")
    loaded.load_state_dict(torch.load(tmp_path / "model.pt", weights_only=True))
    assert infer.get_parsed_content("volume_slice_axis") is None


def test_a_3d_model_runs_large_volumes_in_sliding_windows():
    from monai_wsol.extractors import SlidingWindowExtractor

    parser = ConfigParser()
    parser.read_config(str(CONFIGS / "inference.json"))
    parser.update({"spatial_dims": 3, "sw_roi_size": [48, 48, 48], "sw_overlap": 0.5})
    extractor = parser.get_parsed_content("cam_extractor")
    assert isinstance(extractor, SlidingWindowExtractor)
    assert (extractor.roi_size, extractor.overlap, extractor.flip_axes) == ([48, 48, 48], 0.5, (0,))
    parser["sw_roi_size"] = None
    assert not isinstance(parser.get_parsed_content("cam_extractor", lazy=False), SlidingWindowExtractor)
