"""Kafka topic names: the public event contract of Peek."""

IMAGE_UPLOADED = "image.uploaded"
ANALYSIS_PARTIAL = "image.analysis.partial"
ANALYSIS_COMPLETED = "image.analysis.completed"
DEAD_LETTER = "peek.dead-letter"

ALL_TOPICS = (IMAGE_UPLOADED, ANALYSIS_PARTIAL, ANALYSIS_COMPLETED, DEAD_LETTER)

# Consumer groups (Faust app ids): each analyzer's app and the sink commit their offsets here.
SINK_GROUP = "peek-sink"


def analyzer_group(analyzer: str) -> str:
    """The consumer group of an analyzer's Faust app."""
    return f"peek-{analyzer}"
