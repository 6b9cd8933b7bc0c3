"""Scene type (indoor / outdoor / nature) from illumination, sky and vegetation statistics.

No learned model: three hand-built cues, each a principled scene statistic.
- Daylight comes from above: outdoors the top third of a photo (sky) is clearly brighter than
  the bottom third (ground); indoor light is spread more evenly.
- Blue sky: saturated blue pixels in the top third.
- Vegetation: the share of saturated green-yellow pixels; lots of it (with or without sky) is nature.
Each cue is turned into a log-odds score by a margin over a threshold and a scale; indoor scores 0,
and the highest score is the label. The confidence is the logistic of the margin between the top
two scores: how much more evidence there is for the label than for its closest rival. "Indoor"
is the verdict when outdoor cues are missing, and a missing cue is weak evidence (sky is often
out of frame, and overcast or downward shots have no top light), so an indoor margin counts for
less: a photo with no cue at all is indoor at about 0.6, while a strong sky or light cue reaches
0.9 and more.
"""

from __future__ import annotations

import cv2
import numpy as np

from stream_workers.analyzers._image import shrink

FIELDS = ("scene_type", "scene_confidence")
VERSION = "3"

_WORKING_SIDE = 256
DECODE_SIDE = _WORKING_SIDE
_LABELS = ("indoor", "outdoor", "nature")
# (threshold, scale): score = (value - threshold) / scale, in log-odds units
_TOP_LIGHT = (0.17, 0.06)  # mean value (0-1) of top third minus bottom third
_BLUE_SKY = (0.25, 0.08)  # share of top third that is saturated blue
_VEGETATION = (0.45, 0.08)  # share of the image that is saturated green
_ABSENCE_WEIGHT = 0.3  # log-odds worth of a missing outdoor cue, against a present one


def analyze(image: np.ndarray) -> dict:
    """Return the most likely scene label and its probability."""
    small, _ = shrink(image, _WORKING_SIDE)
    hsv = cv2.cvtColor(small, cv2.COLOR_BGR2HSV)
    hue, saturation, value = (hsv[:, :, channel].astype(np.float32) for channel in range(3))
    third = max(1, small.shape[0] // 3)
    top_light = float(value[:third].mean() - value[-third:].mean()) / 255.0
    blue = (hue >= 90) & (hue <= 130) & (saturation > 30) & (value > 100)
    blue_sky = float(blue[:third].mean())
    vegetation = float(((hue >= 30) & (hue <= 90) & (saturation > 50) & (value > 40)).mean())
    outdoor = max(_score(top_light, _TOP_LIGHT), _score(blue_sky, _BLUE_SKY))
    nature = _score(vegetation, _VEGETATION) + max(0.0, outdoor)
    scores = np.array([0.0, outdoor, nature])
    best, runner_up = np.argsort(-scores, kind="stable")[:2]
    margin = float(scores[best] - scores[runner_up])
    if _LABELS[best] == "indoor":
        margin *= _ABSENCE_WEIGHT
    return {
        "scene_type": _LABELS[best],
        "scene_confidence": round(1.0 / (1.0 + float(np.exp(-margin))), 3),
    }


def _score(value: float, threshold_and_scale: tuple[float, float]) -> float:
    """Log-odds evidence from how far a cue is past its threshold, clipped to [-1.5, 6]."""
    threshold, scale = threshold_and_scale
    return float(np.clip((value - threshold) / scale, -1.5, 6.0))
