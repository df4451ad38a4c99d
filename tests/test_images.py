import numpy as np
import pytest
from PIL import Image

from lipsweep.core.errors import ConfigError
from lipsweep.problems.images import catalog, image_names, load_image


def test_shipped_sets_are_addressable_by_name():
    names = catalog()
    for name in ["Set5/baby", "Set5/woman", "Set14/zebra", "DIP/F16_GT", "DIP/kate_mask",
                 "DIP/inpainting/kate", "DIP/restoration/kate", "DIP/zebra_GT"]:
        assert names[name].is_file(), name
    assert len([n for n in image_names() if n.startswith("Set5/")]) == 5
    assert len([n for n in image_names() if n.startswith("Set14/")]) == 14
    assert (names["Set5/baby"].parents[1] / "PROVENANCE.md").is_file()


def test_ambiguous_short_name_lists_the_full_names():
    with pytest.raises(ConfigError, match="DIP/inpainting/kate, DIP/restoration/kate"):
        load_image("DIP/kate")


def test_crop_to_multiple_of_32_keeps_the_center_of_non_square_images():
    img = load_image("Set5/woman")  # 228 x 344
    assert img.pixels.shape == (320, 224, 3)
    raw = np.asarray(Image.open(catalog()["Set5/woman"]), dtype=np.float32) / 255
    assert np.array_equal(img.pixels, raw[12:332, 2:226])


def test_size_resizes_the_shorter_side_before_cropping():
    assert load_image("Set5/woman", size=64).pixels.shape == (96, 64, 3)  # 64 x 96.5 -> crop 64 x 96
    assert load_image("Set5/baby", size=64).pixels.shape == (64, 64, 3)


def test_grayscale_and_rgba_are_converted_and_say_so(image_file):
    gray = load_image(str(image_file(64, 64, "L", "g.png")))
    assert gray.pixels.shape == (64, 64, 3) and "converted L image to RGB" in gray.notes[0]
    rgba = load_image(str(image_file(64, 64, "RGBA", "a.png")))
    assert rgba.pixels.shape == (64, 64, 3) and "alpha channel dropped" in rgba.notes[0]
    assert load_image("Set5/baby", size=64).notes == ()


def test_bad_images_give_clear_errors(image_file, tmp_path):
    with pytest.raises(ConfigError, match="image: no shipped image or file 'Set5/nope'; allowed: a file path"):
        load_image("Set5/nope")
    text = tmp_path / "notes.png"
    text.write_text("not an image")
    with pytest.raises(ConfigError, match="is not a readable image file"):
        load_image(str(text))
    with pytest.raises(ConfigError, match="too small"):
        load_image(str(image_file(40, 40)))
    with pytest.raises(ConfigError, match="too small"):
        load_image(str(image_file(32, 32)))
    with pytest.raises(ConfigError, match="size: must be a positive integer"):
        load_image("Set5/baby", size=0)
