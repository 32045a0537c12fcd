"""Diffusion features of tiny random backbones: shapes, hooks, early stop, seeds, batches."""

from __future__ import annotations

import threading

import numpy as np
import pytest

from napari_pathsegdiff.models.backbone import build_random_backbone, load_backbone
from napari_pathsegdiff.models.diffusion_features import DiffusionFeatures, from_config
from napari_pathsegdiff.models.features_base import FeatureExtractor


@pytest.fixture(scope="module")
def tiny():
    return build_random_backbone("tiny", seed=0)


@pytest.fixture(scope="module")
def tiles() -> np.ndarray:
    return np.random.default_rng(0).integers(0, 256, size=(3, 64, 64, 3), dtype=np.uint8)


@pytest.fixture(scope="module")
def features(tiny, tiles) -> list[np.ndarray]:
    return DiffusionFeatures(tiny).extract(tiles)


def test_settings_follow_the_backbone(tiny):
    fx = DiffusionFeatures(tiny)
    assert isinstance(fx, FeatureExtractor)
    assert fx.kind == "diffusion"
    assert (fx.timesteps, fx.blocks, fx.seed, fx.conditioned) == ([50, 150], [1, 2], 0, True)
    assert fx.maps == [(50, 1), (50, 2), (150, 1), (150, 2)]
    assert fx.multiple == 16  # autoencoder factor 4 x two UNet downsamplings
    assert (fx.tile_size, fx.halo, fx.mpp) == (64, 16, 0.5)
    assert fx.channels == [24, 16, 24, 16]
    assert fx.strides == [4, 4, 4, 4]


def test_halo_default_is_an_eighth_of_the_tile_rounded_up(tiny):
    assert DiffusionFeatures(tiny, tile_size=256).halo == 32
    assert DiffusionFeatures(tiny, tile_size=272).halo == 48  # 34 -> 48
    assert DiffusionFeatures(tiny, tile_size=256, halo=8).halo == 8


def test_feature_shapes_per_block_and_timestep(features):
    assert [f.shape for f in features] == [(3, 24, 16, 16), (3, 16, 16, 16)] * 2
    assert all(f.dtype == np.float16 for f in features)
    assert all(np.isfinite(f).all() for f in features)
    assert not np.array_equal(features[0], features[2])  # t = 50 and t = 150 differ


def test_all_blocks_and_a_non_square_tile(tiny):
    fx = DiffusionFeatures(tiny, timesteps=[10], blocks=[0, 1, 2])
    assert fx.channels == [32, 24, 16]
    assert fx.strides == [8, 4, 4]
    feats = fx.extract(np.zeros((2, 32, 48, 3), np.uint8))
    assert [f.shape for f in feats] == [(2, 32, 4, 6), (2, 24, 8, 12), (2, 16, 8, 12)]


def test_empty_batch(tiny):
    feats = DiffusionFeatures(tiny).extract(np.zeros((0, 64, 32, 3), np.uint8))
    assert [f.shape for f in feats] == [(0, 24, 16, 8), (0, 16, 16, 8)] * 2


def test_vq_autoencoder_and_unconditional_unet():
    config = {
        "vae": {
            "_class_name": "VQModel",
            "down_block_types": ["DownEncoderBlock2D"] * 2,
            "up_block_types": ["UpDecoderBlock2D"] * 2,
            "block_out_channels": [16, 32],
            "latent_channels": 3,
            "num_vq_embeddings": 32,
            "norm_num_groups": 8,
            "mid_block_add_attention": False,
        },
        "unet": {
            "_class_name": "UNet2DModel",
            "in_channels": 3,
            "out_channels": 3,
            "block_out_channels": [16, 32],
            "down_block_types": ["DownBlock2D", "DownBlock2D"],
            "up_block_types": ["UpBlock2D", "UpBlock2D"],
            "layers_per_block": 1,
            "norm_num_groups": 8,
        },
    }
    backbone = build_random_backbone(config)
    assert backbone.conditioning == "none"
    fx = DiffusionFeatures(backbone, timesteps=[5], blocks=[0, 1])
    assert (fx.multiple, fx.tile_size, fx.halo, fx.mpp) == (4, 256, 32, None)  # f=2 x one downsampling
    feats = fx.extract(np.full((1, 32, 36, 3), 200, np.uint8))
    assert [f.shape for f in feats] == [(1, 32, 16, 18), (1, 16, 16, 18)]
    assert fx.channels == [32, 16]
    assert fx.strides == [2, 2]


def test_identity_and_config(tiny):
    fx = DiffusionFeatures(tiny, timesteps=[150, 50, 50], blocks=[2], seed=7)
    assert fx.identity == f"diffusion:{tiny.identity}:t=50,150:blocks=2:seed=7:cond=1"
    assert fx.config() == {
        "kind": "diffusion",
        "backbone": "random:tiny@seed0",
        "timesteps": [50, 150],
        "blocks": [2],
        "seed": 7,
        "conditioned": True,
    }
    assert DiffusionFeatures(tiny, conditioned=False).identity.endswith(":cond=0")


def test_save_load_round_trip_gives_identical_features(tiny, tiles, features, tmp_path):
    folder = tiny.save(tmp_path / "bb")
    fx = from_config(DiffusionFeatures(load_backbone(folder)).config())
    assert fx.config()["backbone"] == str(folder.resolve())
    assert fx.identity == DiffusionFeatures(tiny).identity
    for a, b in zip(fx.extract(tiles), features):
        np.testing.assert_array_equal(a, b)


def test_from_config_refuses_other_kinds():
    with pytest.raises(ValueError, match="Not a diffusion feature config: kind 'classic'"):
        from_config({"kind": "classic"})


def test_hook_handles_are_removed_after_extraction(tiny, tiles):
    fx = DiffusionFeatures(tiny, blocks=[0, 1, 2])
    fx.extract(tiles[:1])
    assert all(len(block._forward_hooks) == 0 for block in tiny.unet.up_blocks)


def test_hook_handles_are_removed_after_an_error(tiny, tiles, monkeypatch):
    fx = DiffusionFeatures(tiny, blocks=[1, 2])
    fx.channels  # probe before the forward pass is broken

    def broken(*args, **kwargs):
        raise RuntimeError("mid block exploded")

    monkeypatch.setattr(tiny.unet.mid_block, "forward", broken)
    with pytest.raises(RuntimeError, match="mid block exploded"):
        fx.extract(tiles[:1])
    assert all(len(block._forward_hooks) == 0 for block in tiny.unet.up_blocks)


@pytest.mark.parametrize("blocks", [[0], [0, 1], [1, 2]])
def test_forward_stops_after_the_last_needed_block(tiny, tiles, blocks):
    fx = DiffusionFeatures(tiny, timesteps=[20, 40], blocks=blocks, batch_size=2)
    fx.channels  # the probe pass happens before counting
    modules = list(tiny.unet.up_blocks) + [tiny.unet.conv_out]
    calls = [0] * len(modules)
    handles = [
        m.register_forward_hook(lambda mod, args, out, i=i: calls.__setitem__(i, calls[i] + 1))
        for i, m in enumerate(modules)
    ]
    try:
        fx.extract(tiles)  # 3 tiles in batches of 2 -> 2 batches x 2 timesteps = 4 passes
    finally:
        for h in handles:
            h.remove()
    last = max(blocks)
    assert calls[: last + 1] == [4] * (last + 1)
    assert calls[last + 1 :] == [0] * (len(modules) - last - 1)


def test_same_seed_same_features_other_seed_other_features(tiny, tiles, features):
    again = DiffusionFeatures(tiny, seed=0).extract(tiles)
    other = DiffusionFeatures(tiny, seed=1).extract(tiles)
    for a, b, c in zip(features, again, other):
        np.testing.assert_array_equal(a, b)
        assert np.abs(a.astype(np.float32) - c).max() > 0.01


def test_features_do_not_depend_on_the_batch(tiny, tiles, features):
    reordered = DiffusionFeatures(tiny, batch_size=8).extract(tiles[[2, 0]])
    one_by_one = DiffusionFeatures(tiny, batch_size=1).extract(tiles)
    for full, re, single in zip(features, reordered, one_by_one):
        np.testing.assert_array_equal(re[0], full[2])
        np.testing.assert_array_equal(re[1], full[0])
        # a batch of one takes other CPU kernels: equal up to float16 rounding
        np.testing.assert_allclose(single.astype(np.float32), full, rtol=0, atol=2e-3)


def test_conditioned_and_null_features_differ(tiny, tiles, features):
    null = DiffusionFeatures(tiny, conditioned=False).extract(tiles)
    for a, b in zip(features, null):
        assert np.abs(a.astype(np.float32) - b).max() > 0.01


@pytest.mark.parametrize(
    ("tiles", "message"),
    [
        (np.zeros((1, 64, 64, 3), np.float32), "Expected uint8 tiles, got float32"),
        (np.zeros((1, 64, 64, 4), np.uint8), r"Expected RGB tiles of shape \(B, H, W, 3\)"),
        (np.zeros((64, 64, 3), np.uint8), r"Expected RGB tiles of shape \(B, H, W, 3\)"),
        (np.zeros((1, 60, 64, 3), np.uint8), "tile sides that are multiples of 16, got 60x64"),
    ],
)
def test_bad_tiles_are_refused(tiny, tiles, message):
    with pytest.raises(ValueError, match=message):
        DiffusionFeatures(tiny).extract(tiles)


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"timesteps": [1000]}, r"timesteps \[1000\] out of range: they must lie in \[0, 1000\)"),
        ({"timesteps": []}, "timesteps must be a non-empty list of integers"),
        ({"blocks": [3]}, r"blocks \[3\] out of range: they must lie in \[0, 3\)"),
        ({"blocks": [1.5]}, "blocks must be a non-empty list of integers"),
        ({"tile_size": 72}, "tile_size must be a positive multiple of 16"),
        ({"halo": 4}, "halo must be >= 0 with 2 \\* halo a multiple of 16, got 4"),
        ({"batch_size": 0}, "batch_size must be at least 1"),
    ],
)
def test_bad_settings_are_refused(tiny, options, message):
    with pytest.raises(ValueError, match=message):
        DiffusionFeatures(tiny, **options)


def test_threads_sharing_a_backbone_get_their_own_blocks(tiny, tiles):
    first, second = DiffusionFeatures(tiny, blocks=[0]), DiffusionFeatures(tiny, blocks=[1, 2])
    expected = {id(fx): fx.extract(tiles[:2]) for fx in (first, second)}
    errors: list[BaseException] = []

    def run(fx):
        try:
            for _ in range(4):
                for got, want in zip(fx.extract(tiles[:2]), expected[id(fx)], strict=True):
                    np.testing.assert_array_equal(got, want)
        except BaseException as exc:  # noqa: BLE001 - reported by the main thread
            errors.append(exc)

    threads = [threading.Thread(target=run, args=(fx,)) for fx in (first, second)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert errors == []


def test_features_follow_the_documented_recipe(tiny, tiles):
    """encode (posterior mean x scaling) -> seeded noise to t -> guided UNet -> up block output."""
    import torch

    t, block, seed = 150, 1, 3
    fx = DiffusionFeatures(tiny, timesteps=[t], blocks=[block], seed=seed)
    (got,) = fx.extract(tiles[:2])
    with torch.inference_mode():
        x = torch.from_numpy(tiles[:2]).permute(0, 3, 1, 2).float() / 127.5 - 1.0
        z0 = tiny.vae.encode(x).latent_dist.mean * tiny.vae.config.scaling_factor
        eps = torch.randn(z0.shape[1:], generator=torch.Generator().manual_seed(seed))
        a = tiny.scheduler.alphas_cumprod[t]
        zt = a.sqrt() * z0 + (1 - a).sqrt() * eps
        seen = {}
        handle = tiny.unet.up_blocks[block].register_forward_hook(lambda m, i, o: seen.setdefault("out", o))
        try:
            tiny.unet(zt, torch.tensor([t, t]), encoder_hidden_states=tiny.guide.context(x))
        finally:
            handle.remove()
    np.testing.assert_allclose(got.astype(np.float32), seen["out"].numpy(), rtol=1e-3, atol=1e-3)
