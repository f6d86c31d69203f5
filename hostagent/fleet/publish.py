"""The fleet's state for others: a static HTML status page with JSON beside it, and Prometheus
metrics (a textfile, or ``/metrics`` served by ``fleet watch``)."""

from __future__ import annotations

import datetime as dt
import html
import json
from pathlib import Path
from typing import Any

from hostagent.output import write_atomic

STATUS_ORDER = ("MAINTENANCE OVERRUN", "UNREACHABLE", "CRITICAL", "UNKNOWN", "WARNING", "MAINTENANCE", "INFO", "OK")
COLOURS = {"OK": "#1a7f37", "INFO": "#1a7f37", "WARNING": "#9a6700", "UNKNOWN": "#8250df", "CRITICAL": "#cf222e",
           "UNREACHABLE": "#cf222e", "MAINTENANCE": "#0969da", "MAINTENANCE OVERRUN": "#cf222e"}


def _known(status: str | None) -> str:
    """A status this page knows; anything else a host reports is shown as UNKNOWN."""
    return status if status in STATUS_ORDER else "UNKNOWN"


def _when(timestamp: float | None) -> str:
    if timestamp is None:
        return "never"
    return dt.datetime.fromtimestamp(timestamp, dt.UTC).strftime("%Y-%m-%d %H:%M UTC")


def _host_row(row: dict[str, Any]) -> str:
    """A host's table row; one whose stored data cannot be shown says so instead of breaking the page."""
    status = _known(row["status"])
    try:
        problems = "; ".join(html.escape(f"{f.get('code')}: {f.get('summary')}") for f in row["findings"]
                             if f.get("severity") not in ("OK", "INFO"))
        detail = html.escape(str(row["error"])) if row["error"] else problems
        cells = (f'<td>{row["open_findings"]}</td><td>{html.escape(str(row["last_seen_ago"]))}</td>'
                 f'<td>{html.escape(str(row["version"] or "-"))}</td><td>{detail}</td>')
    except (AttributeError, KeyError, TypeError) as err:
        status = "UNKNOWN"
        cells = f'<td>-</td><td>-</td><td>-</td><td>cannot show this host: {html.escape(type(err).__name__)}</td>'
    return (f'<tr class="host" data-host="{html.escape(str(row["host"]))}" data-status="{status}">'
            f'<td>{html.escape(str(row["host"]))}</td><td class="status" style="color:{COLOURS[status]}">'
            f'{status}</td>{cells}</tr>')


def page(rows: list[dict[str, Any]], now: float, title: str = "Fleet status") -> str:
    """One self-contained HTML page: worst state first, then every host, then planned maintenance."""
    counts = {state: sum(1 for r in rows if _known(r["status"]) == state) for state in STATUS_ORDER}
    worst = next((s for s in STATUS_ORDER if counts[s]), "OK")
    summary = ", ".join(f"{n} {s.lower()}" for s, n in counts.items() if n)
    body = [_host_row(row) for row in sorted(rows, key=lambda r: (STATUS_ORDER.index(_known(r["status"])),
                                                                    str(r["host"])))]
    planned = [r for r in rows if r["maintenance"]]

    def cell(row: dict[str, Any], key: str) -> str:  # the host's own words: shown escaped, whatever they are
        return html.escape(str(row["maintenance"].get(key, "-")))

    def guests(row: dict[str, Any]) -> int:
        listed = row["maintenance"].get("guests")
        return len(listed) if isinstance(listed, (list, dict)) else 0

    maintenance = "".join(
        f'<tr class="maintenance"><td>{html.escape(str(r["host"]))}</td><td>{cell(r, "phase")}</td>'
        f'<td>{cell(r, "reboot_at")}</td><td>{cell(r, "reason")}</td>'
        f'<td>{guests(r)}</td></tr>' for r in planned) or \
        '<tr><td colspan="5">No maintenance planned.</td></tr>'
    return f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><meta http-equiv="refresh" content="60">
<title>{html.escape(title)}: {worst}</title>
<style>
body {{ font-family: system-ui, sans-serif; margin: 2em; color: #1f2328; }}
table {{ border-collapse: collapse; margin-bottom: 2em; }}
td, th {{ border-bottom: 1px solid #d0d7de; padding: 0.3em 0.8em; text-align: left; vertical-align: top; }}
.status {{ font-weight: bold; }}
#overall {{ color: {COLOURS[worst]}; }}
</style></head><body>
<h1>{html.escape(title)}: <span id="overall">{worst}</span></h1>
<p>{len(rows)} hosts: {html.escape(summary or "none")}. Updated {_when(now)}.</p>
<h2>Hosts</h2>
<table id="hosts"><tr><th>host</th><th>status</th><th>open</th><th>last seen</th><th>agent</th><th>problems</th></tr>
{"".join(body)}
</table>
<h2>Planned maintenance</h2>
<table id="maintenance"><tr><th>host</th><th>phase</th><th>reboot at</th><th>reason</th><th>guests</th></tr>
{maintenance}
</table>
<p>Machine-readable: <a href="fleet.json">fleet.json</a></p>
</body></html>
"""


def write_page(directory: str, rows: list[dict[str, Any]], now: float) -> list[Path]:
    out = Path(directory)
    out.mkdir(parents=True, exist_ok=True)
    document = {"schema": "hostagent.fleet/1", "generated_at": now, "hosts": rows}
    write_atomic(out / "fleet.json", json.dumps(document, indent=2) + "\n")
    write_atomic(out / "index.html", page(rows, now))
    return [out / "index.html", out / "fleet.json"]


def label_value(state: str) -> str:
    """A status or severity as a label value: lower case, as the agent's own metrics have them."""
    return state.lower().replace(" ", "_")


def _label(value: str) -> str:
    return value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


def metrics(rows: list[dict[str, Any]], now: float) -> str:
    """Prometheus text format: one series set per host, for Alertmanager beyond one controller."""
    lines = ["# HELP hostagent_fleet_host_up 1 when the last poll of the host succeeded.",
             "# TYPE hostagent_fleet_host_up gauge"]
    lines += [f'hostagent_fleet_host_up{{host="{_label(r["host"])}"}} {1 if r["reachable"] else 0}' for r in rows]
    lines += ["# HELP hostagent_fleet_host_status 1 for the host's worst status (unreachable: cannot be polled).",
              "# TYPE hostagent_fleet_host_status gauge"]
    for row in rows:
        for state in STATUS_ORDER:
            value = 1 if _known(row["status"]) == state else 0
            lines.append(f'hostagent_fleet_host_status{{host="{_label(row["host"])}",status="{label_value(state)}"}} '
                         f"{value}")
    lines += ["# HELP hostagent_fleet_open_findings Findings in the host's last report by severity (info is a note, "
              "not a problem).", "# TYPE hostagent_fleet_open_findings gauge"]
    for row in rows:
        findings = row["findings"] if isinstance(row["findings"], list) else []
        for severity in ("CRITICAL", "UNKNOWN", "WARNING", "INFO"):
            count = sum(1 for f in findings if isinstance(f, dict) and f.get("severity") == severity)
            lines.append(f'hostagent_fleet_open_findings{{host="{_label(row["host"])}",'
                         f'severity="{label_value(severity)}"}} {count}')
    lines += ["# HELP hostagent_fleet_last_seen_timestamp_seconds When the host last answered a poll.",
              "# TYPE hostagent_fleet_last_seen_timestamp_seconds gauge"]
    lines += [f'hostagent_fleet_last_seen_timestamp_seconds{{host="{_label(r["host"])}"}} {r["last_seen"]:.3f}'
              for r in rows if r["last_seen"] is not None]
    lines += ["# HELP hostagent_fleet_maintenance_planned 1 while a maintenance is planned or running on the host.",
              "# TYPE hostagent_fleet_maintenance_planned gauge"]
    lines += [f'hostagent_fleet_maintenance_planned{{host="{_label(r["host"])}"}} {1 if r["maintenance"] else 0}'
              for r in rows]
    lines += ["# HELP hostagent_fleet_generated_timestamp_seconds When this was written.",
              "# TYPE hostagent_fleet_generated_timestamp_seconds gauge",
              f"hostagent_fleet_generated_timestamp_seconds {now:.3f}"]
    return "\n".join(lines) + "\n"
