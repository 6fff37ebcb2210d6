"""The labelled-data reader: clear errors for bad data sets, and the shared set's own expectations."""

import shutil

import numpy as np
import pytest

from model.data import DatasetError, cache_key, list_labelled_images, load_labelled_dataset
from model.decode import DecodeLimits
from model.labels import CLASS_NAMES
from model.preprocessing import PreprocessConfig
from tests.conftest import BR35H, SAMPLES


@pytest.fixture()
def labelled_copy(tmp_path):
    root = tmp_path / "labelled"
    for name in CLASS_NAMES:
        (root / name).mkdir(parents=True)
        for path in sorted((SAMPLES / "labelled" / name).glob("*.jpg"))[:2]:
            shutil.copy(path, root / name / path.name)
    return root


def test_an_empty_class_folder_is_named(labelled_copy):
    for path in (labelled_copy / "meningioma").iterdir():
        path.unlink()
    with pytest.raises(DatasetError, match="meningioma.*holds no images"):
        list_labelled_images(str(labelled_copy))


def test_a_folder_given_twice_is_refused_before_any_file_is_read_twice(labelled_copy):
    from model.data import list_training_images

    (labelled_copy / "tumor").mkdir()
    shutil.copy(next((labelled_copy / "glioma").iterdir()), labelled_copy / "tumor" / "t.jpg")
    assert len(list_training_images(str(labelled_copy))) == 9
    with pytest.raises(DatasetError, match="1 file.*listed by two.*t.jpg first"):
        list_training_images(str(labelled_copy), (str(labelled_copy / "tumor"),))


def test_an_unknown_label_folder_is_named(labelled_copy):
    (labelled_copy / "astrocytoma").mkdir()
    shutil.copy(next((labelled_copy / "glioma").iterdir()), labelled_copy / "astrocytoma" / "a.jpg")
    with pytest.raises(DatasetError, match="astrocytoma"):
        list_labelled_images(str(labelled_copy))


def test_a_missing_class_is_named(labelled_copy):
    shutil.rmtree(labelled_copy / "pituitary")
    with pytest.raises(DatasetError, match="pituitary"):
        list_labelled_images(str(labelled_copy))


def test_an_unreadable_image_is_named_before_training(labelled_copy, ray_local):
    (labelled_copy / "glioma" / "broken.jpg").write_bytes(b"\xff\xd8\xff\xe0 not really a jpeg")
    images = list_labelled_images(str(labelled_copy))
    with pytest.raises(DatasetError, match="broken.jpg"):
        load_labelled_dataset(images, PreprocessConfig(image_size=64))


def test_labelled_dataset_rows_carry_preprocessed_images_and_masks(labelled_copy, ray_local):
    images = list_labelled_images(str(labelled_copy), (str(SAMPLES / "labelled" / "tumor"),))
    rows = load_labelled_dataset(images, PreprocessConfig(image_size=64)).take_all()
    assert len(rows) == len(images)
    tumor_rows = [row for row in rows if row["label"] == "tumor"]
    assert tumor_rows and all(row["target"].tolist() == [1, 1, 0, 1] for row in tumor_rows)
    assert all(row["image"].shape == (64, 64) and row["image"].dtype == np.uint8 for row in rows)


def test_preprocessed_images_are_cached_and_a_changed_file_misses_the_cache(labelled_copy, ray_local, tmp_path):
    cache, config = str(tmp_path / "cache"), PreprocessConfig(image_size=64)
    images = list_labelled_images(str(labelled_copy))
    first = {row["uri"]: row["image"] for row in load_labelled_dataset(images, config, cache=cache).take_all()}
    [entry] = list((tmp_path / "cache").iterdir())
    assert (entry / "_COMPLETE").exists() and entry.name == cache_key(images, config, DecodeLimits())
    shutil.copytree(labelled_copy, tmp_path / "original")
    shutil.rmtree(labelled_copy / "glioma")  # only the cache can give these rows now
    again = {row["uri"]: row["image"] for row in load_labelled_dataset(images, config, cache=cache).take_all()}
    assert again.keys() == first.keys() and all(np.array_equal(again[uri], first[uri]) for uri in first)
    shutil.copytree(tmp_path / "original" / "glioma", labelled_copy / "glioma")
    changed = next((labelled_copy / "glioma").iterdir())
    changed.write_bytes(changed.read_bytes() + b"\0")  # same name, other content
    relisted = list_labelled_images(str(labelled_copy))
    assert cache_key(relisted, config, DecodeLimits()) != entry.name
    assert cache_key(images, PreprocessConfig(image_size=96), DecodeLimits()) != entry.name


@pytest.mark.slow
def test_shared_set_split_leaves_no_near_duplicate_across_train_and_validation(shared_training, ray_local):
    from model.dedup import DEFAULT_SIMILARITY
    from model.config import RetrainConfig
    from pipeline.retrain import split_by_groups

    images = list_labelled_images(str(shared_training), (str(BR35H),))
    assert {image.label for image in images} == set(CLASS_NAMES) | {"tumor"}
    assert len(images) == 5708 + 526
    dataset = load_labelled_dataset(images, PreprocessConfig(image_size=64))
    table = dataset.select_columns(["uri", "thumbnail"]).to_pandas()
    _, validation, split = split_by_groups(dataset, RetrainConfig(data="", output=""))
    assert split.groups_with_duplicates > 100, "the set is known to hold many near-duplicates"
    validation_uris = {row["uri"] for row in validation.select_columns(["uri"]).take_all()}
    in_validation = table["uri"].isin(validation_uris).to_numpy()
    thumbnails = np.stack(table["thumbnail"].to_numpy())
    similarity = thumbnails[in_validation] @ thumbnails[~in_validation].T
    assert similarity.max() < DEFAULT_SIMILARITY
    assert 0.1 < in_validation.mean() < 0.2


def test_labelled_folders_are_listed_and_read_from_s3(s3_endpoint):
    import boto3

    from infra import storage
    from model.decode import decode_raster

    client = boto3.client("s3", endpoint_url=s3_endpoint)
    client.create_bucket(Bucket="training-data")
    local = sorted((SAMPLES / "labelled").rglob("*.jpg"))
    for path in local:
        client.upload_file(str(path), "training-data", f"set/{path.relative_to(SAMPLES / 'labelled')}")
    images = list_labelled_images("s3://training-data/set")
    tumor_images = [image for image in images if image.label == "tumor"]
    assert len(images) == len(local) and len(tumor_images) == len(list((SAMPLES / "labelled" / "tumor").glob("*")))
    assert decode_raster(storage.read_bytes(images[0].uri)).ndim == 3
