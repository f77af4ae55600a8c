"""Keypoint math, the motion extractor M and the stitching/retargeting MLPs."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from kdtalker_core.golden import run_fixture
from kdtalker_core.golden_checks.camera import headpose_pred_to_degree_legacy
from kdtalker_core.keypoints import (
    get_kp_info,
    get_rotation_matrix,
    headpose_pred_to_degree,
    transform_keypoint,
)
from kdtalker_core.networks.motion_extractor import MotionExtractor
from kdtalker_core.networks.stitching import (
    STITCHING_CONFIGS,
    StitchingRetargetingNetwork,
    load_stitching_networks,
    stitch,
    stitch_delta,
)


@pytest.mark.parametrize(
    "fixture", ["lp_motion_extractor", "lp_stitching_retargeting", "lp_camera_keypoints"]
)
def test_golden_fixture_passes(golden_dir: Path, fixture: str) -> None:
    results = run_fixture(golden_dir / fixture)
    assert len(results) >= 4
    failed = [r.line() for r in results if not r.ok]
    assert not failed, "\n".join(failed)


def _random_angles(n: int, dtype: torch.dtype = torch.float32) -> tuple[torch.Tensor, ...]:
    g = torch.Generator().manual_seed(1)
    return tuple((torch.rand(n, 1, generator=g, dtype=dtype) - 0.5) * 360 for _ in range(3))


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_rotation_matrices_are_proper_rotations(dtype: torch.dtype) -> None:
    pitch, yaw, roll = _random_angles(32, dtype)
    rot = get_rotation_matrix(pitch, yaw, roll)
    assert rot.shape == (32, 3, 3) and rot.dtype == dtype
    eye = torch.eye(3, dtype=dtype).expand(32, 3, 3)
    tol = 1e-5 if dtype == torch.float32 else 1e-12
    torch.testing.assert_close(rot @ rot.transpose(1, 2), eye, atol=tol, rtol=0)
    torch.testing.assert_close(torch.linalg.det(rot), torch.ones(32, dtype=dtype), atol=tol, rtol=0)
    # (N,) and (N,1) inputs give the same matrices
    torch.testing.assert_close(get_rotation_matrix(pitch[:, 0], yaw[:, 0], roll[:, 0]), rot, atol=0, rtol=0)


def test_rotation_convention_row_vectors() -> None:
    """R is the transpose of Rz@Ry@Rx: a pure 90 degree roll maps row vector x=(1,0,0) to (0,1,0)."""
    zero, quarter = torch.zeros(1), torch.full((1,), 90.0)
    rot = get_rotation_matrix(zero, zero, quarter)
    x = torch.tensor([[1.0, 0.0, 0.0]])
    torch.testing.assert_close(x @ rot[0], torch.tensor([[0.0, 1.0, 0.0]]), atol=1e-6, rtol=0)
    # pitch rotates about x: (0,1,0) -> (0,0,1) for +90 degrees
    rot = get_rotation_matrix(quarter, zero, zero)
    torch.testing.assert_close(torch.tensor([[0.0, 1.0, 0.0]]) @ rot[0], torch.tensor([[0.0, 0.0, 1.0]]),
                               atol=1e-6, rtol=0)


def test_headpose_degrees_and_passthrough() -> None:
    uniform = torch.zeros(3, 66)
    torch.testing.assert_close(headpose_pred_to_degree(uniform), torch.zeros(3))  # mean bin 32.5 -> 0 deg
    torch.testing.assert_close(headpose_pred_to_degree_legacy(uniform), torch.full((3,), -1.5))
    peaked = torch.full((2, 66), -1e4)
    peaked[0, 0] = 0.0
    peaked[1, 65] = 0.0
    torch.testing.assert_close(headpose_pred_to_degree(peaked), torch.tensor([-97.5, 97.5]))
    deg = torch.tensor([[12.5], [-3.0]])
    assert headpose_pred_to_degree(deg) is deg


def test_transform_keypoint_formula_and_no_mutation() -> None:
    g = torch.Generator().manual_seed(2)
    b = 3
    info = {
        "kp": torch.randn(b, 63, generator=g), "exp": torch.randn(b, 63, generator=g) * 0.1,
        "t": torch.randn(b, 3, generator=g), "scale": torch.rand(b, 1, generator=g) + 0.5,
    }
    info.update(zip(("pitch", "yaw", "roll"), _random_angles(b)))
    before = {k: v.clone() for k, v in info.items()}
    x = transform_keypoint(info)
    assert x.shape == (b, 21, 3)
    for k, v in info.items():
        assert torch.equal(v, before[k]), f"{k} was modified"
    rot = get_rotation_matrix(info["pitch"], info["yaw"], info["roll"])
    expected = info["scale"][:, :, None] * (info["kp"].view(b, 21, 3) @ rot + info["exp"].view(b, 21, 3))
    expected[..., :2] += info["t"][:, None, :2]
    torch.testing.assert_close(x, expected)
    # t_z is ignored
    info["t"] = info["t"] + torch.tensor([0.0, 0.0, 5.0])
    torch.testing.assert_close(transform_keypoint(info), x, atol=0, rtol=0)


def test_full_size_motion_extractor_matches_manifest(golden_dir: Path) -> None:
    manifest = json.loads((golden_dir / "manifests" / "motion_extractor.pth.json").read_text())["keys"]
    with torch.device("meta"):
        sd = MotionExtractor().state_dict()
    assert list(sd) == list(manifest)
    assert {k: list(v.shape) for k, v in sd.items()} == {k: v["shape"] for k, v in manifest.items()}


def test_stitching_groups_match_manifest(golden_dir: Path) -> None:
    manifest = json.loads((golden_dir / "manifests" / "stitching_retargeting_module.pth.json").read_text())["keys"]
    expected: dict[str, dict[str, list[int]]] = {}
    for key, entry in manifest.items():
        group, _, stored = key.partition("/")
        expected.setdefault(group, {})[stored.replace("module.", "")] = entry["shape"]
    assert set(expected) == set(STITCHING_CONFIGS)
    for group, cfg in STITCHING_CONFIGS.items():
        sd = StitchingRetargetingNetwork(**cfg).state_dict()
        assert list(sd) == list(expected[group])
        assert {k: list(v.shape) for k, v in sd.items()} == expected[group]


def test_load_stitching_networks_strict() -> None:
    groups = {g: {f"module.{k}": v for k, v in StitchingRetargetingNetwork(**c).state_dict().items()}
              for g, c in STITCHING_CONFIGS.items()}
    nets = load_stitching_networks(groups)
    assert set(nets) == set(STITCHING_CONFIGS)
    del groups["retarget_eye"]["module.mlp.10.bias"]
    with pytest.raises(RuntimeError):
        load_stitching_networks(groups)
    with pytest.raises(KeyError):
        load_stitching_networks({"retarget_shoulder": groups["retarget_shoulder"]})


def test_stitch_applies_delta_offsets_and_xy_shift() -> None:
    net = StitchingRetargetingNetwork(**STITCHING_CONFIGS["retarget_shoulder"])
    last = net.mlp[-1]
    with torch.no_grad():
        last.weight.zero_()
        last.bias.copy_(torch.cat([torch.zeros(63), torch.tensor([0.25, -0.5])]))
    kp_s, kp_d = torch.randn(2, 21, 3), torch.randn(2, 21, 3)
    with torch.no_grad():
        assert stitch_delta(net, kp_s, kp_d).shape == (2, 65)
        out = stitch(net, kp_s, kp_d)
    torch.testing.assert_close(out, kp_d + torch.tensor([0.25, -0.5, 0.0]))


def test_get_kp_info_small_model_shapes_and_reduced_precision() -> None:
    torch.manual_seed(0)
    model = MotionExtractor(depths=(1, 1, 1, 1), dims=(8, 16, 16, 16)).eval()
    image = torch.rand(2, 3, 64, 64)
    info = get_kp_info(model, image)
    shapes = {k: tuple(v.shape) for k, v in info.items()}
    assert shapes == {"pitch": (2, 1), "yaw": (2, 1), "roll": (2, 1), "t": (2, 3), "exp": (2, 63),
                      "scale": (2, 1), "kp": (2, 63)}
    assert all(v.dtype == torch.float32 for v in info.values())
    with torch.no_grad():
        raw = model(image)
    for angle in ("pitch", "yaw", "roll"):  # degrees = softmax expectation of the 66 bins * 3 - 97.5
        expected = (torch.softmax(raw[angle], dim=1) * torch.arange(66.0)).sum(dim=1, keepdim=True) * 3 - 97.5
        torch.testing.assert_close(info[angle], expected, atol=1e-4, rtol=0)
    # a bf16 extractor still returns float32 kp_info close to the fp32 one
    info_bf16 = get_kp_info(model.to(torch.bfloat16), image)
    assert all(v.dtype == torch.float32 for v in info_bf16.values())
    torch.testing.assert_close(info_bf16["kp"], info["kp"], atol=0.1, rtol=0.1)
