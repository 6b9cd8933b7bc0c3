"""The earlier Peek API's analysis methods, reproduced faithfully as the benchmark's baseline.

One sequential pass over the full-size image: scikit-learn K-means (k=5, 10 restarts) over every
pixel, luma mean, Laplacian variance and RMS contrast, the frontal-face Haar cascade (scale 1.1,
5 neighbours, 30 px minimum), pytesseract on the full image, and an HSV blue/green share rule.
"""

from __future__ import annotations

import os

import cv2
import numpy as np
import pytesseract
from sklearn.cluster import KMeans

_HAAR_FOLDER = cv2.data.haarcascades  # type: ignore[attr-defined]  # missing from the stubs
_CASCADE = cv2.CascadeClassifier(os.path.join(_HAAR_FOLDER, "haarcascade_frontalface_default.xml"))


def decode(data: bytes) -> np.ndarray:
    """Full-size BGR decode, as the earlier API did with cv2.imread."""
    image = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR)
    if image is None:
        raise ValueError("cannot decode")
    return image


def colors(image: np.ndarray) -> dict:
    """Dominant colours by K-means over every pixel; brightness as the luma mean."""
    pixels = cv2.cvtColor(image, cv2.COLOR_BGR2RGB).reshape(-1, 3)
    clusters = min(5, len(np.unique(pixels, axis=0)))
    model = KMeans(n_clusters=clusters, n_init=10, random_state=0).fit(pixels)
    counts = np.bincount(model.labels_, minlength=clusters)
    order = np.argsort(-counts)
    centers = model.cluster_centers_.round().astype(int)
    return {
        "dominant_colors": ["#{:02x}{:02x}{:02x}".format(*centers[i]) for i in order],
        "color_shares": [float(counts[i] / counts.sum()) for i in order],
        "brightness": float(cv2.cvtColor(image, cv2.COLOR_BGR2GRAY).mean()),
    }


def quality(image: np.ndarray) -> dict:
    """Laplacian variance for sharpness, RMS contrast, a simple combined score."""
    gray = cv2.cvtColor(image, cv2.COLOR_BGR2GRAY)
    sharpness = float(cv2.Laplacian(gray, cv2.CV_64F).var())
    contrast = float(gray.std())
    blur_level = "low" if sharpness > 500 else "medium" if sharpness > 100 else "high"
    score = min(100.0, sharpness / 10) * 0.6 + min(100.0, contrast) * 0.4
    return {
        "sharpness_score": sharpness,
        "blur_level": blur_level,
        "contrast_score": contrast,
        "quality_score": score,
    }


def faces(image: np.ndarray) -> dict:
    """Haar frontal-face cascade on the full-size grey image."""
    gray = cv2.cvtColor(image, cv2.COLOR_BGR2GRAY)
    found = _CASCADE.detectMultiScale(gray, scaleFactor=1.1, minNeighbors=5, minSize=(30, 30))
    locations = [{"x": int(x), "y": int(y), "width": int(w), "height": int(h)} for x, y, w, h in found]
    return {"faces_detected": len(locations), "face_locations": locations}


def text(image: np.ndarray) -> dict:
    """pytesseract (one tesseract process per call) on the full image."""
    extracted = pytesseract.image_to_string(cv2.cvtColor(image, cv2.COLOR_BGR2RGB)).strip()
    return {
        "text_found": bool(extracted),
        "extracted_text": extracted,
        "word_count": len(extracted.split()),
    }


def scene(image: np.ndarray) -> dict:
    """Share of blue and green pixels in HSV: blue > 0.3 outdoor, green > 0.3 nature, else indoor."""
    hsv = cv2.cvtColor(image, cv2.COLOR_BGR2HSV)
    blue = float(cv2.inRange(hsv, (100, 50, 50), (130, 255, 255)).mean() / 255)
    green = float(cv2.inRange(hsv, (35, 50, 50), (85, 255, 255)).mean() / 255)
    if blue > 0.3:
        return {"scene_type": "outdoor", "scene_confidence": blue}
    if green > 0.3:
        return {"scene_type": "nature", "scene_confidence": green}
    return {"scene_type": "indoor", "scene_confidence": 1.0 - max(blue, green)}


ANALYZERS = {
    "colors": colors,
    "quality": quality,
    "faces": faces,
    "text": text,
    "scene": scene,
}
