"""Label parsing, folder loading with its errors, hash splits, split files, and the synthetic renderer."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from lprnet.model import data, synth
from lprnet.model.alphabet import get_alphabet


@pytest.mark.parametrize("name, label", [
    ("京PL3N67.jpg", "京PL3N67"), ("AB12345_3.png", "AB12345"), ("AB12345-x_y.jpg", "AB12345"),
    ("dir.with.dots/ZZ99.jpeg", "ZZ99"),
])
def test_label_from_filename(name, label):
    assert data.label_from_filename(name) == label


def write_plate(path, size=(94, 24), colour=(10, 200, 30)):
    Image.new("RGB", size, colour).save(path)


def test_load_folder_reads_bgr_and_labels(tmp_path, latin):
    write_plate(tmp_path / "AB12345.png", colour=(10, 200, 30))
    images, labels = data.load_folder(data.list_images(tmp_path), latin)
    assert images.shape == (1, 24, 94, 3) and images.dtype == np.uint8
    assert tuple(images[0, 0, 0]) == (30, 200, 10)  # BGR, as LPRNet_Pytorch's cv2 loader
    assert list(labels) == ["AB12345"]


def test_other_sizes_are_resized_with_a_warning(tmp_path):
    write_plate(tmp_path / "X.png", size=(188, 48))
    with pytest.warns(UserWarning, match="X.png"):
        assert data.load_image(tmp_path / "X.png").shape == (24, 94, 3)


def test_unknown_character_names_the_file(tmp_path, latin):
    write_plate(tmp_path / "AB1234I.png")  # I is not in the latin alphabet
    with pytest.raises(ValueError, match=r"AB1234I\.png.*'I'"):
        data.load_folder(data.list_images(tmp_path), latin)


def test_unreadable_image_names_the_file(tmp_path, latin):
    (tmp_path / "AB12345.jpg").write_bytes(b"\xff\xd8\xff\xe0 not really a jpeg")
    with pytest.raises(ValueError, match=r"AB12345\.jpg: unreadable image"):
        data.load_folder(data.list_images(tmp_path), latin)


def test_empty_or_missing_folder_is_refused(tmp_path):
    with pytest.raises(ValueError, match="no images"):
        data.list_images(tmp_path)
    with pytest.raises(FileNotFoundError, match="nowhere"):
        data.list_images(tmp_path / "nowhere")


def test_hash_split_is_stable_and_follows_the_fractions():
    fractions = {"calib": 0.2, "train": 0.3, "test": 0.5}
    names = [f"P{i:06d}.jpg" for i in range(5000)]
    splits = [data.hash_split(n, fractions) for n in names]
    assert splits == [data.hash_split(n, fractions) for n in names]
    for split, fraction in fractions.items():
        assert abs(splits.count(split) / len(names) - fraction) < 0.03
    # A file keeps its split whatever else is in the folder.
    assert data.hash_split("P000007.jpg", fractions) == splits[7]


def test_split_file_round_trip_without_pickle(tmp_path):
    images = np.random.default_rng(0).integers(0, 256, size=(3, 24, 94, 3), dtype=np.uint8)
    data.save_split(tmp_path / "s.npz", images, np.array(["A", "京B", "C1"]))
    loaded_images, loaded_labels = data.load_split(tmp_path / "s.npz")
    np.testing.assert_array_equal(loaded_images, images)
    assert list(loaded_labels) == ["A", "京B", "C1"]


def test_synthetic_plates_are_deterministic_per_seed_and_independent_of_workers(latin):
    one, labels_one = synth.render_split(7, "train", 12, latin.symbols, workers=1)
    two, labels_two = synth.render_split(7, "train", 12, latin.symbols, workers=2)
    np.testing.assert_array_equal(one, two)
    assert list(labels_one) == list(labels_two)
    other, labels_other = synth.render_split(8, "train", 12, latin.symbols)
    assert list(labels_other) != list(labels_one)
    for label in labels_one:
        assert len(label) == synth.PLATE_LENGTH
        latin.encode(label)
    assert one.shape == (12, 24, 94, 3) and one.std() > 20  # not blank images


def test_synthetic_splits_differ(latin):
    _, train = synth.render_split(0, "train", 50, latin.symbols)
    _, test = synth.render_split(0, "test", 50, latin.symbols)
    assert not set(train) & set(test)


def test_alphabets_encode_and_refuse():
    chinese = get_alphabet("chinese68")
    assert chinese.num_classes == 68 and chinese.blank == 67
    assert chinese.decode(chinese.encode("京PL3N67")) == "京PL3N67"
    with pytest.raises(ValueError, match="unknown alphabet 'klingon'"):
        get_alphabet("klingon")
