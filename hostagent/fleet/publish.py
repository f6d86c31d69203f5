"""The fleet's state for others: a static HTML status page with JSON beside it, and Prometheus
metrics (a textfile, or ``/metrics`` served by ``fleet watch``)."""

from __future__ import annotations

import datetime as dt
import json
import math
from pathlib import Path
from typing import Any

from hostagent.errors import HostagentError
from hostagent.output import write_atomic

STATUS_ORDER = ("MAINTENANCE OVERRUN", "UNREACHABLE", "CRITICAL", "UNKNOWN", "WARNING", "MAINTENANCE", "INFO", "OK")
COLOURS = {"OK": "#1a7f37", "INFO": "#1a7f37", "WARNING": "#9a6700", "UNKNOWN": "#8250df", "CRITICAL": "#cf222e",
           "UNREACHABLE": "#cf222e", "MAINTENANCE": "#0969da", "MAINTENANCE OVERRUN": "#cf222e"}


def _known(status: str | None) -> str:
    """A status this page knows; anything else a host reports is shown as UNKNOWN."""
    return status if status in STATUS_ORDER else "UNKNOWN"


TIMELINE_CELLS = 60
FINAL_PHASES = ("done", "failed", "cancelled", "missed")
TEMPLATE = Path(__file__).resolve().parent.parent / "data" / "fleet-page.html.j2"


def local_time(timestamp: float) -> str:
    """This controller's local time, with its zone: what a reader of the page lives in."""
    return dt.datetime.fromtimestamp(timestamp).astimezone().strftime("%Y-%m-%d %H:%M %Z")


def _duration(seconds: float) -> str:
    """A span a host reported, for the page: never raises, never negative (a host's reply is not trusted)."""
    if not math.isfinite(seconds) or not 0 <= seconds <= 100 * 365 * 86400:
        return "unknown"
    seconds = round(seconds)
    if seconds < 120:
        return f"{seconds} s"
    if seconds < 7200:
        return f"{seconds // 60} min {seconds % 60} s"
    return f"{seconds / 3600:.1f} h"


def timeline(history: list[tuple[float, str]], now: float, span: float) -> list[dict[str, Any]]:
    """TIMELINE_CELLS equal slices of ``span`` up to ``now``, each the worst status reported in it."""
    width = span / TIMELINE_CELLS
    slices: list[list[str]] = [[] for _ in range(TIMELINE_CELLS)]
    for at, status in history:
        index = int((at - (now - span)) // width)
        if 0 <= index < TIMELINE_CELLS:
            slices[index].append(_known(status))
    cells = []
    for index, seen in enumerate(slices):
        worst = min(seen, key=STATUS_ORDER.index) if seen else None
        cells.append({"status": worst, "title": f"from {local_time(now - span + index * width)}: "
                                                 f"{worst or 'no report'}"})
    return cells


def bars(report: dict[str, Any] | None, active: dict[str, Any] | None) -> list[dict[str, Any]]:
    """Progress bars: each array's resync or rebuild, each disk's running self-test, the guests a
    maintenance is saving."""
    found: list[dict[str, Any]] = []
    inventory = (report or {}).get("inventory")
    for array in (inventory.get("arrays") or [] if isinstance(inventory, dict) else []):
        sync = array.get("sync") if isinstance(array, dict) else None
        if not isinstance(sync, dict) or sync.get("action") in (None, "idle", "frozen") \
                or not isinstance(sync.get("progress"), (int, float)):
            continue
        eta = sync.get("eta_s")
        found.append({"kind": "resync", "label": f"{array.get('name')} {sync['action']}",
                      "percent": max(0.0, min(100.0, 100 * sync["progress"])),
                      "detail": f"about {_duration(eta)} left" if isinstance(eta, (int, float)) else ""})
    for check in (report or {}).get("checks") or []:
        readings = check.get("readings") if isinstance(check, dict) and check.get("name") == "smart" else None
        for disk, values in sorted((readings or {}).items()):
            done = values.get("selftest_percent_done") if isinstance(values, dict) else None
            if isinstance(done, (int, float)):
                found.append({"kind": "selftest", "label": f"{disk} self-test", "percent": float(done), "detail": ""})
    guests = (active or {}).get("guests") if isinstance(active, dict) else None
    if (active or {}).get("phase") == "saving" and isinstance(guests, dict) and guests:
        saved = sum(1 for g in guests.values() if isinstance(g, dict)
                    and g.get("state") in ("saved", "save_failed", "shut_down", "skipped", "stopped"))
        found.append({"kind": "save", "label": "saving guests", "percent": 100 * saved / len(guests),
                      "detail": f"{saved} of {len(guests)}"})
    return found


def recent_maintenances(summary: dict[str, Any] | None, limit: int = 3) -> list[dict[str, Any]]:
    """The host's last finished maintenances, newest first, with each guest's downtime."""
    rows = [r for r in ((summary or {}).get("recent") or []) if isinstance(r, dict) and r.get("phase") in FINAL_PHASES]
    found = []
    for row in reversed(rows[-limit:]):
        guests = []
        for name, guest in sorted((row.get("guests") or {}).items()):
            downtime = guest.get("downtime_s") if isinstance(guest, dict) else None
            outcome = guest.get("outcome") if isinstance(guest, dict) else None
            guests.append({"name": name, "downtime": _duration(downtime) if isinstance(downtime, (int, float))
                           else f"({outcome or 'no downtime measured'})"})
        found.append({"id": row.get("id"), "phase": row.get("phase"), "reason": row.get("reason") or "",
                      "reboot_local": _iso_local(row.get("reboot_at_utc")), "guests": guests})
    return found


def _iso_local(text: Any) -> str:
    try:
        return local_time(dt.datetime.fromisoformat(str(text)).timestamp())
    except ValueError:
        return str(text)


def host_view(row: dict[str, Any], history: list[tuple[float, str]], report: dict[str, Any] | None,
              summary: dict[str, Any] | None, now: float, span: float) -> dict[str, Any]:
    """What the page draws for one host; a host whose stored data cannot be shown says so."""
    status = _known(row["status"])
    view: dict[str, Any] = {"name": str(row["host"]), "status": status, "stale": status == "UNREACHABLE",
                            "timeline": timeline(history, now, span), "bars": [], "problems": [], "recent": [],
                            "maintenance": None, "version": row.get("version"), "error": row.get("error") or "",
                            "last_seen_local": "never", "last_seen_ago": "", "last_known": "none",
                            "last_attempt_local": "never"}
    try:
        last_seen = row.get("last_seen")
        view["last_seen_local"] = local_time(last_seen) if last_seen else "never"
        view["last_seen_ago"] = row.get("last_seen_ago")
        view["last_known"] = _known(row.get("last_known_status")) if row.get("last_known_status") else "none"
        view["last_attempt_local"] = local_time(row["last_attempt"]) if row.get("last_attempt") else "never"
        view["problems"] = [f"{f.get('code')}: {f.get('summary')}" for f in row["findings"]
                            if f.get("severity") not in ("OK", "INFO")]
        view["bars"] = bars(report, row.get("maintenance"))
        view["recent"] = recent_maintenances(summary)
        active = row.get("maintenance")
        if isinstance(active, dict):
            view["maintenance"] = {"phase": active.get("phase"), "reason": active.get("reason"),
                                   "reboot_local": _iso_local(active.get("reboot_at_utc"))}
    except (AttributeError, KeyError, TypeError, ValueError) as err:
        view.update(status="UNKNOWN", problems=[f"cannot show this host: {type(err).__name__}"], bars=[], recent=[])
    return view


def page(rows: list[dict[str, Any]], now: float, title: str = "Fleet status", span: float = 30 * 86400.0,
         extra: dict[str, dict[str, Any]] | None = None) -> str:
    """The status page: hosts by inventory group, worst first, each with its history, progress and
    recent maintenances.  ``extra``: per host, its ``history``, last ``report`` and maintenance
    ``summary`` from the store."""
    try:
        import jinja2
    except ImportError:
        raise HostagentError("the status page needs jinja2: install hostagent[controller]") from None

    extra = extra or {}
    counts = {state: sum(1 for r in rows if _known(r["status"]) == state) for state in STATUS_ORDER}
    worst = next((s for s in STATUS_ORDER if counts[s]), "OK")
    views = {str(r["host"]): host_view(r, extra.get(str(r["host"]), {}).get("history", []),
                                       extra.get(str(r["host"]), {}).get("report"),
                                       extra.get(str(r["host"]), {}).get("summary"), now, span) for r in rows}
    groups: dict[str, list[dict[str, Any]]] = {}
    for row in rows:
        for group in (row.get("groups") or ["ungrouped"]):
            groups.setdefault(str(group), []).append(views[str(row["host"])])
    def rank(view: dict[str, Any]) -> tuple[int, str]:
        return STATUS_ORDER.index(view["status"]), view["name"]

    ordered: list[dict[str, Any]] = []
    for name in sorted(groups, key=lambda g: (g == "ungrouped", g)):  # the hosts without a group last
        ordered.append({"name": name, "hosts": sorted(groups[name], key=rank)})
    environment = jinja2.Environment(autoescape=True, undefined=jinja2.StrictUndefined, trim_blocks=True,
                                     lstrip_blocks=True)
    template = environment.from_string(TEMPLATE.read_text())
    days = span / 86400
    return template.render(
        title=title, worst=worst, colours=COLOURS, hosts=rows, groups=ordered, legend=STATUS_ORDER[1:],
        summary=", ".join(f"{n} {s.lower()}" for s, n in counts.items() if n),
        now_iso=dt.datetime.fromtimestamp(now, dt.UTC).isoformat(timespec="seconds"), now_local=local_time(now),
        zone=dt.datetime.fromtimestamp(now).astimezone().strftime("%Z, UTC%z"),
        span_text=f"{days:g} days" if days >= 2 else f"{span / 3600:g} hours")


def write_page(directory: str, rows: list[dict[str, Any]], now: float,
               extra: dict[str, dict[str, Any]] | None = None, span: float = 30 * 86400.0) -> list[Path]:
    out = Path(directory)
    out.mkdir(parents=True, exist_ok=True)
    document = {"schema": "hostagent.fleet/1", "generated_at": now, "hosts": rows}
    write_atomic(out / "fleet.json", json.dumps(document, indent=2) + "\n")
    write_atomic(out / "index.html", page(rows, now, span=span, extra=extra))
    return [out / "index.html", out / "fleet.json"]


def page_extra(store: Any, rows: list[dict[str, Any]], now: float, span: float) -> dict[str, dict[str, Any]]:
    """Per host, what the page draws beyond its status row: the kept history, the last report and
    the maintenance summary the host last gave."""
    states = {s.name: s for s in store.hosts()}
    found: dict[str, dict[str, Any]] = {}
    for row in rows:
        name = str(row["host"])
        state = states.get(name)
        summary = (state.maintenance or {}).get("maintenance") if state is not None else None
        found[name] = {"history": store.history_since(name, now - span), "report": store.latest_report(name),
                       "summary": summary if isinstance(summary, dict) else None}
    return found


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
