"""The heat-map study's measurements on slices and masks drawn here: the tumor mask follows the slice through the
preprocessing crop, and the in-tumor, near-tumor, in-head and area figures are what the maps say."""

import csv
import dataclasses
import json

import cv2
import numpy as np

from model import registry
from model.preprocessing import PreprocessConfig
from pipeline.report.cases import deciding_figures
from pipeline.report.images import Case, heat_map_caption, png_uri
from tools import heatmap_study
from tests.conftest import ROOT

CONFIG = PreprocessConfig(image_size=80)


def write_slice_set(root, count: int = 2) -> None:
    """A set laid out as the LGG set: each slice a head in a wide black frame with a bright tumor, its mask apart."""
    for folder in ("flair", "t1pre", "t1post", "mask"):
        (root / "glioma" / folder).mkdir(parents=True)
    rows = []
    for number in range(count):
        image, mask = np.zeros((200, 400), np.uint8), np.zeros((200, 400), np.uint8)
        cv2.circle(image, (280, 100), 70, 90, -1)
        cv2.circle(image, (250 + 20 * number, 80), 12, 250, -1)
        cv2.circle(mask, (250 + 20 * number, 80), 12, 255, -1)
        cv2.imwrite(str(root / "glioma" / "mask" / f"P_{number}.png"), mask)
        for sequence in heatmap_study.SEQUENCES:
            cv2.imwrite(str(root / "glioma" / sequence / f"P_{number}.jpg"), image)
            rows.append({"patient": "P", "slice": number, "label": "glioma", "sequence": sequence})
    with open(root / "slices.csv", "w", newline="") as listing:
        writer = csv.DictWriter(listing, ["patient", "slice", "label", "sequence"])
        writer.writeheader()
        writer.writerows(rows)


def test_the_mask_follows_the_slice_through_the_crop_and_the_sample_is_fixed(tmp_path):
    write_slice_set(tmp_path)
    slices = heatmap_study.glioma_slices(str(tmp_path))
    sample = heatmap_study.sample_slices(slices, 3)
    assert [item.sequence for item in sample] == list(heatmap_study.SEQUENCES)
    assert sample == heatmap_study.sample_slices(slices, 3)
    inputs = heatmap_study.model_inputs(sample, CONFIG)
    assert inputs.images.shape == inputs.tumors.shape == inputs.heads.shape == (3, 80, 80)
    for image, tumor, head in zip(inputs.images, inputs.tumors, inputs.heads):
        assert image[tumor].mean() > image[head & ~tumor].mean() + 60  # the mask lies on the bright tumor
        assert (tumor & ~head).sum() == 0 and 0.6 < head.mean() < 0.85  # the head fills the crop, a disc in it


def test_the_figures_count_peaks_in_near_and_outside_the_tumor_and_the_heat_shares():
    tumors, heads = np.zeros((3, 40, 40), bool), np.zeros((3, 40, 40), bool)
    tumors[:, 10:20, 10:20], heads[:, 5:35, 5:35] = True, True
    maps = np.zeros((3, 40, 40), np.float32)
    maps[0, 15, 15] = 1.0  # on the tumor
    maps[1, 15, 23], maps[1, 30, 30] = 1.0, 0.5  # 4 pixels beside it; a third of its heat elsewhere in the head
    maps[2, 0, 39] = 1.0  # outside the head
    figures = heatmap_study.localisation_figures(maps, tumors, heads, ["flair", "t1pre", "flair"], tolerance=5)
    near_area = (heatmap_study.within(tumors[:1], 5) & heads[:1]).sum()
    assert 100 + 4 * 10 * 5 < near_area < 20 * 20  # the tumor square grown by 5 pixels, its corners rounded
    assert figures["overall"] == {"images": 3, "peak_in_tumor": round(1 / 3, 6), "peak_near_tumor": round(2 / 3, 6),
                                  "heat_in_head": round(2 / 3, 6), "heat_in_tumor": round(1 / 3, 6),
                                  "tumor_area": round(100 / 1600, 6), "peak_in_tumor_by_chance": round(100 / 900, 6),
                                  "peak_near_tumor_by_chance": round(float(near_area) / 900, 6)}
    assert figures["per_sequence"]["flair"]["images"] == 2 and figures["per_sequence"]["flair"]["peak_in_tumor"] == 0.5
    assert figures["per_sequence"]["t1post"] == {"images": 0, "peak_in_tumor": None, "peak_near_tumor": None,
                                                 "heat_in_head": None, "heat_in_tumor": None, "tumor_area": None,
                                                 "peak_in_tumor_by_chance": None, "peak_near_tumor_by_chance": None}
    nothing = heatmap_study.localisation_figures(maps[:0], tumors[:0], heads[:0], [])
    assert nothing["overall"]["images"] == 0 and nothing["overall"]["peak_in_tumor"] is None
    sentence = heatmap_study.summary_sentence({**figures, "sampled": 4, "method": "LayerCAM",
                                               "tolerance_pixels": {"pixels": 5, "image_size": 40}})
    assert sentence.startswith("on the 3 of 4 seeded glioma slices")
    assert heatmap_study.summary_sentence({**figures, "sampled": 4, "method": "LayerCAM", "model": "run-b",
                                           "site": "HT", "tolerance_pixels": {"pixels": 5, "image_size": 40}}
                                          ).startswith("measured with run-b, the same recipe trained without site HT")
    assert "inside the tumor on 33.3% (FLAIR 50.0%, T1 0.0%;" in sentence
    assert heatmap_study.localisation_figures(maps, tumors, heads, ["t1pre"] * 3, tolerance=3)[
        "overall"]["peak_near_tumor"] == round(1 / 3, 6)


def test_the_caption_says_what_was_measured_for_the_model_or_that_nothing_was():
    current = registry.load_model_info(str(ROOT / "models"))
    figures = {"overall": {"images": 275, "peak_in_tumor": 0.2691, "peak_near_tumor": 0.3927,
                           "peak_in_tumor_by_chance": 0.0848},
               "tolerance_pixels": {"pixels": 5, "image_size": 160}}
    measured = dataclasses.replace(current, metadata={registry.HEATMAP_LOCALISATION: figures})
    caption = heat_map_caption(measured)
    assert "most raised the tumor probability" in caption and "tumor evidence" not in caption
    assert "On 275 flagged glioma slices" in caption and "on 27%" in caption and "within 5 pixels" in caption
    assert "on 39%" in caption and "at random in the head: 8%" in caption
    assert "not been measured" in heat_map_caption(dataclasses.replace(current, metadata={}))
    on_a_left_out_site = dataclasses.replace(current, metadata={registry.HEATMAP_LOCALISATION: {**figures,
                                                                                                "site": "HT"}})
    assert "a hospital left out of the model's training" in heat_map_caption(on_a_left_out_site)
    assert "left out" not in caption
    slice_image = np.zeros((8, 8), np.uint8)
    case = Case({}, [("a.dcm", 0)], [0.9], 0, thumbnails={0: png_uri(slice_image)}, deciding_image=slice_image,
                heat_map=png_uri(slice_image), heat_map_caption=caption)
    assert f"<figcaption>{caption}</figcaption>" in deciding_figures(case, "no heat maps")
    recorded = current.metadata.get(registry.HEATMAP_LOCALISATION)
    if recorded:  # the shipped model's caption is its own recorded figure
        assert f"On {recorded['overall']['images']} flagged" in heat_map_caption(current)
        assert json.dumps(recorded)  # plain JSON for the model card
