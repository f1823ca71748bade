from __future__ import annotations

import numpy as np
import pytest
import torch
from monai.data import MetaTensor

from monai_sam_adapt.transforms import (
    CT_WINDOWS,
    BoxFromLabel,
    CTWindow,
    EnsureThreeChannels,
    SAMPreprocess,
    SAMResizeLongest,
    SelectLabels,
)

INPUT_TYPES = [np.asarray, torch.as_tensor, MetaTensor]


@pytest.mark.parametrize("to_type", INPUT_TYPES)
@pytest.mark.parametrize("preset", sorted(CT_WINDOWS))
def test_ct_window_presets(to_type, preset):
    w, lv = CT_WINDOWS[preset]
    hu = to_type(np.array([[[lv - w, lv - w / 2, lv, lv + w / 2, lv + w]]], dtype=np.float32))
    out = CTWindow(preset)(hu)
    np.testing.assert_allclose(np.asarray(out).ravel(), [0, 0, 0.5, 1, 1], atol=1e-6)
    if isinstance(hu, MetaTensor):
        assert isinstance(out, MetaTensor)


def test_ct_window_explicit_and_illegal():
    out = CTWindow(width=100, level=0, b_min=-1, b_max=1)(np.array([[[-50.0, 0.0, 50.0]]]))
    np.testing.assert_allclose(np.asarray(out).ravel(), [-1, 0, 1])
    assert CTWindow("liver", level=60).level == 60
    with pytest.raises(ValueError, match="known presets"):
        CTWindow("spleen")
    with pytest.raises(ValueError, match="needs a preset"):
        CTWindow(width=100)
    with pytest.raises(ValueError, match="positive"):
        CTWindow(width=-1, level=0)


@pytest.mark.parametrize("to_type", INPUT_TYPES)
@pytest.mark.parametrize("channels", [1, 2, 3, 4])
def test_ensure_three_channels(to_type, channels):
    x = to_type(np.random.rand(channels, 5, 6).astype(np.float32))
    out = EnsureThreeChannels()(x)
    assert tuple(out.shape) == (3, 5, 6)
    np.testing.assert_allclose(np.asarray(out[0]), np.asarray(x[0]))


def test_ensure_three_channels_illegal():
    with pytest.raises(ValueError, match="5 channels"):
        EnsureThreeChannels()(np.zeros((5, 4, 4)))


def test_ensure_three_channels_keeps_a_networks_own_input_width():
    x = np.random.rand(4, 5, 6).astype(np.float32)  # BraTS' four sequences: never read as RGBA
    np.testing.assert_allclose(np.asarray(EnsureThreeChannels(in_channels=4)(x)), x)
    with pytest.raises(ValueError, match="reads 4 input channels, the image has 3"):
        EnsureThreeChannels(in_channels=4)(x[:3])


@pytest.mark.parametrize("to_type", INPUT_TYPES)
def test_select_labels(to_type):
    lab = to_type(np.array([[[0, 1, 2], [2, 3, 0]]], dtype=np.float32))
    out = SelectLabels({"liver": [1, 2], "tumor": 2})(lab)
    np.testing.assert_array_equal(np.asarray(out), [[[0, 1, 1], [1, 0, 0]], [[0, 0, 1], [1, 0, 0]]])
    np.testing.assert_array_equal(np.asarray(SelectLabels([3])(lab)), [[[0, 0, 0], [0, 1, 0]]])
    np.testing.assert_array_equal(np.asarray(SelectLabels()(lab)), [[[0, 1, 1], [1, 1, 0]]])
    # noisy RGB JPEG mask: reduce channels, threshold
    rgb = to_type(np.array([[[3, 200]], [[5, 130]], [[0, 255]]], dtype=np.float32))
    np.testing.assert_array_equal(np.asarray(SelectLabels(threshold=127)(rgb)), [[[0, 1]]])
    with pytest.raises(ValueError, match="single-channel"):
        SelectLabels(reduce_channels=False)(rgb)
    with pytest.raises(ValueError, match="at least one label value"):
        SelectLabels({"liver": []})


@pytest.mark.parametrize(
    "shape,slice_axis,expected",
    [
        ((300, 200), None, (256, 171)),
        ((200, 300), None, (171, 256)),
        ((256, 256), None, (256, 256)),
        ((240, 240, 7), 2, (256, 256, 7)),
        ((5, 100, 50), 0, (5, 256, 128)),
    ],
)
def test_resize_longest_size(shape, slice_axis, expected):
    t = SAMResizeLongest(256, slice_axis)
    assert t.output_size(shape) == expected
    assert tuple(t(torch.rand(1, *shape)).shape[1:]) == expected


def test_resize_longest_illegal():
    with pytest.raises(ValueError, match="positive"):
        SAMResizeLongest(0)
    with pytest.raises(ValueError, match="slice_axis"):
        SAMResizeLongest(8, slice_axis=3)
    with pytest.raises(ValueError, match="2D image"):
        SAMResizeLongest(8)(torch.rand(1, 4, 4, 4))


@pytest.mark.parametrize("backbone,size", [("lite_medsam", 256), ("vit_b", 1024)])
@pytest.mark.parametrize("to_type", INPUT_TYPES)
def test_sam_preprocess_and_exact_inverse(backbone, size, to_type):
    img = to_type((np.random.rand(1, 90, 60) * 1000).astype(np.float32))
    pre = SAMPreprocess(backbone)
    out = pre(img)
    assert tuple(out.shape) == (3, size, size)
    valid = out[:, :size, : int(60 * size / 90 + 0.5)]
    if backbone == "lite_medsam":
        assert float(valid.min()) == 0.0 and float(valid.max()) == 1.0
    else:  # 0-255 then ImageNet mean/std per channel
        assert abs(float(valid[0].min()) - (0 - 123.675) / 58.395) < 1e-4
    assert float(out[:, :, -1].abs().max()) == 0.0  # padded at the end (right/bottom)
    # the exact inverse maps a prediction back onto the input grid
    pred = MetaTensor(out[:1].clone(), applied_operations=out.applied_operations)
    back = pre.inverse(pred)
    assert tuple(back.shape) == (1, 90, 60)


def test_sam_preprocess_label_is_lossless_when_upsampling():
    lab = torch.zeros(1, 240, 200)
    lab[0, 50:120, 30:90] = 1
    lab[0, 7, 3] = 1  # single pixel survives
    pre = SAMPreprocess("lite_medsam", label=True)
    out = pre(MetaTensor(lab))
    assert tuple(out.shape) == (1, 256, 256) and set(out.unique().tolist()) == {0.0, 1.0}
    back = pre.inverse(out)
    torch.testing.assert_close(back.as_tensor(), lab)


@pytest.mark.parametrize("to_type", INPUT_TYPES)
def test_box_from_label(to_type):
    lab = np.zeros((2, 10, 12), dtype=np.float32)
    lab[0, 2:5, 3:9] = 1  # rows 2..4, cols 3..8
    box = BoxFromLabel()(to_type(lab))
    np.testing.assert_array_equal(box[0].numpy(), [3, 2, 8, 4])
    np.testing.assert_array_equal(box[1].numpy(), [0, 0, 11, 9])  # empty channel: the whole image
    np.testing.assert_array_equal(BoxFromLabel(margin=3)(to_type(lab))[0].numpy(), [0, 0, 11, 7])
    with pytest.raises(ValueError, match="empty label"):
        BoxFromLabel(empty="error")(to_type(lab))
    with pytest.raises(ValueError, match="channel-first 2D"):
        BoxFromLabel()(np.zeros((1, 2, 2, 2)))


def test_metric_per_channel_output_transform():
    from monai_sam_adapt.engines import from_engine_channel

    batch = [{"pred": torch.arange(6.0).reshape(3, 2), "label": -torch.arange(6.0).reshape(3, 2)}]
    pred, label = from_engine_channel(["pred", "label"], 1)(batch)
    assert pred[0].tolist() == [[2.0, 3.0]] and label[0].tolist() == [[-2.0, -3.0]]
