"""The ``ensemble`` head: one head per part of fused features, probabilities averaged."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
import torch
from PIL import Image
from test_heads_features_registry import _scene, scene_files

from napari_pathsegdiff.cli import main
from napari_pathsegdiff.core.progress import drive
from napari_pathsegdiff.engine.inference.predict import predict_image
from napari_pathsegdiff.engine.training.auto_select import Candidate, auto_train
from napari_pathsegdiff.engine.training.train_head import train_head
from napari_pathsegdiff.models.features import ClassicFeatures, RGBFeatures, make_extractor
from napari_pathsegdiff.models.fused_features import FusedFeatures
from napari_pathsegdiff.models.heads import HeadError, load_head, save_head
from napari_pathsegdiff.models.heads.ensemble import EnsembleHead


def _fused():
    return FusedFeatures([RGBFeatures(tile_size=64, halo=8), ClassicFeatures(num_sigma=1, sigma_max=2, tile_size=64)])


@pytest.fixture(scope="module")
def ensemble(tmp_path_factory):
    img, mask = _scene()
    ex = _fused()
    head = drive(train_head([(img, mask)], extractor=ex, head_kind="ensemble", members=["fcn", "forest"],
                            member_settings={"fcn": {"steps": 20}}), show=False).head
    folder = save_head(head, tmp_path_factory.mktemp("heads") / "ensemble")
    return img, mask, ex, head, folder


def test_an_ensemble_averages_its_members_on_their_own_parts(ensemble):
    img, mask, ex, head, _ = ensemble
    assert isinstance(head, EnsembleHead) and [m.head_kind for m in head.members] == ["fcn", "forest"]
    assert [m.config.feature_identity for m in head.members] == [p.identity for p in ex.parts]
    maps = [torch.from_numpy(m.astype(np.float32)) for m in ex.extract(img[None, :64, :64])]
    expected = (head.members[0].predict_proba(maps[:1]) + head.members[1].predict_proba(maps[1:])) / 2
    torch.testing.assert_close(head.predict_proba(maps), expected)
    pred = predict_image(img, head=head, extractor=ex, return_probabilities=True)
    assert pred.labels.shape == mask.shape and pred.probabilities.shape == (2, *mask.shape)
    assert (pred.labels == mask).mean() > 0.98
    assert head.default_tta == 8  # a forest member: its trees never saw rotated tiles


def test_an_ensemble_folder_round_trips_and_is_checked(ensemble, tmp_path):
    img, _, ex, head, folder = ensemble
    assert sorted(p.name for p in folder.iterdir()) == ["config.json", "member-0", "member-1"]
    assert json.loads((folder / "member-1" / "config.json").read_text())["_class_name"] == "ForestHead"
    again = load_head(folder, extractor=ex)
    a = predict_image(img, head=head, extractor=ex, return_probabilities=True)
    b = predict_image(img, head=again, extractor=ex, return_probabilities=True)
    np.testing.assert_array_equal(a.probabilities, b.probabilities)
    with pytest.raises(HeadError, match="trained on features"):
        load_head(folder, extractor=ex.parts[1])

    broken = shutil.copytree(folder, tmp_path / "broken")
    shutil.rmtree(broken / "member-1")
    with pytest.raises(HeadError, match=r"Member 1 of the ensemble head .*broken is missing"):
        load_head(broken)
    swapped = shutil.copytree(folder, tmp_path / "swapped")
    shutil.rmtree(swapped / "member-0")
    shutil.copytree(folder / "member-1", swapped / "member-0")
    with pytest.raises(HeadError, match=r"expects members \['fcn', 'forest'\], got \['forest', 'forest'\]"):
        load_head(swapped)


def test_an_ensemble_needs_fused_features_and_fine_tunes_its_members(ensemble):
    img, mask, ex, head, _ = ensemble
    with pytest.raises(ValueError, match=r"needs fused features \(e.g. --features classic\+cnn\)"):
        drive(train_head([(img, mask)], extractor=RGBFeatures(), head_kind="ensemble"), show=False)
    tuned = drive(train_head([(img, mask)], extractor=ex, head=head, member_settings={"fcn": {"steps": 5}}), show=False)
    assert isinstance(tuned.head, EnsembleHead) and tuned.head is not head
    assert [m.head_kind for m in tuned.head.members] == ["fcn", "forest"] and tuned.steps == 5
    before = dict(head.members[0].state_dict())
    after = tuned.head.members[0].state_dict()
    assert any(not torch.equal(before[k], after[k]) for k in before)  # the FCN went on learning
    assert all(torch.equal(before[k], head.members[0].state_dict()[k]) for k in before)  # the start is kept


def test_auto_scores_the_ensemble_like_any_candidate():
    samples = [_scene(s) for s in range(3)]
    out = drive(auto_train(samples, make_extractor=make_extractor, budget_s=600,
                           candidates=[Candidate("rgb", "fcn", (("steps", 10),)),
                                       Candidate("rgb+classic", "ensemble", (("member_settings", {"fcn": {"steps": 10}}),))]), show=False)
    [single, both] = out.candidates
    assert single["status"] == both["status"] == "scored" and both["name"].startswith("rgb+classic / ensemble")
    assert out.result.head.head_kind == ("ensemble" if both["cv_dice"] > single["cv_dice"] else "fcn")


def test_cli_trains_and_predicts_an_ensemble(tmp_path, capsys):
    images, masks = scene_files(tmp_path)
    out = tmp_path / "head"
    assert main(["train", "--images", str(images), "--masks", str(masks), "--out", str(out),
                 "--features", "rgb+classic", "--head", "ensemble"]) == 0
    record = json.loads((out / "training.json").read_text())
    assert record["head"] == "ensemble" and sorted(p.name for p in out.glob("member-*")) == ["member-0", "member-1"]
    assert main(["predict", str(images / "0.png"), "--head", str(out), "--out", str(tmp_path / "pred")]) == 0
    pred = np.asarray(Image.open(tmp_path / "pred" / "0.png"))
    assert pred.shape == (96, 96) and (pred == _scene(0)[1]).mean() > 0.98


def test_train_on_my_edits_fine_tunes_an_ensemble_with_the_widget_steps(tmp_path):
    """A session whose head is an ensemble: its FCN member takes the session's step count."""
    from napari_pathsegdiff.core.slide import Slide
    from napari_pathsegdiff.engine.session.annotation import AnnotationSession

    img, mask = _scene(size=128)
    slide = Slide.from_array(img, mpp=0.5)
    session = AnnotationSession.open(slide, folder=tmp_path / "session", extractor=_fused())
    session.store.write_edits(0, 0, np.where(mask[:64, :64] == 1, 2, 1).astype(np.uint8))
    session.store.write_edits(64, 64, np.where(mask[64:, 64:] == 1, 2, 1).astype(np.uint8))
    first = drive(train_head([(img, mask + 1)], extractor=session.extractor, head_kind="ensemble",
                             members=["fcn", "forest"], member_settings={"fcn": {"steps": 5}}), show=False)
    session.set_head(first.head)
    outcome = drive(session.train_on_edits(steps=7), show=False)
    assert not outcome.new_head and isinstance(session.head, EnsembleHead)
    assert outcome.result.steps == 7  # the FCN member's steps; the forest has none
    assert json.loads((outcome.head_folder / "training.json").read_text())["head"] == "ensemble"
    assert load_head(outcome.head_folder).class_ids == [1, 2]


def test_auto_keeps_only_the_features_a_later_candidate_or_the_best_needs(monkeypatch):
    """On large label sets every kind's features at once would not fit in memory: while the third
    kind is gathered, only the best of the first two is still held."""
    import gc
    import weakref

    from napari_pathsegdiff.engine.training import auto_select

    real, alive_at_third = auto_select.gather_labelled_tiles, []
    held: list[weakref.ref] = []

    def spy(samples, **kw):
        if len(held) == 2:
            gc.collect()
            alive_at_third.append(sum(r() is not None for r in held))
        labelled = yield from real(samples, **kw)
        held.append(weakref.ref(labelled))
        return labelled

    monkeypatch.setattr(auto_select, "gather_labelled_tiles", spy)
    samples = [_scene(s) for s in range(3)]
    out = drive(auto_train(samples, make_extractor=make_extractor, budget_s=600,
                           candidates=[Candidate("rgb", "forest"), Candidate("classic", "forest"),
                                       Candidate("rgb+classic", "forest")]), show=False)
    assert alive_at_third == [1]
    assert [c["status"] for c in out.candidates] == ["scored"] * 3
    assert len(held) == 3  # the chosen features were kept for the final fit, not gathered again
