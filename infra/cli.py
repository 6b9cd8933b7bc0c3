"""The ``peek`` command: run the whole system, one part of it, or the analyzers on local files."""

from __future__ import annotations

import argparse
import json
import logging
import os
import shutil
import sys
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any

from infra.settings import ALL_ANALYZERS, Settings, get_settings

if TYPE_CHECKING:
    import faust


def _log_setup(level: str) -> None:
    logging.basicConfig(
        level=getattr(logging, level.upper(), logging.INFO),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )


def cmd_api(args: argparse.Namespace) -> int:
    import uvicorn

    settings = get_settings()
    _require_broker(settings, wait=False)
    options: dict[str, Any] = {
        "host": args.host,
        "port": args.port,
        "log_level": os.environ.get("PEEK_LOG_LEVEL", "info").lower(),
        "access_log": os.environ.get("PEEK_ACCESS_LOG", "0") == "1",
        "timeout_keep_alive": 30,
        "limit_concurrency": int(os.environ.get("PEEK_API_MAX_CONNECTIONS", "1000")),
    }
    if settings.api_workers <= 1:
        from ingest_api.app import create_app

        uvicorn.run(create_app(settings), **options)
        return 0

    from sink.db import make_engine, migrate

    # Once here, before the workers start together: two alembic runs on a new SQLite file would
    # race; each worker's own migrate then finds the schema current.
    engine = make_engine(settings.effective_database_url)
    migrate(engine)
    engine.dispose()
    with _multiprocess_metrics_dir():
        # Several processes need the app as an import string. uvicorn SIGKILLs a worker that misses
        # its health check, dropping that worker's connections; its 5 s default can be missed on a
        # saturated 2-core machine, and a worker that is truly hung is still replaced after 30 s.
        uvicorn.run(
            "ingest_api.app:create_app",
            factory=True,
            workers=settings.api_workers,
            timeout_worker_healthcheck=30,
            # Workers stop within 10 s of SIGTERM (long polls cut short), so that the parent is
            # gone before `peek up` would SIGKILL it and leave its workers holding the port.
            timeout_graceful_shutdown=10,
            **options,
        )
    return 0


@contextmanager
def _multiprocess_metrics_dir() -> Iterator[Path]:
    """A fresh, empty folder where every API process writes its metrics (prometheus_client's
    multiprocess mode), named in PROMETHEUS_MULTIPROC_DIR for the workers before they import
    prometheus_client; removed at exit. A folder already named there is emptied and kept."""
    given = os.environ.get("PROMETHEUS_MULTIPROC_DIR")
    if given:
        folder = Path(given)
        folder.mkdir(parents=True, exist_ok=True)
        for stale in folder.glob("*.db"):  # an earlier run's numbers would add to this run's
            stale.unlink()
        yield folder
        return
    folder = Path(tempfile.mkdtemp(prefix="peek-api-metrics-"))
    os.environ["PROMETHEUS_MULTIPROC_DIR"] = str(folder)
    try:
        yield folder
    finally:
        os.environ.pop("PROMETHEUS_MULTIPROC_DIR", None)
        shutil.rmtree(folder, ignore_errors=True)


def _use_uvloop() -> None:
    """Faust apps run on uvloop: the workers and the sink spend most of their own CPU in the event
    loop (Kafka requests, futures, callbacks), which uvloop runs in C. Set before any app exists."""
    import mode.loop

    try:
        mode.loop.use("uvloop")
    except ImportError:  # no uvloop on this platform (Windows): asyncio's own loop works too
        logging.getLogger("peek").info("uvloop is not installed; the Faust apps run on asyncio's loop")


def _run_faust(app: faust.App) -> int:
    import faust

    worker = faust.Worker(app, loglevel=os.environ.get("PEEK_FAUST_LOG_LEVEL", "warning"), quiet=True)
    worker.execute_from_commandline()
    return 0


def _parse_analyzers(value: str) -> list[str]:
    names = [name.strip() for name in value.split(",") if name.strip()]
    unknown = [name for name in names if name not in ALL_ANALYZERS]
    if unknown or not names:
        raise argparse.ArgumentTypeError(
            f"unknown analyzer(s) {', '.join(unknown) or '(none)'}; choose from {', '.join(ALL_ANALYZERS)}"
        )
    return names


def cmd_worker(args: argparse.Namespace) -> int:
    settings = get_settings()
    _require_broker(settings)
    if len(args.analyzers) == 1:
        from stream_workers.app import build_worker_app

        _use_uvloop()
        return _run_faust(build_worker_app(args.analyzers[0], settings))
    from infra.supervisor import ProcessSpec, Supervisor

    # One metrics port per process: PEEK_METRICS_PORT, PEEK_METRICS_PORT + 1, ...
    specs = [
        ProcessSpec(
            f"worker-{name}",
            ["worker", "--analyzers", name],
            {"PEEK_METRICS_PORT": str(settings.metrics_port + index)} if settings.metrics_port else {},
        )
        for index, name in enumerate(args.analyzers)
    ]
    return Supervisor(specs).run()


def cmd_sink(_args: argparse.Namespace) -> int:
    settings = get_settings()
    _require_broker(settings)
    from sink.app import build_sink_app

    _use_uvloop()
    return _run_faust(build_sink_app(settings))


def _require_broker(settings: Settings, *, wait: bool = True) -> None:
    """Exit with a clear message without a broker; otherwise make sure Peek's topics exist.

    Workers and the sink wait for an unreachable broker (they are useless without it); the API
    starts anyway, serves reads, and answers uploads with 503 until the broker is back.
    """
    if not settings.kafka_bootstrap_servers:
        sys.exit("peek: KAFKA_BOOTSTRAP_SERVERS is not set (or use `peek up`, which starts a broker)")
    import time

    from confluent_kafka import KafkaException

    from infra.kafka import ensure_topics

    log = logging.getLogger("peek")
    while True:
        try:
            ensure_topics(settings.kafka_bootstrap_servers, settings.topic_partitions, timeout_s=10)
            return
        except KafkaException as exc:
            if not wait:
                log.warning(
                    "broker %s unreachable (%s); starting anyway", settings.kafka_bootstrap_servers, exc
                )
                return
            log.warning("waiting for the broker at %s: %s", settings.kafka_bootstrap_servers, exc)
            time.sleep(2)


def cmd_up(args: argparse.Namespace) -> int:
    from infra.supervisor import run_everything

    return run_everything(
        host=args.host, port=args.port, data_dir=Path(args.data_dir) if args.data_dir else None
    )


def cmd_analyze(args: argparse.Namespace) -> int:
    from stream_workers.analyzers import analyze_all
    from stream_workers.decode import DecodeError, decode_image

    failures = 0
    for name in args.files:
        path = Path(name)
        try:
            image = decode_image(path.read_bytes())
            record = {"file": str(path), **analyze_all(image)}
        except (OSError, DecodeError) as exc:
            failures += 1
            record = {"file": str(path), "error": str(exc)}
        print(json.dumps(record, ensure_ascii=False), flush=True)
    return 1 if failures else 0


def cmd_ingest(args: argparse.Namespace) -> int:
    from infra.ingest_client import run_ingest

    return run_ingest(args)


def _rate(value: str) -> int:
    """``N`` or ``N/min``: requests per minute."""
    number = value.strip().lower().removesuffix("/min").removesuffix("/m")
    if not number.isdigit() or int(number) < 1:
        raise argparse.ArgumentTypeError(f"rate must look like 120/min, not {value!r}")
    return int(number)


def cmd_keys(args: argparse.Namespace) -> int:
    from infra.keys import create_key, describe, list_keys, revoke_key
    from sink.db import make_engine, make_sessionmaker, migrate

    logging.getLogger("alembic").setLevel(logging.WARNING)
    engine = make_engine(get_settings().effective_database_url)
    migrate(engine)
    sessions = make_sessionmaker(engine)
    with sessions.begin() as session:
        if args.action == "create":
            row, secret = create_key(session, args.name, args.rate)
            print(json.dumps({**describe(row), "key": secret}))
            print("Keep the key now: Peek stores only its hash and cannot show it again.", file=sys.stderr)
        elif args.action == "list":
            for row in list_keys(session):
                print(json.dumps(describe(row)))
        else:
            revoked = revoke_key(session, args.id)
            if revoked is None:
                print(f"peek: no API key with id {args.id}", file=sys.stderr)
                return 1
            print(json.dumps(describe(revoked)))
    engine.dispose()
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="peek", description="Peek: image insights on a Kafka pipeline.")
    commands = parser.add_subparsers(dest="command", required=True)

    up = commands.add_parser("up", help="run everything on this machine (embedded defaults)")
    up.add_argument("--host", default="127.0.0.1")
    up.add_argument("--port", type=int, default=8000)
    up.add_argument("--data-dir", default=None, help="folder for the database, images and logs")
    up.set_defaults(func=cmd_up)

    api = commands.add_parser("api", help="run the HTTP API")
    api.add_argument("--host", default="127.0.0.1")
    api.add_argument("--port", type=int, default=8000)
    api.set_defaults(func=cmd_api)

    worker = commands.add_parser("worker", help="run analyzer workers")
    worker.add_argument(
        "--analyzers",
        type=_parse_analyzers,
        default=list(ALL_ANALYZERS),
        help=f"comma-separated, from: {','.join(ALL_ANALYZERS)}",
    )
    worker.set_defaults(func=cmd_worker)

    sink = commands.add_parser("sink", help="run the aggregator")
    sink.set_defaults(func=cmd_sink)

    analyze = commands.add_parser("analyze", help="analyse local files; one JSON object per file")
    analyze.add_argument("files", nargs="+")
    analyze.set_defaults(func=cmd_analyze)

    ingest = commands.add_parser("ingest", help="bulk upload folders (or an s3:// prefix)")
    ingest.add_argument("paths", nargs="+")
    ingest.add_argument("--api", default="http://127.0.0.1:8000")
    ingest.add_argument("--concurrency", type=int, default=4, help="requests in flight")
    ingest.add_argument("--batch-size", type=int, default=16, help="files per request")
    ingest.add_argument("--wait", action="store_true", help="follow results to the end and summarise")
    ingest.add_argument(
        "--wait-timeout", type=float, default=24 * 3600, help="seconds --wait follows results"
    )
    ingest.add_argument(
        "--manifest",
        default=None,
        help="file -> id manifest, resumed by the next run (default ./peek-ingest-manifest.jsonl)",
    )
    ingest.add_argument("--reanalyze", action="store_true", help="analyse again what Peek has seen")
    ingest.add_argument(
        "--retry-for", type=float, default=600, help="seconds to keep retrying an unreachable API"
    )
    ingest.add_argument("--quiet", action="store_true", help="no progress bars")
    ingest.set_defaults(func=cmd_ingest)

    keys = commands.add_parser("keys", help="create, list and revoke API keys")
    key_actions = keys.add_subparsers(dest="action", required=True)
    create = key_actions.add_parser("create", help="make a key (printed once) for a client")
    create.add_argument("name")
    create.add_argument("--rate", type=_rate, default=None, help="requests per minute, e.g. 120/min")
    key_actions.add_parser("list", help="every key, without secrets")
    revoke = key_actions.add_parser("revoke", help="stop a key from working")
    revoke.add_argument("id", type=int)
    keys.set_defaults(func=cmd_keys)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    _log_setup(os.environ.get("PEEK_LOG_LEVEL", "info"))
    return int(args.func(args) or 0)


if __name__ == "__main__":
    sys.exit(main())
