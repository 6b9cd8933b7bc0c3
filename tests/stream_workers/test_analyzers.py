"""The analyzers on the shared corpus (with tolerances) and on odd inputs."""

from __future__ import annotations

import json
import re
from collections.abc import Callable

import cv2
import numpy as np
import pytest

from bench._corpus import word_recall
from bench._documents import documents
from stream_workers.analyzers import REGISTRY, analyze_all

Loader = Callable[[str], np.ndarray]

ODD_IMAGES = {
    "one_pixel": np.full((1, 1, 3), 37, np.uint8),
    "thin_line": np.full((1, 300, 3), 200, np.uint8),
    "flat_black": np.zeros((64, 64, 3), np.uint8),
    "grey_gradient": np.repeat(np.linspace(0, 255, 256, dtype=np.uint8), 3)
    .reshape(1, 256, 3)
    .repeat(128, axis=0),
    "huge_flat": np.full((4096, 3072, 3), (30, 160, 90), np.uint8),
}


def test_registry_order_and_fields() -> None:
    assert list(REGISTRY) == ["colors", "quality", "faces", "text", "scene"]
    for name, analyzer in REGISTRY.items():
        assert analyzer.name == name and analyzer.version


@pytest.mark.parametrize("name", list(ODD_IMAGES))
def test_every_analyzer_handles_odd_images(name: str) -> None:
    image = ODD_IMAGES[name]
    for analyzer in REGISTRY.values():
        result = analyzer.run(image)
        assert set(result) == set(analyzer.fields)
        json.dumps(result)
    assert np.array_equal(image, ODD_IMAGES[name])  # analyzers never modify their input


def test_flat_image_has_one_colour_no_faces_no_text() -> None:
    result = analyze_all(ODD_IMAGES["huge_flat"])
    assert result["dominant_colors"] == ["#5aa01e"]
    assert result["color_shares"] == [1.0]
    assert result["faces_detected"] == 0 and not result["text_found"]
    assert result["blur_level"] == "high"


def test_colors_on_smarties(corpus_image: Loader) -> None:
    result = REGISTRY["colors"].run(corpus_image("smarties.png"))
    assert 1 <= len(result["dominant_colors"]) <= 5
    assert all(re.fullmatch(r"#[0-9a-f]{6}", colour) for colour in result["dominant_colors"])
    assert abs(sum(result["color_shares"]) - 1.0) < 0.01
    assert result["color_shares"] == sorted(result["color_shares"], reverse=True)
    red, green, blue = (int(result["dominant_colors"][0][i : i + 2], 16) for i in (1, 3, 5))
    assert min(red, green, blue) > 220  # the white table dominates
    assert 150 < result["brightness"] < 255


def test_colors_close_to_full_image_kmeans(corpus_image: Loader) -> None:
    image = corpus_image("butterfly.jpg")
    pixels = image.reshape(-1, 3).astype(np.float32)
    criteria = (cv2.TERM_CRITERIA_EPS + cv2.TERM_CRITERIA_MAX_ITER, 100, 0.1)
    cv2.setRNGSeed(1)
    _, _, reference = cv2.kmeans(pixels, 5, None, criteria, 3, cv2.KMEANS_PP_CENTERS)
    ours = np.array(
        [
            [int(c[i : i + 2], 16) for i in (5, 3, 1)]
            for c in REGISTRY["colors"].run(image)["dominant_colors"]
        ],
        np.float32,
    )
    lab = lambda bgr: cv2.cvtColor((bgr / 255).reshape(-1, 1, 3), cv2.COLOR_BGR2Lab).reshape(-1, 3)  # noqa: E731
    nearest = np.linalg.norm(lab(reference)[:, None] - lab(ours)[None], axis=2).min(axis=1)
    assert nearest.mean() < 8.0


def test_quality_ranks_sharp_above_blurred(corpus_image: Loader) -> None:
    sharp = corpus_image("board.jpg")
    blurred = cv2.GaussianBlur(sharp, (0, 0), 4)
    sharp_result = REGISTRY["quality"].run(sharp)
    blurred_result = REGISTRY["quality"].run(blurred)
    assert sharp_result["sharpness_score"] > 5 * blurred_result["sharpness_score"]
    assert blurred_result["blur_level"] == "high"
    assert 0 <= blurred_result["quality_score"] < sharp_result["quality_score"] <= 100
    assert sharp_result["contrast_score"] > 0


def test_faces_finds_the_player(corpus_image: Loader) -> None:
    image = corpus_image("basketball2.png")
    result = REGISTRY["faces"].run(image)
    assert result["faces_detected"] == 1
    box = result["face_locations"][0]
    height, width = image.shape[:2]
    assert 0 <= box["x"] < box["x"] + box["width"] <= width
    assert 0 <= box["y"] < box["y"] + box["height"] <= height
    assert 20 <= box["width"] <= 200


@pytest.mark.parametrize("name", ["coins.png", "brick.png", "scenetext04.jpg"])
def test_faces_ignores_textures(corpus_image: Loader, name: str) -> None:
    assert REGISTRY["faces"].run(corpus_image(name))["faces_detected"] == 0


def test_face_boxes_are_in_original_coordinates(corpus_image: Loader) -> None:
    image = corpus_image("basketball2.png")
    doubled = cv2.resize(image, None, fx=2, fy=2, interpolation=cv2.INTER_LINEAR)
    small = REGISTRY["faces"].run(image)["face_locations"][0]
    large = REGISTRY["faces"].run(doubled)["face_locations"][0]
    assert abs(large["x"] - 2 * small["x"]) <= 8 and abs(large["width"] - 2 * small["width"]) <= 12


@pytest.mark.parametrize(
    ("name", "word"),
    [
        ("scenetext_segmented_word04.jpg", "foster"),
        ("scenetext_segmented_word02.jpg", "box"),
        ("scenetext_segmented_word01.jpg", "hotel"),  # light letters, one of them under a glare
        ("scenetext03.jpg", "copy"),
    ],
)
def test_text_reads_scene_text(corpus_image: Loader, name: str, word: str) -> None:
    result = REGISTRY["text"].run(corpus_image(name))
    assert result["text_found"] and word in result["extracted_text"].lower()
    assert result["word_count"] == len(result["text_regions"]) >= 1


def test_text_reads_a_document(corpus_image: Loader) -> None:
    result = REGISTRY["text"].run(corpus_image("imageTextN.png"))
    assert result["word_count"] > 20 and "technical" in result["extracted_text"]


@pytest.mark.parametrize("name", ["apple.jpg", "butterfly.jpg", "moon.png"])
def test_text_free_images_have_no_text(corpus_image: Loader, name: str) -> None:
    result = REGISTRY["text"].run(corpus_image(name))
    assert result == {"text_found": False, "extracted_text": "", "word_count": 0, "text_regions": []}


@pytest.mark.parametrize(
    ("name", "scene"),
    [("butterfly.jpg", "nature"), ("aero3.jpg", "outdoor"), ("apple.jpg", "indoor")],
)
def test_scene_labels(corpus_image: Loader, name: str, scene: str) -> None:
    result = REGISTRY["scene"].run(corpus_image(name))
    assert result["scene_type"] == scene
    assert 0.5 <= result["scene_confidence"] <= 1


def test_scene_confidence_is_higher_for_present_cues_than_for_missing_ones(corpus_image: Loader) -> None:
    # aero3: bright sky over darker ground; box_in_scene: no outdoor cue, so indoor by default
    sky = REGISTRY["scene"].run(corpus_image("aero3.jpg"))
    default = REGISTRY["scene"].run(corpus_image("box_in_scene.png"))
    flat = REGISTRY["scene"].run(np.full((64, 64, 3), 128, np.uint8))
    assert default["scene_type"] == flat["scene_type"] == "indoor"
    assert sky["scene_confidence"] > default["scene_confidence"] + 0.1
    assert flat["scene_confidence"] < 0.65


def _page_words(result: dict) -> set[str]:
    return set(re.findall(r"[a-z]+", result["extracted_text"].lower()))


def test_text_reads_a_skewed_copy_of_a_document_like_the_original(corpus_image: Loader) -> None:
    upright = _page_words(REGISTRY["text"].run(corpus_image("imageTextN.png")))
    skewed = _page_words(REGISTRY["text"].run(corpus_image("imageTextR.png")))
    assert len(upright) > 60
    assert len(upright & skewed) >= 0.9 * len(upright)


@pytest.mark.parametrize(
    "transform",
    [
        pytest.param(lambda image: np.rot90(image, 1), id="turned-90"),
        pytest.param(lambda image: np.rot90(image, 2), id="upside-down"),
        pytest.param(lambda image: np.rot90(image, 3), id="turned-270"),
        pytest.param(lambda image: 255 - image, id="inverted"),
    ],
)
def test_text_reads_turned_and_inverted_documents(
    corpus_image: Loader, transform: Callable[[np.ndarray], np.ndarray]
) -> None:
    image = corpus_image("imageTextN.png")
    upright = _page_words(REGISTRY["text"].run(image))
    result = REGISTRY["text"].run(np.ascontiguousarray(transform(image)))
    assert len(_page_words(result) & upright) >= 0.9 * len(upright)
    height, width = transform(image).shape[:2]
    for region in result["text_regions"]:  # boxes come back in the turned image's coordinates
        assert region["x"] >= 0 and region["x"] + region["width"] <= width + 1
        assert region["y"] >= 0 and region["y"] + region["height"] <= height + 1


def test_text_boxes_of_an_upside_down_page_map_back_to_its_pixels(corpus_image: Loader) -> None:
    image = corpus_image("imageTextN.png")
    height, width = image.shape[:2]

    def box_of(result: dict, word: str) -> dict:
        words = result["extracted_text"].split()
        return result["text_regions"][words.index(word)]

    upright = box_of(REGISTRY["text"].run(image), "technical")
    turned = box_of(REGISTRY["text"].run(np.ascontiguousarray(np.rot90(image, 2))), "technical")
    assert abs(turned["x"] - (width - upright["x"] - upright["width"])) <= 4
    assert abs(turned["y"] - (height - upright["y"] - upright["height"])) <= 4
    assert abs(turned["width"] - upright["width"]) <= 4


@pytest.mark.parametrize(
    "name",
    ["small 8px #0", "photographed #0", "skewed 7deg #0", "inverted #0", "low contrast #0", "plain 16px #2"],
)
def test_text_reads_rendered_documents(name: str) -> None:
    page = next(page for page in documents() if page.name == name)
    result = REGISTRY["text"].run(page.image)
    assert word_recall(page.text, result["extracted_text"]) >= 0.85


def test_text_reads_dark_letters_inside_a_busy_sign_frame(corpus_image: Loader) -> None:
    # the edge-blob finder merges this sign with its yellow frame; the letter rows find it
    result = REGISTRY["text"].run(corpus_image("scenetext05.jpg"))
    assert "no parking" in result["extracted_text"].lower()  # the tight gap still splits the words


def test_luma_only_analyzers_read_the_same_from_a_luma_decode(corpus) -> None:
    """A worker of a LUMA_ONLY analyzer decodes just the luma; over the whole corpus that changes
    no face and moves quality by a rounding step at most."""
    from stream_workers.decode import decode_image

    luma_only = [analyzer for analyzer in REGISTRY.values() if analyzer.luma_only]
    assert {analyzer.name for analyzer in luma_only} == {"faces", "quality"}
    for path in sorted(corpus.glob("*.*")):
        if path.suffix not in (".jpg", ".jpeg", ".png"):
            continue
        data = path.read_bytes()
        for analyzer in luma_only:
            side = {"max_side": analyzer.decode_side} if analyzer.decode_side else {}
            colour = analyzer.run(decode_image(data, **side))
            luma = analyzer.run(decode_image(data, gray=True, **side))
            if analyzer.name == "faces":
                assert luma == colour, path.name
            else:
                assert luma["blur_level"] == colour["blur_level"], path.name
                assert abs(luma["quality_score"] - colour["quality_score"]) <= 0.5, path.name
