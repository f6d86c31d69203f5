"""``hostagent collect``: a snapshot of everything the enabled checks read (the support bundle).

The checks run against a recording Host, so whatever they read lands in the snapshot and
``hostagent check --root DIR`` reproduces the same findings offline.
"""

from __future__ import annotations

import datetime as dt
import json
from pathlib import Path

from hostagent import __version__
from hostagent.config import Config
from hostagent.errors import HostagentError
from hostagent.host import Host
from hostagent.model import Report
from hostagent.runner import run_checks

SNAPSHOT_SCHEMA = "hostagent.snapshot/1"
META_FILE = "_meta.json"


def collect(out: str, config: Config, root: str = "/") -> Report:
    target = Path(out)
    if target.exists() and (not target.is_dir() or any(target.iterdir())):
        raise HostagentError(f"{out} exists and is not an empty directory; choose a new --out")
    try:
        target.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise HostagentError(f"cannot create {out}: {err.strerror or err}") from None
    host = Host(root, record_to=target, command_timeout=config.agent.command_timeout)
    report = run_checks(host, config)
    meta = {
        "schema": SNAPSHOT_SCHEMA,
        "collected_at": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "hostname": report.hostname,
        "source_root": str(host.root),
        "hostagent_version": __version__,
        "checks": [r.name for r in report.results],
        "status": report.status.name,
    }
    (target / META_FILE).write_text(json.dumps(meta, indent=2) + "\n")
    return report
