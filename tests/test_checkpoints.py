"""Checkpoint finding, safe reading, loading of every official layout, conversion and error messages.

Every test writes its own small random checkpoints in the official on-disk layouts into tmp_path.
"""

from __future__ import annotations

import importlib
import json
import os
import pickle
import subprocess
import sys
import types
from collections import OrderedDict
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import GOLDEN  # noqa: E402 - the one golden folder (also the golden_dir fixture)
from safetensors.torch import load_file, save_file

from kdtalker_core import weights as C
from kdtalker_core.errors import ModelFileError
from kdtalker_core.golden_checks import manifests as manifests_check
from kdtalker_core.weights import safe_unpickle

LP_KEYS = {  # a few official-looking keys per LivePortrait base model (small shapes)
    "appearance_feature_extractor": {"first.conv.weight": (4, 3, 3, 3), "first.norm.running_mean": (4,),
                                     "first.norm.num_batches_tracked": ()},
    "motion_extractor": {"detector.downsample_layers.0.0.weight": (8, 3, 4, 4), "detector.fc_kp.bias": (63,)},
    "warping_module": {"third.conv.weight": (4, 4, 3, 3, 3), "dense_motion_network.mask.bias": (22,)},
    "spade_generator": {"G_middle_0.conv_0.weight_orig": (4, 4, 3, 3), "G_middle_0.conv_0.weight_u": (4,),
                        "G_middle_0.conv_0.weight_v": (36,)},
}
SR_SHAPES = {"retarget_shoulder": (6, 5), "retarget_mouth": (5, 4), "retarget_eye": (7, 3)}


def _listed(msg: str, path: Path) -> bool:
    """True when a "not found" message lists ``path`` (a line ``<folder>/ : name, name``)."""
    prefix = f"{path.parent}{os.sep} : "
    return any(line.strip().startswith(prefix) and path.name in line.split(" : ", 1)[1].split(", ")
               for line in msg.splitlines())


def _rand(shape: tuple[int, ...], dtype: torch.dtype = torch.float32, seed: int = 0) -> torch.Tensor:
    if shape == ():
        return torch.tensor(7, dtype=torch.long)
    g = torch.Generator().manual_seed(seed + sum(shape))
    return torch.randn(shape, generator=g).to(dtype)


def _lp_state_dicts(dtype: torch.dtype = torch.float32) -> dict[str, OrderedDict]:
    return {name: OrderedDict((k, _rand(s, dtype if s else torch.long)) for k, s in keys.items())
            for name, keys in LP_KEYS.items()}


def _sr_groups(dtype: torch.dtype = torch.float32) -> dict[str, OrderedDict]:
    """Official stitching file content: {group: {'module.mlp.N.weight|bias': tensor}}."""
    out = {}
    for i, (group, (din, dout)) in enumerate(SR_SHAPES.items()):
        out[group] = OrderedDict([
            ("module.mlp.0.weight", _rand((8, din), dtype, i)),
            ("module.mlp.0.bias", _rand((8,), dtype, i)),
            ("module.mlp.2.weight", _rand((dout, 8), dtype, i)),
            ("module.mlp.2.bias", _rand((dout,), dtype, i)),
        ])
    return out


def _write_lp_tree(root: Path, dtype: torch.dtype = torch.float32, stitching: bool = True) -> None:
    (root / "base_models").mkdir(parents=True)
    for name, sd in _lp_state_dicts(dtype).items():
        torch.save(sd, root / "base_models" / f"{name}.pth")
    if stitching:
        (root / "retargeting_models").mkdir()
        torch.save(_sr_groups(dtype), root / "retargeting_models" / "stitching_retargeting_module.pth")


def _write_lp_kijai(root: Path, dtype: torch.dtype = torch.float16) -> None:
    root.mkdir(parents=True)
    for name, sd in _lp_state_dicts(dtype).items():
        save_file(dict(sd), str(root / f"{name}.safetensors"))
    flat = {f"{g}_module.{k[len('module.'):]}": v
            for g, sd in _sr_groups(dtype).items() for k, v in sd.items()}
    save_file(flat, str(root / "stitching_retargeting_module.safetensors"))


@pytest.fixture
def fake_omegaconf(monkeypatch):
    """Installs a stand-in ``omegaconf.dictconfig.DictConfig`` so that a pickle refers to it by that name."""

    class DictConfig:
        def __init__(self, content: dict) -> None:
            self._content = content
            self._metadata = {"ref_type": "typing.Any"}

    DictConfig.__module__ = "omegaconf.dictconfig"
    DictConfig.__qualname__ = "DictConfig"
    pkg = types.ModuleType("omegaconf")
    sub = types.ModuleType("omegaconf.dictconfig")
    sub.DictConfig = DictConfig
    pkg.dictconfig = sub
    monkeypatch.setitem(sys.modules, "omegaconf", pkg)
    monkeypatch.setitem(sys.modules, "omegaconf.dictconfig", sub)
    return DictConfig


def _denoiser_sd(scale: float = 1.0) -> OrderedDict:
    return OrderedDict([
        ("point_model.model.input_projection.weight", _rand((16, 70)) * scale),
        ("point_model.model.input_projection.bias", _rand((16,)) * scale),
        ("point_model.model.layers.0.2.fn.fn.rotary_emb.freqs", torch.tensor([1.0, 0.1])),
    ])


def _write_kdtalker_pth(path: Path, dictconfig_cls, with_ema: bool = True) -> None:
    ckpt = {"model": _denoiser_sd(), "optimizer": {"state": {}, "param_groups": []}, "epoch": 3,
            "cfg": dictconfig_cls({"run": {"name": "x", "lr": 2e-6}, "betas": [0.95, 0.999]})}
    if with_ema:
        ckpt["model_ema"] = _denoiser_sd(2.0)
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save(ckpt, path)


# ----------------------------------------------------------------------------------------- safety


class _RunsShell:
    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


@pytest.mark.parametrize("zip_format", [True, False])
def test_pickle_that_runs_a_command_is_refused_without_running(tmp_path, zip_format):
    marker = tmp_path / "pwned"
    path = tmp_path / "KDTalker.pth"
    torch.save({"model": _denoiser_sd(), "cfg": _RunsShell(marker)}, path,
               _use_new_zipfile_serialization=zip_format)
    with pytest.raises(ModelFileError, match="refusing.*system"):
        C.load_kdtalker_checkpoint(path)
    assert not marker.exists()


def test_unknown_importable_callable_becomes_inert_placeholder(tmp_path, monkeypatch):
    """A callable of an importable, non-denied module is never called: it turns into a placeholder."""
    marker = tmp_path / "called"
    mod = types.ModuleType("kd_fake_plugin")

    def side_effect(arg):
        marker.write_text(arg)
        return arg

    side_effect.__module__ = "kd_fake_plugin"
    side_effect.__qualname__ = "side_effect"
    mod.side_effect = side_effect
    monkeypatch.setitem(sys.modules, "kd_fake_plugin", mod)

    class Calls:
        def __reduce__(self):
            return (side_effect, ("hello",))

    path = tmp_path / "ck.pth"
    torch.save({"model": _denoiser_sd(), "extra": Calls()}, path)
    obj = C.read_torch_file(path)
    assert not marker.exists()
    assert isinstance(obj["extra"], safe_unpickle.Placeholder)
    assert obj["extra"].args == ("hello",)
    assert safe_unpickle.placeholder_names(obj) == {"kd_fake_plugin.side_effect"}
    assert torch.equal(obj["model"]["point_model.model.input_projection.bias"],
                       _denoiser_sd()["point_model.model.input_projection.bias"])


@pytest.mark.parametrize("global_name", [b"builtins\neval", b"__builtin__\ngetattr", b"subprocess\nPopen"])
def test_restricted_unpickler_refuses_code_globals(global_name):
    data = b"\x80\x02c" + global_name + b"\nX\x04\x00\x00\x00argsq\x00\x85q\x01Rq\x02."
    with pytest.raises(safe_unpickle.UnsafePickleError):
        safe_unpickle.loads(data)


@pytest.mark.filterwarnings("ignore::DeprecationWarning")
def test_torchscript_archive_is_refused(tmp_path):
    path = tmp_path / "model.pth"
    torch.jit.save(torch.jit.script(torch.nn.Linear(2, 2)), str(path))
    with pytest.raises(ModelFileError, match="TorchScript"):
        C.read_torch_file(path)


# ----------------------------------------------------------------------------------------- KDTalker.pth


def test_kdtalker_pth_with_pickled_foreign_cfg(tmp_path, fake_omegaconf, monkeypatch):
    path = tmp_path / "KDTalker.pth"
    _write_kdtalker_pth(path, fake_omegaconf)
    monkeypatch.delitem(sys.modules, "omegaconf.dictconfig")  # loading must not need the class
    monkeypatch.delitem(sys.modules, "omegaconf")
    with pytest.raises(pickle.UnpicklingError):
        torch.load(path, weights_only=True)  # what plain torch.load refuses

    sd = C.load_kdtalker_checkpoint(path)
    assert list(sd) == list(_denoiser_sd())
    assert all(torch.equal(sd[k], v) for k, v in _denoiser_sd().items())
    assert sd.source.endswith("[model]")

    ema = C.load_kdtalker_checkpoint(path, use_ema=True)
    assert ema.source.endswith("[model_ema]")
    assert torch.equal(ema["point_model.model.input_projection.bias"],
                       _denoiser_sd(2.0)["point_model.model.input_projection.bias"])

    raw = C.read_torch_file(path)
    cfg = raw["cfg"]
    assert isinstance(cfg, safe_unpickle.Placeholder) and cfg.placeholder_name == "DictConfig"
    assert cfg.state["_content"]["run"]["lr"] == 2e-6


def test_kdtalker_use_ema_falls_back_to_model(tmp_path, fake_omegaconf):
    path = tmp_path / "KDTalker.pth"
    _write_kdtalker_pth(path, fake_omegaconf, with_ema=False)
    sd = C.load_kdtalker_checkpoint(path, use_ema=True)
    assert sd.source.endswith("[model]")


def test_wrong_file_in_place_of_kdtalker(tmp_path):
    """A Stable Diffusion-like checkpoint: the error names what was expected and what was found."""
    path = tmp_path / "KDTalker.pth"
    torch.save({"state_dict": {"model.diffusion_model.input_blocks.0.0.weight": torch.zeros(2, 2)},
                "global_step": 5}, path)
    with pytest.raises(ModelFileError) as err:
        C.load_kdtalker_checkpoint(path)
    msg = str(err.value)
    assert "'model'" in msg and "point_model.model" in msg and "'state_dict'" in msg
    assert "ChaolongYang/KDTalker" in msg


# ----------------------------------------------------------------------------------------- wav2lip


def _small_audio_layout() -> dict[str, tuple[int, ...]]:
    out: dict[str, tuple[int, ...]] = {}
    for i, (cin, cout) in enumerate([(1, 4), (4, 6)]):
        out[f"{i}.conv_block.0.weight"] = (cout, cin, 3, 3)
        out[f"{i}.conv_block.0.bias"] = (cout,)
        for name in ("weight", "bias", "running_mean", "running_var"):
            out[f"{i}.conv_block.1.{name}"] = (cout,)
        out[f"{i}.conv_block.1.num_batches_tracked"] = ()
    return out


def _wav2lip_file(path: Path, layout: dict, drop: tuple[str, ...] = (), nbt: bool = False) -> dict:
    sd = OrderedDict()
    sd["module.face_encoder_blocks.0.0.conv_block.0.weight"] = torch.ones(2, 6, 7, 7)
    tensors = {}
    for k, s in layout.items():
        if k in drop or (k.endswith("num_batches_tracked") and not nbt):
            continue
        tensors[k] = _rand(s)
        sd["module.audio_encoder." + k] = tensors[k]
    sd["module.output_block.1.bias"] = torch.ones(3)
    torch.save({"state_dict": sd, "optimizer": {}, "global_step": 1}, path)
    return tensors


def test_wav2lip_keeps_audio_encoder_and_fills_num_batches_tracked(tmp_path):
    layout = _small_audio_layout()
    tensors = _wav2lip_file(tmp_path / "wav2lip.pth", layout)
    sd = C.load_wav2lip_audio_encoder(tmp_path / "wav2lip.pth", expected=layout)
    assert list(sd) == list(layout)  # our order, prefix stripped, other Wav2Lip keys dropped
    for k, v in tensors.items():
        assert torch.equal(sd[k], v)
    nbt = sd["1.conv_block.1.num_batches_tracked"]
    assert nbt.dtype == torch.long and nbt.item() == 0


def test_wav2lip_missing_float_key_and_bad_shape_are_named(tmp_path):
    layout = _small_audio_layout()
    _wav2lip_file(tmp_path / "a.pth", layout, drop=("1.conv_block.1.running_var",), nbt=True)
    with pytest.raises(ModelFileError, match=r"missing keys.*1\.conv_block\.1\.running_var"):
        C.load_wav2lip_audio_encoder(tmp_path / "a.pth", expected=layout)
    bad = dict(layout, **{"0.conv_block.0.bias": (5,)})
    _wav2lip_file(tmp_path / "b.pth", layout, nbt=True)
    with pytest.raises(ModelFileError, match=r"shape mismatch for '0\.conv_block\.0\.bias': expected \(5,\), "
                                             r"found \(4,\)"):
        C.load_wav2lip_audio_encoder(tmp_path / "b.pth", expected=bad)


def test_wav2lip_full_size_against_our_audio_encoder(tmp_path):
    pytest.importorskip("kdtalker_core.networks.audio_encoder")
    layout = C.expected_shapes("audio_encoder")
    tensors = _wav2lip_file(tmp_path / "wav2lip.pth", layout)
    sd = C.load_wav2lip_audio_encoder(tmp_path / "wav2lip.pth")
    module = C.load_network("audio_encoder", sd, file=tmp_path / "wav2lip.pth")
    for k, v in tensors.items():
        assert torch.equal(module.state_dict()[k], v)


# ----------------------------------------------------------------------------------------- LivePortrait


def test_liveportrait_tree_and_kijai_fp16_load_the_same(tmp_path):
    _write_lp_tree(tmp_path / "tree")
    _write_lp_kijai(tmp_path / "kijai", torch.float16)
    tree = C.load_liveportrait(tmp_path / "tree")
    kijai = C.load_liveportrait(tmp_path / "kijai")
    expected = _lp_state_dicts()
    for name, sd in expected.items():
        assert list(tree[name]) == list(sd)
        assert set(kijai[name]) == set(sd)
        for k, v in sd.items():
            assert torch.equal(tree[name][k], v)
            assert kijai[name][k].dtype == (torch.float16 if v.is_floating_point() else torch.long)
            assert torch.equal(kijai[name][k], v.to(kijai[name][k].dtype))
    for group, sd in _sr_groups().items():
        stripped = {k[len("module."):]: v for k, v in sd.items()}
        assert list(tree["stitching_retargeting_module"][group]) == list(stripped)
        for k, v in stripped.items():
            assert torch.equal(tree["stitching_retargeting_module"][group][k], v)
            assert torch.equal(kijai["stitching_retargeting_module"][group][k], v.half())
    assert tree.files["motion_extractor"] == tmp_path / "tree" / "base_models" / "motion_extractor.pth"


def test_liveportrait_without_stitching_and_missing_base_model(tmp_path):
    _write_lp_tree(tmp_path / "lp", stitching=False)
    lp = C.load_liveportrait(tmp_path / "lp")
    assert lp["stitching_retargeting_module"] is None
    (tmp_path / "lp" / "base_models" / "warping_module.pth").unlink()
    with pytest.raises(ModelFileError) as err:
        C.load_liveportrait(tmp_path / "lp")
    msg = str(err.value)
    first_line = msg.splitlines()[0]
    assert "warping_module" in first_line and "motion_extractor" not in first_line
    assert "base_models/NAME.pth" in first_line and "NAME.safetensors" in first_line
    assert f"  {tmp_path / 'lp'}{os.sep}" in msg.splitlines()
    assert "Kijai/LivePortrait_safetensors" in msg and "KwaiVGI/LivePortrait" in msg


def test_convert_liveportrait_tree_to_kijai_layout(tmp_path):
    _write_lp_tree(tmp_path / "tree")
    written = C.convert_liveportrait_to_safetensors(tmp_path / "tree", tmp_path / "out")
    names = (*LP_KEYS, "stitching_retargeting_module")
    assert {p.name for p in written} == {f"{n}.safetensors" for n in names}
    flat = load_file(str(tmp_path / "out" / "stitching_retargeting_module.safetensors"))
    assert "retarget_shoulder_module.mlp.0.weight" in flat and "retarget_eye_module.mlp.2.bias" in flat
    again = C.load_liveportrait(tmp_path / "out")
    original = C.load_liveportrait(tmp_path / "tree")
    for name in LP_KEYS:
        assert all(torch.equal(again[name][k], v) for k, v in original[name].items())
    assert not list((tmp_path / "out").glob("*.part"))


# ----------------------------------------------------------------------------------------- bundle / norm


def test_kdtalker_safetensors_round_trip_with_shared_tensors(tmp_path):
    den = _denoiser_sd()
    shared = den["point_model.model.layers.0.2.fn.fn.rotary_emb.freqs"]
    den["point_model.model.layers.1.2.fn.fn.rotary_emb.freqs"] = shared  # same storage twice
    audio = {"0.conv_block.0.weight": _rand((4, 1, 3, 3)).half(),
             "0.conv_block.1.num_batches_tracked": torch.tensor(3)}
    norm = C.load_norm_stats()
    out = C.save_kdtalker_safetensors(tmp_path / "kdtalker" / "kdtalker.safetensors", den, audio, norm)
    assert out.is_file() and not list(out.parent.glob("*.part"))
    parts = C.load_kdtalker_safetensors(out)
    assert set(parts["denoiser"]) == set(den)
    assert all(torch.equal(parts["denoiser"][k], v) for k, v in den.items())
    assert parts["audio_encoder"]["0.conv_block.0.weight"].dtype == torch.float16
    assert all(np.array_equal(parts["norm"][k], norm[k]) for k in norm)
    assert C.load_kdtalker_checkpoint(out).keys() == parts["denoiser"].keys()


def test_packaged_norm_is_the_official_norm(golden_dir):
    norm = C.load_norm_stats()
    ref = load_file(str(golden_dir / "motion_pipeline" / "norm.safetensors"))
    assert set(norm) == set(ref)
    for k, v in ref.items():
        assert norm[k].dtype == np.float32 and np.array_equal(norm[k], v.numpy())


def test_norm_npz_with_pickled_objects_is_refused(tmp_path):
    path = tmp_path / "norm.npz"
    np.savez(path, yaw_mean=np.array([object()], dtype=object))
    with pytest.raises(ModelFileError, match="norm.npz"):
        C.load_norm_stats(path)


# ----------------------------------------------------------------------------------------- corrupt files


def test_truncated_files_name_the_file_and_suggest_redownload(tmp_path, fake_omegaconf):
    pth = tmp_path / "KDTalker.pth"
    _write_kdtalker_pth(pth, fake_omegaconf)
    data = pth.read_bytes()
    pth.write_bytes(data[: len(data) // 2])
    with pytest.raises(ModelFileError, match=r"KDTalker\.pth.*(truncated|corrupt).*download it again"):
        C.load_kdtalker_checkpoint(pth)

    st = tmp_path / "motion_extractor.safetensors"
    save_file({"a": torch.zeros(64, 64)}, str(st))
    st.write_bytes(st.read_bytes()[:-100])
    with pytest.raises(ModelFileError, match=r"motion_extractor\.safetensors.*(truncated|corrupt)"):
        C.read_safetensors(st)


@pytest.mark.parametrize("content,reason", [(b"version https://git-lfs.github.com/spec/v1\noid sha256:ab\n",
                                             "git-lfs pointer"),
                                            (b"<!DOCTYPE html><html>login</html>", "HTML page"),
                                            (b"", "empty")])
def test_placeholder_downloads_are_explained(tmp_path, content, reason):
    path = tmp_path / "wav2lip.pth"
    path.write_bytes(content)
    with pytest.raises(ModelFileError, match=reason):
        C.load_wav2lip_audio_encoder(path, expected=_small_audio_layout())


def test_validate_state_dict_messages():
    expected = {"a.weight": (4, 3), "a.bias": (4,), "b.weight": (2, 4)}
    with pytest.raises(ModelFileError) as err:
        sd_like = {"model.diffusion_model.x": torch.zeros(1), "cond_stage_model.y": torch.zeros(1)}
        C.validate_state_dict(sd_like, expected, file="x.pth", what="Wav2Lip audio encoder")
    msg = str(err.value)
    assert "does not contain the Wav2Lip audio encoder" in msg and "'a.weight'" in msg
    assert "'model.diffusion_model.x'" in msg
    good = {k: torch.zeros(s) for k, s in expected.items()}
    C.validate_state_dict(good, expected)
    with pytest.raises(ModelFileError, match=r"unexpected keys \['c'\]"):
        C.validate_state_dict({**good, "c": torch.zeros(1)}, expected)
    with pytest.raises(ModelFileError, match=r"'b\.weight': expected \(2, 4\), found \(4, 2\)"):
        C.validate_state_dict({**good, "b.weight": torch.zeros(4, 2)}, expected)


# ----------------------------------------------------------------------------------------- finding


def _models_tree(root: Path, fake_omegaconf, lp_layout: str = "tree") -> Path:
    kd = root / "kdtalker"
    _write_kdtalker_pth(kd / "KDTalker.pth", fake_omegaconf)
    _wav2lip_file(kd / "wav2lip.pth", _small_audio_layout(), nbt=True)
    if lp_layout == "tree":
        _write_lp_tree(root / "liveportrait")
    elif lp_layout == "hf_nested":  # a snapshot of KwaiVGI/LivePortrait into models/liveportrait
        _write_lp_tree(root / "liveportrait" / "liveportrait")
    else:
        _write_lp_kijai(root / "liveportrait")
    return root


def test_missing_files_list_every_place_searched(tmp_path, monkeypatch):
    monkeypatch.setenv("KDTALKER_MODELS_DIR", str(tmp_path / "models"))
    with pytest.raises(ModelFileError) as err:
        C.find_model_files()
    msg = str(err.value)
    for p in (tmp_path / "models" / "kdtalker" / "KDTalker.pth",
              tmp_path / "models" / "kdtalker" / "kdtalker.safetensors",
              tmp_path / "models" / "kdtalker" / "ckpts" / "KDTalker.pth"):
        assert _listed(msg, p)
    assert _listed(msg, tmp_path / "models" / "kdtalker" / "wav2lip.pth")
    assert "huggingface.co/ChaolongYang/KDTalker" in msg


@pytest.mark.parametrize("layout", ["tree", "kijai", "hf_nested"])
def test_find_model_files_in_each_layout(tmp_path, fake_omegaconf, layout):
    root = _models_tree(tmp_path / "models", fake_omegaconf, layout)
    paths = C.find_model_files(root)
    assert paths.kdtalker == root / "kdtalker" / "KDTalker.pth"
    assert paths.wav2lip == root / "kdtalker" / "wav2lip.pth"
    assert paths.norm == C.PACKAGED_NORM  # no norm.npz in the folder: the packaged copy
    assert all(paths.liveportrait[n] is not None for n in (*LP_KEYS, "stitching_retargeting_module"))
    assert paths.liveportrait_dir == root / "liveportrait"
    lp = C.load_liveportrait(paths.liveportrait)
    assert set(lp["motion_extractor"]) == set(LP_KEYS["motion_extractor"])
    by_dir = C.load_liveportrait(paths.liveportrait_dir)
    assert set(by_dir["spade_generator"]) == set(LP_KEYS["spade_generator"])


def test_liveportrait_missing_reports_paths(tmp_path, fake_omegaconf):
    root = tmp_path / "models"
    _write_kdtalker_pth(root / "kdtalker" / "KDTalker.pth", fake_omegaconf)
    _wav2lip_file(root / "kdtalker" / "wav2lip.pth", _small_audio_layout(), nbt=True)
    with pytest.raises(ModelFileError) as err:
        C.find_model_files(root)
    msg = str(err.value)
    lines = msg.splitlines()
    assert "appearance_feature_extractor" in lines[0] and "base_models/NAME.pth" in lines[0]
    for folder in (root / "liveportrait", root / "liveportrait" / "liveportrait",
                   root / "kdtalker" / "pretrained_weights" / "liveportrait"):
        assert f"  {folder}{os.sep}" in lines
    assert C.find_model_files(root, need_liveportrait=False).kdtalker is not None


def test_bundle_preferred_and_loaded(tmp_path, fake_omegaconf):
    root = _models_tree(tmp_path / "models", fake_omegaconf, "kijai")
    np.savez(root / "kdtalker" / "norm.npz", **C.load_norm_stats())
    paths = C.find_model_files(root)
    assert paths.norm == root / "kdtalker" / "norm.npz"
    layout = _small_audio_layout()
    den = C.load_kdtalker_checkpoint(paths.kdtalker)
    audio = C.load_wav2lip_audio_encoder(paths.wav2lip, expected=layout)
    C.save_kdtalker_safetensors(root / "kdtalker" / "kdtalker.safetensors", den, audio, C.load_norm_stats())
    paths = C.find_model_files(root)
    assert paths.kdtalker_is_bundle and paths.kdtalker.name == "kdtalker.safetensors"
    bundle = C.load_kdtalker_bundle(paths)
    assert bundle.denoiser_file == paths.kdtalker and set(bundle.audio_encoder) == set(layout)
    assert all(torch.equal(bundle.denoiser[k], v) for k, v in den.items())


def test_explicit_folders_and_picked_files(tmp_path, fake_omegaconf):
    """What the ComfyUI nodes ask for: registered folders first (each with its ckpts/), a picker's
    relative file name looked up in those folders, one LivePortrait folder chosen."""
    first, second = tmp_path / "extra" / "kd", tmp_path / "models" / "kdtalker"
    _write_kdtalker_pth(second / "sub" / "mine.pth", fake_omegaconf)
    _write_kdtalker_pth(second / "KDTalker.pth", fake_omegaconf)
    (first / "ckpts").mkdir(parents=True)
    _wav2lip_file(first / "ckpts" / "wav2lip.pth", _small_audio_layout(), nbt=True)
    _write_lp_kijai(tmp_path / "lp_a")
    _write_lp_tree(tmp_path / "lp_b")

    paths = C.find_model_files(tmp_path / "models", kdtalker_dirs=[first], liveportrait_dirs=[tmp_path / "lp_a"])
    assert paths.kdtalker == second / "KDTalker.pth" and paths.wav2lip == first / "ckpts" / "wav2lip.pth"
    assert paths.liveportrait_dir == tmp_path / "lp_a"
    assert paths.liveportrait["motion_extractor"].suffix == ".safetensors"
    assert len(paths.searched) == len(set(paths.searched)), "a folder given twice is searched once"

    picked = C.find_model_files(tmp_path / "models", kdtalker_dirs=[first, second],
                                kdtalker_file="sub/mine.pth", liveportrait_dir=tmp_path / "lp_b")
    assert picked.kdtalker == second / "sub" / "mine.pth"
    assert picked.liveportrait_dir == tmp_path / "lp_b"
    assert picked.liveportrait["motion_extractor"] == tmp_path / "lp_b" / "base_models" / "motion_extractor.pth"

    with pytest.raises(ModelFileError) as err:
        C.find_model_files(tmp_path / "models", kdtalker_dirs=[first], kdtalker_file="gone.pth")
    msg = str(err.value)
    assert msg.startswith("model files not found: gone.pth.")
    assert _listed(msg, first / "gone.pth") and _listed(msg, second / "gone.pth")
    assert "huggingface.co/ChaolongYang/KDTalker" in msg

    with pytest.raises(ModelFileError) as err:  # the chosen LivePortrait folder is the only one searched
        C.find_model_files(tmp_path / "models", kdtalker_dirs=[first], liveportrait_dirs=[tmp_path / "lp_a"],
                           liveportrait_dir=tmp_path / "empty")
    lines = str(err.value).splitlines()
    assert f"  {tmp_path / 'empty'}{os.sep}" in lines and f"  {tmp_path / 'lp_a'}{os.sep}" not in lines


def test_complete_liveportrait_folders(tmp_path):
    _write_lp_tree(tmp_path / "root" / "official")
    _write_lp_kijai(tmp_path / "root" / "LivePortrait_safetensors")
    (tmp_path / "root" / "partial").mkdir()
    save_file({"a": torch.zeros(1)}, str(tmp_path / "root" / "partial" / "motion_extractor.safetensors"))
    folders = C.complete_liveportrait_folders([tmp_path / "root", tmp_path / "missing"])
    # root itself resolves to root/LivePortrait_safetensors (a search subfolder): listed once, as root
    assert folders == [tmp_path / "root", tmp_path / "root" / "official"]


def test_network_table_covers_every_official_file():
    assert set(C.CHECKPOINT_FILES) == {"KDTalker.pth", "wav2lip.pth", "stitching_retargeting_module.pth",
                                       *(f"{n}.pth" for n in C.LIVEPORTRAIT_BASE)}
    assert [name for _, name in C.CHECKPOINT_FILES["stitching_retargeting_module.pth"]] == list(C.STITCHING_GROUPS)
    mouth = C.build_network("retarget_mouth", "meta")
    assert mouth.state_dict()["mlp.0.weight"].shape[1] == 65  # the mouth MLP's input width
    with pytest.raises(ModelFileError, match="LivePortrait motion extractor"):  # the table's description
        C.load_network("motion_extractor", {"x": torch.zeros(1)}, device="meta")
    with pytest.raises(KeyError, match="unknown network"):
        C.build_network("vae")


def test_default_models_dir_and_download_without_torch(monkeypatch, tmp_path):
    """The default models folder (CLI, download, library: one function) and `download` need no torch."""
    code = ("import sys; import kdtalker_core.download, kdtalker_core.model_locations as m; "
            "assert 'torch' not in sys.modules, 'torch imported'; print(m.default_models_dir())")
    env = {**os.environ, "KDTALKER_MODELS_DIR": str(tmp_path)}
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True)
    assert out.stdout.strip() == str(tmp_path)
    from kdtalker_core import cli

    monkeypatch.setenv("KDTALKER_MODELS_DIR", "")
    assert cli._default_models_dir() == C.default_models_dir() == Path("models")


# ----------------------------------------------------------------------------------------- manifests


def _manifest_files() -> list[str]:
    return json.loads((GOLDEN / "manifests" / "meta.json").read_text())["files"]


@pytest.mark.parametrize("manifest", _manifest_files())
def test_manifest_matches_our_network(manifest, golden_dir):
    file_name = manifest[: -len(".json")]
    modules = {"KDTalker.pth": "denoiser", "wav2lip.pth": "audio_encoder",
               "appearance_feature_extractor.pth": "appearance", "motion_extractor.pth": "motion_extractor",
               "warping_module.pth": "warping", "spade_generator.pth": "spade",
               "stitching_retargeting_module.pth": "stitching"}
    importlib.import_module(f"kdtalker_core.networks.{modules[file_name]}")
    result = manifests_check.check_manifest("manifests", golden_dir / "manifests" / manifest)
    assert result.ok, result.note
    assert result.max_abs_err == 0.0


def test_manifest_checker_names_first_mismatch(tmp_path, golden_dir):
    data = json.loads((golden_dir / "manifests" / "wav2lip.pth.json").read_text())
    key = "module.audio_encoder.3.conv_block.0.weight"
    data["keys"][key]["shape"] = [1, 2, 3, 4]
    (tmp_path / "wav2lip.pth.json").write_text(json.dumps(data))
    result = manifests_check.check_manifest("manifests", tmp_path / "wav2lip.pth.json")
    assert not result.ok and key in result.note and "(1, 2, 3, 4)" in result.note

    data = json.loads((golden_dir / "manifests" / "wav2lip.pth.json").read_text())
    items = list(data["keys"].items())
    items[0], items[1] = items[1], items[0]
    data["keys"] = dict(items)
    (tmp_path / "wav2lip.pth.json").write_text(json.dumps(data))
    result = manifests_check.check_manifest("manifests", tmp_path / "wav2lip.pth.json")
    assert not result.ok and "order" in result.note
