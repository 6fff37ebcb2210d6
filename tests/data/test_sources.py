"""Where labelled images come from: other hospitals' slices listed with site, sequence and patient; splits that
keep a patient whole; a training draw that gives each source of a class the same share; a gate per source."""

import shutil

import numpy as np
import pandas as pd
import pytest

from model.config import RetrainConfig
from model.data import DatasetError, list_site_images, list_training_images
from model.sources import (LEVEL, LEVEL_BOOST, SEQUENCE, SOURCE, SourceGroups, balanced_weights, figures_by_source,
                           head_levels, merged_groups, source_regressions)
from tests.conftest import SAMPLES

SITE = SAMPLES / "other-site"


def test_site_slices_carry_their_site_sequence_and_patient_and_masks_are_left_out(tmp_path):
    copy = tmp_path / "lgg"
    shutil.copytree(SITE, copy)
    (copy / "glioma" / "mask").mkdir(exist_ok=True)  # the samples carry the glioma slices' masks
    shutil.copy(next((copy / "glioma" / "flair").iterdir()), copy / "glioma" / "mask" / "TCGA_DU_5849_19950405_25.jpg")
    images = list_site_images(str(copy))
    assert len(images) == 20 and not any("/mask/" in image.uri for image in images)
    assert {image.source for image in images} == {"lgg/DU", "lgg/HT"}
    assert {image.sequence for image in images} == {"flair", "t1pre"}
    first = next(image for image in images if image.uri.endswith("TCGA_HT_7473_19970826_17.jpg"))
    assert first.patient == "TCGA_HT_7473_19970826" and first.source == "lgg/HT"
    (copy / "slices.csv").write_text("patient\nTCGA_DU_5849_19950405\n")
    with pytest.raises(DatasetError, match="patient and site"):
        list_site_images(str(copy))
    (copy / "slices.csv").unlink()
    assert {image.source for image in list_site_images(str(copy))} == {"lgg"}


def test_training_images_name_each_source(tmp_path):
    shutil.copytree(SAMPLES / "labelled" / "tumor", tmp_path / "br35h" / "yes")
    images = list_training_images(str(SAMPLES / "labelled"), (str(tmp_path / "br35h" / "yes"),), (str(SITE),))
    sources = {image.source for image in images}
    assert {"samples/labelled", "br35h/yes", "other-site/DU", "other-site/HT"} == sources
    assert all(not image.patient for image in images if not image.source.startswith("other-site"))


def test_groups_join_a_patients_slices_and_near_duplicates_of_them():
    near_duplicates = np.array([0, 1, 2, 2, 3, 4])
    patients = np.array(["a", "b", "", "a", "", "b"])
    groups = merged_groups(near_duplicates, patients)
    assert groups[0] == groups[3] == groups[2]  # patient a, and a near-copy of one of its slices
    assert groups[1] == groups[5] and groups[4] not in (groups[0], groups[1])
    assert len(set(groups.tolist())) == 3


def test_the_site_split_keeps_each_patient_on_one_side(ray_local):
    from model.data import load_labelled_dataset
    from model.preprocessing import PreprocessConfig
    from pipeline.retrain import source_split

    images = list_training_images(str(SAMPLES / "labelled"), (), (str(SITE),))
    config = RetrainConfig(data=str(SAMPLES / "labelled"), output="", validation_fraction=0.5)
    split = source_split(load_labelled_dataset(images, PreprocessConfig(image_size=64)), config, images)
    patient = dict(zip(split.uris, split.origins["patient"]))
    sides = [{patient[uri] for uri in dataset.to_pandas()["uri"] if patient[uri]}
             for dataset in (split.train, split.validation)]
    assert sides[0] and sides[1] and not sides[0] & sides[1]
    assert split.summary.sites["validation_images"] + split.summary.sites["train_images"] == 20
    assert "weight" in split.train.columns()  # two sources share notumor and glioma: the draw is balanced


def test_the_split_keeps_the_tumor_maps_only_for_a_run_that_learns_them(ray_local):
    """The parts of a split hold only what training and validation read: no thumbnails, and the maps (an image's
    size again per row) only in the training part of a run with ``tumor_map_weight``."""
    import dataclasses

    from model.data import MAP_KNOWN, THUMBNAIL, TUMOR_MAP, load_labelled_dataset
    from model.preprocessing import PreprocessConfig
    from pipeline.retrain import source_split

    images = list_training_images(str(SAMPLES / "labelled"), (), (str(SITE),))
    dataset = load_labelled_dataset(images, PreprocessConfig(image_size=64))
    plain = RetrainConfig(data=str(SAMPLES / "labelled"), output="", validation_fraction=0.5)
    with_maps = dataclasses.replace(plain, training=dataclasses.replace(plain.training, tumor_map_weight=1.0))
    for config, maps_in_training in ((plain, False), (with_maps, True)):
        split = source_split(dataset, config, images)
        for part, maps_kept in ((split.train, maps_in_training), (split.validation, False)):
            columns = set(part.columns())
            assert THUMBNAIL not in columns
            assert (TUMOR_MAP in columns, MAP_KNOWN in columns) == (maps_kept, maps_kept)


def test_each_source_of_a_class_gets_the_same_share_of_the_draw():
    sources = np.array(["a"] * 6 + ["b"] * 2 + ["a"] * 4)
    labels = np.array(["notumor"] * 8 + ["glioma"] * 4)
    weights = balanced_weights(sources, labels)
    assert weights[:6].sum() == pytest.approx(weights[6:8].sum()) == pytest.approx(4.0)
    assert weights[labels == "notumor"].sum() == pytest.approx(8.0)  # the class keeps its share
    assert np.allclose(weights[8:], 1.0)  # one source: drawn as it is
    kept_balance = balanced_weights(sources, labels, {"notumor": 6, "glioma": 4})  # the first source's classes
    assert kept_balance[labels == "notumor"].sum() == pytest.approx(6.0)
    assert kept_balance[:6].sum() == pytest.approx(kept_balance[6:8].sum()) == pytest.approx(3.0)


def test_a_site_slice_s_level_is_its_third_of_the_patient_s_slices_whatever_its_label():
    uris = [f"lgg/{label}/flair/p1_{number}.jpg" for label, number in
            [("notumor", 1), ("notumor", 2), ("glioma", 9), ("glioma", 12), ("notumor", 21)]]
    uris += ["lgg/notumor/flair/p2_5.jpg", "four-class/notumor/Tr-no_0001.jpg", "lgg/glioma/flair/p3_x.jpg"]
    patients = np.array(["p1"] * 5 + ["p2", "", "p3"])
    # p1 spans slices 1..21: thirds below 7.67, below 14.33, above; p2 has one slice (the middle); the rest unknown
    assert head_levels(uris, patients).tolist() == [0, 0, 1, 1, 2, 1, -1, -1]


def test_within_a_site_each_class_is_drawn_evenly_from_the_levels_of_the_head():
    # a site whose tumor-free slices lie mostly low in the head and whose gliomas lie in the middle
    levels = np.array([0] * 8 + [1] * 2 + [2] * 2 + [0] * 1 + [1] * 6 + [2] * 5 + [-1] * 4)
    labels = np.array(["notumor"] * 12 + ["glioma"] * 12 + ["notumor"] * 4)
    sources = np.array(["site"] * 24 + ["four-class"] * 4)
    weights = balanced_weights(sources, labels, None, levels)
    notumor = (labels == "notumor") & (sources == "site")
    assert [weights[notumor & (levels == level)].sum() for level in range(3)] == pytest.approx([8 / 3] * 3)
    assert weights[sources == "four-class"] == pytest.approx([2.0] * 4)  # level unknown: its plain share
    glioma = labels == "glioma"
    assert weights[glioma].sum() == pytest.approx(12.0)  # the class and the source keep their shares
    lone = weights[glioma & (levels == 0)][0]  # one glioma at the skull base: lifted, but at most LEVEL_BOOST-fold
    assert lone / (12.0 / 12) <= LEVEL_BOOST * 1.5 and lone > weights[glioma & (levels == 1)][0]
    assert np.allclose(balanced_weights(sources, labels), balanced_weights(sources, labels, None, None))


def test_figures_are_given_per_level_of_the_head_where_levels_are_known():
    table = pd.DataFrame({SOURCE: ["site"] * 4 + ["four-class"] * 2, SEQUENCE: ["flair"] * 4 + [""] * 2,
                          LEVEL: [0, 0, 1, 1, -1, -1]})
    labels = np.array(["notumor", "notumor", "notumor", "glioma", "notumor", "glioma"])
    tumor = np.array([0.1, 0.2, 0.9, 0.8, 0.1, 0.9])  # the middle tumor-free slice is flagged, the base ones not
    probabilities = np.stack([tumor, np.zeros(6), 1 - tumor, np.zeros(6)], axis=1)  # glioma, meningioma, notumor, pit.
    figures = figures_by_source(probabilities, labels, SourceGroups.of(table), 0.5)
    assert set(figures["by_level"]) == {"site skull base", "site middle"}  # no level: its source's figures only
    assert figures["by_level"]["site skull base"]["specificity"] == 1.0
    assert figures["by_level"]["site middle"]["specificity"] == 0.0
    assert figures["by_level"]["site middle"]["sensitivity"] == 1.0
    assert figures["by_source"]["site"]["specificity"] == pytest.approx(2 / 3, abs=1e-4)


def test_a_candidate_that_gives_up_a_source_is_not_promoted():
    from pipeline.retrain import promotion_decision

    current = {"macro_f1": 0.90, "by_source": {"four-class": {"sensitivity": 0.98, "specificity": 0.97},
                                                "lgg/DU": {"sensitivity": 0.80, "specificity": 0.20}}}
    better_overall = {"macro_f1": 0.95, "by_source": {"four-class": {"sensitivity": 0.94, "specificity": 0.99},
                                                       "lgg/DU": {"sensitivity": 0.95, "specificity": 0.93}}}
    promoted, reason = promotion_decision(better_overall, current, 0.8, source_margin=0.02)
    assert not promoted and "sensitivity on four-class 0.940" in reason
    assert source_regressions(better_overall["by_source"], current["by_source"], 0.05) == []
    assert promotion_decision(better_overall, current, 0.8, source_margin=0.05)[0]
    # the same flags, but fewer meningiomas typed as meningioma: held back by the class margin alone
    current["by_source"]["four-class"]["class_recall"] = {"meningioma": 0.98, "glioma": 0.94}
    better_overall["by_source"]["four-class"]["class_recall"] = {"meningioma": 0.92, "glioma": 0.97}
    promoted, reason = promotion_decision(better_overall, current, 0.8, source_margin=0.05, class_margin=0.03)
    assert not promoted and "meningioma recall on four-class 0.920 against the current model's 0.980" in reason
    assert "glioma recall" not in reason
    assert promotion_decision(better_overall, current, 0.8, source_margin=0.05, class_margin=0.1)[0]


def test_the_gate_names_the_sources_where_the_current_model_was_trained_on_another_split():
    """A current model whose record splits a site's slices otherwise than this run (an earlier split rule) may have
    trained on this run's validation patients there: that source is named in the log's figures and, where the
    candidate is refused on it, in the reason; a source it never trained on (left out, or absent) is not."""
    from pipeline.retrain import SplitSummary, promotion_decision, split_differs

    by_source = {"lgg/DU glioma": 247, "lgg/DU notumor": 387, "lgg/HT glioma": 168, "lgg/HT notumor": 120,
                 "other/XY glioma": 10}
    summary = SplitSummary(images=10, duplicate_groups=9, groups_with_duplicates=1, train_images=8,
                           validation_images=2, validation_by_label={"glioma": 2},
                           sites={"validation_by_source": by_source})
    older = {**by_source, "lgg/HT glioma": 136, "lgg/HT notumor": 137}
    del older["other/XY glioma"]
    training = {"site_data": ["lgg"], "split": {"sites": {"validation_by_source": older}}}
    assert split_differs(training, summary) == ["lgg/HT"]
    assert split_differs({**training, "leave_out_site": "HT"}, summary) == []
    same = {"site_data": ["lgg"], "split": {"sites": {"validation_by_source": by_source}}}
    assert split_differs(same, summary) == [] and split_differs({}, summary) == []
    current = {"macro_f1": 0.90, "split_differs": ["lgg/HT"],
               "by_source": {"lgg/HT": {"specificity": 0.77}, "lgg/DU": {"specificity": 0.75}}}
    candidate = {"macro_f1": 0.92, "by_source": {"lgg/HT": {"specificity": 0.72}, "lgg/DU": {"specificity": 0.70}}}
    promoted, reason = promotion_decision(candidate, current, 0.8, source_margin=0.02)
    assert not promoted and "specificity on lgg/HT 0.720" in reason
    assert "figures on lgg/HT may count validation patients it trained on" in reason
    candidate["by_source"]["lgg/HT"]["specificity"] = 0.76
    promoted, reason = promotion_decision(candidate, current, 0.8, source_margin=0.02)
    assert not promoted and "may count" not in reason


def test_a_run_records_its_validation_patients_by_tokens_that_name_none_of_them(ray_local):
    """The split record names each source's validation patients by token, and a later run finds from those tokens
    which of its own validation images a model held out: all of them where the model held out the same patients,
    none where it trained on them; no patient's name is in the record."""
    import dataclasses
    import json

    from model.data import load_labelled_dataset
    from model.preprocessing import PreprocessConfig
    from model.sources import PATIENT, patient_token
    from pipeline.retrain import TOKENS, held_out_by_both, source_split, split_differs

    images = list_training_images(str(SAMPLES / "labelled"), (), (str(SITE),))
    config = RetrainConfig(data=str(SAMPLES / "labelled"), output="", validation_fraction=0.5)
    split = source_split(load_labelled_dataset(images, PreprocessConfig(image_size=64)), config, images)
    uris = np.array(sorted(split.validation.to_pandas()["uri"]))
    origin = split.origins.set_index(pd.Index(split.uris)).loc[uris]
    held = origin[origin[PATIENT] != ""].drop_duplicates([SOURCE, PATIENT])
    sites = split.summary.sites
    assert sites[TOKENS] == {source: sorted(patient_token(source, patient) for patient in rows[PATIENT])
                             for source, rows in held.groupby(SOURCE)}
    assert not any(patient in json.dumps(sites) for patient in split.origins[PATIENT] if patient)
    record = {"split": {"sites": sites}}
    assert split_differs(record, split.summary) == []
    assert held_out_by_both(record, split, uris, []) is None

    source = "other-site/HT"
    everyone = sorted({patient_token(source, patient)
                       for patient in split.origins[PATIENT][split.origins[SOURCE] == source]})
    trained = sorted(set(everyone) - set(sites[TOKENS][source]))
    in_source = (origin[SOURCE] == source).to_numpy()
    assert trained and in_source.any()
    for tokens, judged_there in ((trained, 0), (everyone, int(in_source.sum()))):
        other = {"split": {"sites": {**sites, TOKENS: {**sites[TOKENS], source: tokens}}}}
        assert split_differs(other, split.summary) == [source]
        judged = held_out_by_both(other, split, uris, [source])
        assert judged[~in_source].all() and int(judged[in_source].sum()) == judged_there
    # a model recorded before tokens: judged by its counts, and a starting point whose split is this run's
    older = {**dataclasses.asdict(split.summary),
             "sites": {key: value for key, value in sites.items() if key != TOKENS}}
    assert split_differs({"split": older}, split.summary) == [] and split.summary.matches(older)
    assert not split.summary.matches({**older, "sites": {**older["sites"], TOKENS: {}}})


def test_a_token_two_patients_share_counts_neither_as_held_out(monkeypatch):
    import model.sources as sources

    monkeypatch.setattr(sources, "PATIENT_TOKEN_HEX", 1)  # 16 tokens: two of twenty patients surely share one
    names = [f"patient-{index}" for index in range(20)]
    tokens = [sources.patient_token("site", name) for name in names]
    first, second = next((a, b) for a in range(20) for b in range(a + 1, 20) if tokens[a] == tokens[b])
    alone = next(index for index in range(20) if tokens.count(tokens[index]) == 1)
    patients = np.array([names[first], names[second], names[alone], names[alone]])
    recorded = {"site": [tokens[first], tokens[alone]]}
    held = sources.held_out_by(recorded, np.array(["site"] * 4), patients)
    assert held.tolist() == [False, False, True, True]
    assert not sources.held_out_by({"other": [tokens[alone]]}, np.array(["site"] * 4), patients).any()


def test_the_gate_compares_a_source_split_otherwise_on_the_patients_both_models_held_out():
    from pipeline.retrain import both_held_out, promotion_decision

    labels = np.array(["notumor"] * 6 + ["glioma"] * 2)
    sources = np.array(["lgg/HT"] * 8)
    judged = np.array([False, False, True, True, True, True, True, True])  # the first two: the current trained on
    tumor_current = np.array([0.1, 0.1, 0.9, 0.1, 0.1, 0.1, 0.9, 0.9])
    tumor_candidate = np.array([0.9, 0.9, 0.9, 0.1, 0.1, 0.1, 0.9, 0.9])

    def probabilities(tumor):
        return np.stack([tumor, np.zeros(8), 1 - tumor, np.zeros(8)], axis=1)

    targets = np.eye(4, dtype=np.float32)[[2] * 6 + [0] * 2]  # one-hot: glioma 0, no tumor 2
    fair = both_held_out(judged, targets, labels, sources, ["lgg/HT"],
                         {"current": (probabilities(tumor_current), 0.5),
                          "candidate": (probabilities(tumor_candidate), 0.5)})
    assert fair["images"] == {"lgg/HT": [6, 8]} and (fair["judged_images"], fair["all_images"]) == (6, 8)
    assert fair["current"]["lgg/HT"]["specificity"] == fair["candidate"]["lgg/HT"]["specificity"] == 0.75
    assert fair["macro_f1"]["current"] == fair["macro_f1"]["candidate"]  # the same calls on the six
    # on all eight images the current model looks better: it trained on the two slices the candidate flags
    current = {"macro_f1": 0.90, "split_differs": ["lgg/HT"], "by_source": {"lgg/HT": {"specificity": 5 / 6}}}
    candidate = {"macro_f1": 0.92, "by_source": {"lgg/HT": {"specificity": 0.5}}}
    promoted, reason = promotion_decision(candidate, current, 0.8, source_margin=0.02)
    assert not promoted and "may count validation patients" in reason
    promoted, reason = promotion_decision(candidate, {**current, "both_held_out": fair}, 0.8, source_margin=0.02)
    assert promoted and "judged on the 6 of 8 validation images whose patients both models held out: lgg/HT on 6 " \
        "of its 8" in reason
    fair["macro_f1"]["candidate"] -= 0.01
    promoted, reason = promotion_decision(candidate, {**current, "both_held_out": fair}, 0.8, source_margin=0.02)
    assert not promoted and "is worse than" in reason and "judged on the 6 of 8" in reason
    fair["macro_f1"]["candidate"] += 0.01
    # the current model trained on every validation patient of the site: the site is not compared at all
    none = both_held_out(np.zeros(8, bool), targets, labels, sources, ["lgg/HT"],
                         {"current": (probabilities(tumor_current), 0.5),
                          "candidate": (probabilities(tumor_candidate), 0.5)})
    none["macro_f1"] = {"current": 0.9, "candidate": 0.92}  # (on the images of other sources)
    promoted, reason = promotion_decision(candidate, {**current, "both_held_out": none}, 0.8, source_margin=0.02)
    assert promoted and "lgg/HT not compared, none of its 8" in reason
    fair["candidate"]["lgg/HT"]["specificity"] = 0.5
    promoted, reason = promotion_decision(candidate, {**current, "both_held_out": fair}, 0.8, source_margin=0.02)
    assert not promoted and "specificity on lgg/HT 0.500 against the current model's 0.750" in reason
    assert "may count" not in reason
