"""LocalStorage: atomic writes, keys that cannot leave the folder, a folder removed by hand."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from infra.storage import LocalStorage, ObjectNotFound, StorageError


def test_objects_round_trip_and_leave_no_temporary_files(tmp_path: Path) -> None:
    storage = LocalStorage(tmp_path / "images")
    storage.put("originals/2026/11/26/a.jpg", b"one", "image/jpeg")
    storage.put("originals/2026/11/26/a.jpg", b"two", "image/jpeg")  # replaced whole
    assert storage.get("originals/2026/11/26/a.jpg") == b"two"
    assert storage.exists("originals/2026/11/26/a.jpg")
    assert [p.name for p in (tmp_path / "images/originals/2026/11/26").iterdir()] == ["a.jpg"]
    storage.delete("originals/2026/11/26/a.jpg")
    with pytest.raises(ObjectNotFound):
        storage.get("originals/2026/11/26/a.jpg")


@pytest.mark.parametrize(
    "key",
    ["../outside.jpg", "originals/../../outside.jpg", "/etc/passwd", "a//b.jpg", "./a.jpg", "a/\x00.jpg", ""],
)
def test_keys_that_would_leave_the_folder_are_refused(tmp_path: Path, key: str) -> None:
    storage = LocalStorage(tmp_path / "images")
    with pytest.raises(StorageError, match="escapes"):
        storage.put(key, b"x", "image/jpeg")
    assert not (tmp_path / "outside.jpg").exists()


def test_a_folder_removed_by_hand_is_made_again(tmp_path: Path) -> None:
    storage = LocalStorage(tmp_path / "images")
    storage.put("originals/day/a.jpg", b"a", "image/jpeg")
    shutil.rmtree(tmp_path / "images" / "originals")
    storage.put("originals/day/b.jpg", b"b", "image/jpeg")
    assert storage.get("originals/day/b.jpg") == b"b"
