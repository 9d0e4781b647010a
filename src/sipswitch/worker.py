"""Entry point of a worker process (``python -m sipswitch.worker``), started by the primary
process of a server with ``[sip] workers`` > 1, which writes the worker's part
(``pbx.workers.WorkerSpec``, JSON) on its standard input. Not a command for people."""

from __future__ import annotations

import asyncio
import logging
import sys

from .app import serve_worker
from .cli.main import _loop_factory
from .config.settings import Settings
from .pbx.workers import WorkerSpec, die_with_parent


def main() -> int:
    spec = WorkerSpec.from_json(sys.stdin.read())
    die_with_parent(spec.parent)
    settings = Settings.model_validate_json(spec.settings)
    logging.basicConfig(
        level=settings.log.level.upper(),
        format=f"%(asctime)s %(levelname)s [worker {spec.index}] %(name)s: %(message)s",
    )
    try:
        with asyncio.Runner(loop_factory=_loop_factory()) as runner:
            return runner.run(serve_worker(spec))
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
