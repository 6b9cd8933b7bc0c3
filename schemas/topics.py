"""Kafka topic names: the public event contract of Peek."""

IMAGE_UPLOADED = "image.uploaded"
ANALYSIS_PARTIAL = "image.analysis.partial"
ANALYSIS_COMPLETED = "image.analysis.completed"
DEAD_LETTER = "peek.dead-letter"

ALL_TOPICS = (IMAGE_UPLOADED, ANALYSIS_PARTIAL, ANALYSIS_COMPLETED, DEAD_LETTER)
