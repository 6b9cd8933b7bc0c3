"""`peek up` on a bare machine's defaults: embedded broker, SQLite, local folder, in-process cache."""

from __future__ import annotations

import os
import signal
import sqlite3
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import pytest

from bench._procs import children_of
from infra.broker import free_port
from infra.settings import embedded_environment
from tests.conftest import wait_final
from tests.services import REPO, http_ok, wait_for

UPLOADS = [
    "apple.jpg",
    "basketball2.png",
    "scenetext05.jpg",
    "orange.jpg",
    "smarties.png",
    "butterfly.jpg",
    "aero3.jpg",
    "board.jpg",
    "stuff.jpg",
    "notes.png",
    "plant.jpg",
    "sudoku.png",
]


class PeekUp:
    """One `peek up` process group on a data folder; each start gets a fresh embedded broker."""

    def __init__(self, data_dir: Path) -> None:
        self.data_dir = data_dir
        self.port = free_port()
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> None:
        env = embedded_environment(os.environ)
        env.update({"PEEK_KAFKA_SESSION_TIMEOUT_S": "6", "PEEK_RECONCILE_INTERVAL_S": "2"})
        log = open(self.data_dir.parent / f"{self.data_dir.name}-up.log", "ab")  # noqa: SIM115
        self.process = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "infra.cli",
                "up",
                "--port",
                str(self.port),
                "--data-dir",
                str(self.data_dir),
            ],
            cwd=REPO,
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        wait_for(lambda: http_ok(f"{self.url}/api/health"), 90, "peek up to be healthy")

    def kill_everything(self) -> None:
        """kill -9 every Peek process, the embedded broker included (they share one process group)."""
        assert self.process is not None
        os.killpg(self.process.pid, signal.SIGKILL)
        self.process.wait(10)
        wait_for(lambda: _group_gone(self.process.pid), 10, "the process group to die")  # type: ignore[union-attr]

    def stop(self) -> None:
        if self.process and self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGTERM)
            try:
                self.process.wait(30)
            except subprocess.TimeoutExpired:
                os.killpg(self.process.pid, signal.SIGKILL)


def _broker_pid(up_pid: int) -> int | None:
    """The embedded broker that ``peek up`` (``up_pid``) runs, if one is running."""
    return _child_pid(up_pid, lambda command: b"tansu" in command[0] and b"broker" in command)


def _accepted_upload(http: httpx.Client, image: Path, *, reanalyze: bool = False) -> int:
    """POST the image to /api/analyze; its id, once the API has answered 202."""
    response = http.post(
        "/api/analyze",
        params={"reanalyze": "true"} if reanalyze else None,
        files={"image": (image.name, image.read_bytes())},
    )
    assert response.status_code == 202, response.text
    return int(response.json()["id"])


def _results_of(peek_up: PeekUp, image_ids: list[int]) -> int:
    """How many analyzer results of these images the sink has stored."""
    db = sqlite3.connect(peek_up.data_dir / "peek.db")
    try:
        marks = ",".join("?" * len(image_ids))
        query = f"SELECT count(*) FROM analysis_results WHERE image_id IN ({marks})"
        return int(db.execute(query, image_ids).fetchone()[0])
    finally:
        db.close()


def _sink_pid(up_pid: int) -> int | None:
    """The sink that ``peek up`` (``up_pid``) runs, if one is running."""
    return _child_pid(up_pid, lambda command: b"infra.cli" in command and command[-1] == b"sink")


def _child_pid(up_pid: int, matches: Callable[[list[bytes]], bool]) -> int | None:
    for pid in children_of(up_pid):
        try:
            command = (Path("/proc") / str(pid) / "cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        while command and not command[-1]:
            command.pop()
        if command and matches(command):
            return pid
    return None


def _group_gone(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
        return False
    except ProcessLookupError:
        return True


@pytest.fixture
def peek_up(tmp_path: Path) -> Iterator[PeekUp]:
    peek = PeekUp(tmp_path / "data")
    try:
        yield peek
    finally:
        peek.stop()


def test_upload_completes_on_embedded_defaults(peek_up: PeekUp, corpus: Path) -> None:
    peek_up.start()
    with httpx.Client(base_url=peek_up.url, timeout=30) as http:
        health = http.get("/api/health").json()
        assert health == health | {
            "status": "ok",
            "database": "connected",
            "kafka": "connected",
            "storage": "connected",
            "redis": "in-process",
        }
        data = (corpus / "basketball2.png").read_bytes()
        accepted = http.post("/api/analyze", files={"image": ("b.png", data, "image/png")}).json()
        result = wait_final(http, accepted["id"])
        assert result["status"] == "completed" and result["insights"]["faces_detected"] == 1
        # The local-folder storage serves through the API.
        assert http.get(accepted["public_url"]).content == data
        url = http.get(f"/api/image/{accepted['id']}/url", params={"expiration": 60}).json()
        assert http.get(url["url"]).content == data
        annotated = http.get(f"/api/image/{accepted['id']}/annotated")
        assert annotated.headers["x-peek-annotated"] == "true" and annotated.content[:2] == b"\xff\xd8"
    assert (peek_up.data_dir / "peek.db").is_file()
    assert list((peek_up.data_dir / "images" / "originals").rglob("*.png"))


def test_no_accepted_upload_is_lost_after_kill_9_of_everything(peek_up: PeekUp, corpus: Path) -> None:
    peek_up.start()
    with httpx.Client(base_url=peek_up.url, timeout=30) as http:
        accepted = []
        for name in UPLOADS:
            response = http.post("/api/analyze", files={"image": (name, (corpus / name).read_bytes())})
            assert response.status_code == 202, response.text
            accepted.append(response.json()["id"])
    # Everything dies at once, mid-flight: API, workers, sink and the memory-only broker.
    peek_up.kill_everything()
    db = sqlite3.connect(peek_up.data_dir / "peek.db")
    unfinished = db.execute("SELECT count(*) FROM images WHERE status = 'processing'").fetchone()[0]
    db.close()
    assert unfinished > 0, "the kill came too late to test anything: every image had finished"

    peek_up.start()
    with httpx.Client(base_url=peek_up.url, timeout=30) as http:
        finals = [wait_final(http, image_id, timeout_s=180) for image_id in accepted]
    assert all(result["status"] == "completed" for result in finals), finals
    db = sqlite3.connect(peek_up.data_dir / "peek.db")
    rows = db.execute("SELECT image_id, count(*) FROM analysis_results GROUP BY image_id").fetchall()
    db.close()
    assert sorted(image_id for image_id, _ in rows) == sorted(accepted)
    assert all(count == 5 for _, count in rows), "each analyzer's result is stored exactly once per image"


def test_the_embedded_broker_is_restarted_when_it_dies(peek_up: PeekUp, corpus: Path) -> None:
    peek_up.start()
    assert peek_up.process is not None
    up_pid = peek_up.process.pid
    with httpx.Client(base_url=peek_up.url, timeout=30) as http:

        def upload(name: str) -> httpx.Response:
            return http.post("/api/analyze", files={"image": (name, (corpus / name).read_bytes())})

        assert wait_final(http, upload("apple.jpg").json()["id"])["status"] == "completed"
        in_flight = upload("notes.png").json()["id"]
        old = _broker_pid(up_pid)
        assert old is not None
        os.kill(old, signal.SIGKILL)
        new = wait_for(lambda: _broker_pid(up_pid) not in (None, old), 30, "peek up to start a new broker")
        assert new
        # The clients reconnect to the same address; the new broker starts empty, and what the old
        # one held is re-emitted by the sink.
        wait_for(lambda: http.get("/api/health").status_code == 200, 60, "health to see the broker")
        after = wait_for(lambda: (r := upload("orange.jpg")).status_code == 202 and r, 60, "an upload", 1.0)
        for image_id in (in_flight, after.json()["id"]):
            assert wait_final(http, image_id, timeout_s=180)["status"] == "completed"
    log = (peek_up.data_dir.parent / f"{peek_up.data_dir.name}-up.log").read_text()
    assert "the embedded broker exited" in log


def test_after_a_broker_restart_no_event_is_skipped_for_positions_in_the_old_one(
    peek_up: PeekUp, corpus: Path
) -> None:
    """The new broker's partitions start again at offset 0. Workers and a sink carrying on from
    their positions in the old one (with offsets still to commit when it died) skip its first
    events, and the reconciler, reading those offsets, re-emits them as lost, again and again while
    the partitions are shorter than they were."""
    peek_up.start()
    assert peek_up.process is not None
    up_pid = peek_up.process.pid
    with httpx.Client(base_url=peek_up.url, timeout=30) as http:

        def upload(name: str) -> int:
            return _accepted_upload(http, corpus / name, reanalyze=True)

        # Positions well into the old broker's partitions, then images in flight when it dies.
        done = [upload(name) for name in UPLOADS * 2]
        for image_id in done:
            assert wait_final(http, image_id, timeout_s=180)["status"] == "completed"
        in_flight = [upload(name) for name in UPLOADS * 2]
        old_broker, old_sink = _broker_pid(up_pid), _sink_pid(up_pid)
        assert old_broker is not None and old_sink is not None
        # Killed once the workers are at them: analysed, their offsets yet to be committed.
        wait_for(lambda: _results_of(peek_up, in_flight) > 0, 60, "a result of the images in flight", 0.05)
        os.kill(old_broker, signal.SIGKILL)
        wait_for(lambda: _broker_pid(up_pid) not in (None, old_broker), 30, "peek up to start a new broker")
        # The sink (like the workers) runs again once the new broker has its topics.
        wait_for(lambda: _sink_pid(up_pid) not in (None, old_sink), 60, "peek up to start the sink again")
        after = [upload(name) for name in UPLOADS[:8]]
        finals = [wait_final(http, image_id, timeout_s=180) for image_id in in_flight + after]
    assert all(result["status"] == "completed" for result in finals), finals
    db = sqlite3.connect(peek_up.data_dir / "peek.db")
    attempts = dict(db.execute("SELECT id, emit_attempts FROM images").fetchall())
    db.close()
    # Re-emitted once at most, by the sink starting beside the new broker; none by the reconciler.
    again = {image_id: attempts[image_id] for image_id in done + in_flight if attempts[image_id] > 1}
    assert not again, f"re-emitted by the reconciler too: {again}"
    sent_once = {image_id: attempts[image_id] for image_id in after if attempts[image_id]}
    assert not sent_once, f"sent to the new broker and still re-emitted: {sent_once}"


def test_a_sink_restarted_beside_the_same_broker_re_emits_nothing_it_still_holds(
    peek_up: PeekUp, corpus: Path
) -> None:
    peek_up.start()
    assert peek_up.process is not None
    up_pid = peek_up.process.pid
    with httpx.Client(base_url=peek_up.url, timeout=30) as http:

        def upload(name: str) -> int:
            return _accepted_upload(http, corpus / name)

        assert wait_final(http, upload("apple.jpg"))["status"] == "completed"
        old = _sink_pid(up_pid)
        assert old is not None
        os.kill(old, signal.SIGKILL)
        # Uploaded while no sink runs: unfinished when the new sink starts, their events in the broker.
        waiting = [upload(name) for name in UPLOADS[1:7]]
        db = sqlite3.connect(peek_up.data_dir / "peek.db")
        unfinished = db.execute("SELECT count(*) FROM images WHERE status = 'processing'").fetchone()[0]
        db.close()
        assert unfinished == len(waiting)
        wait_for(lambda: _sink_pid(up_pid) not in (None, old), 60, "peek up to restart the sink")
        finals = [wait_final(http, image_id, timeout_s=180) for image_id in waiting]
    assert all(result["status"] == "completed" for result in finals), finals
    db = sqlite3.connect(peek_up.data_dir / "peek.db")
    attempts = db.execute("SELECT id, emit_attempts FROM images ORDER BY id").fetchall()
    db.close()
    assert all(count == 0 for _, count in attempts), f"re-emitted though the broker kept them: {attempts}"
