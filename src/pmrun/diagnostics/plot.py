"""Draw a ``pmrun --record`` recording so that one picture tells the incident.

Memory over time, as pmrun counts it (anonymous + shmem + swap, the measure the limits
apply to, named on the axis): one line per process (the biggest :data:`MAX_PROCESS_LINES`, the rest summed
into one), the tree's total thicker on top, the ``--warn-rss`` and ``--max-rss`` limits as
labelled horizontal lines, and a labelled vertical marker wherever something happened
(warning, eviction, stop, kill, exit). The title says what ran and how it ended.

matplotlib is imported here only, and drawn through its Agg canvas directly: no pyplot, no
global figure state, no display needed.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from ..errors import PmrunError, UsageError
from ..recording import Recording, read_recording
from ..sizes import format_size

if TYPE_CHECKING:  # pragma: no cover
    from matplotlib.axes import Axes

# More lines than this are unreadable; the smaller processes are summed into one line.
MAX_PROCESS_LINES = 8

# How each event kind is drawn: (colour, line style). Unknown kinds are grey.
MARKER_STYLE: dict[str, tuple[str, str]] = {
    "warn": ("tab:orange", ":"),
    "evict": ("tab:blue", ":"),
    "stop": ("tab:red", "--"),
    "kill": ("darkred", "-"),
    "exit": ("dimgray", "-."),
}

# The end report's reason, in words (README: "Exit report").
_REASONS = {
    "exit": "exited by itself",
    "signal": "ended by a signal",
    "max-rss": "stopped by pmrun: memory passed --max-rss",
    "max-as": "failed at its address-space limit (--max-as)",
    "pool": "stopped by the coordinator: the pool was over its limit",
    "system-pressure": "stopped by the coordinator: the system was short of memory",
    "kernel-oom": "killed by the kernel's OOM killer",
}


@dataclass(frozen=True)
class Marker:
    """A vertical marker: when (seconds since start), what kind, and its label."""

    t: float
    kind: str
    label: str


@dataclass(frozen=True)
class PlotSummary:
    """What was drawn, so that callers and tests can check the picture without pixels."""

    path: str
    title: str
    lines: tuple[str, ...]  # legend labels of the RSS lines, the tree total first
    limits: tuple[str, ...]  # labels of the horizontal limit lines
    markers: tuple[Marker, ...]
    samples: int


def describe_end(rec: Recording) -> str:
    """How the run ended, for the title: ``"stopped by pmrun: ... (exit 137, peak 80.4M)"``."""
    end = rec.end
    if end is None:
        return "recording has no end (pmrun itself was killed, or is still running)"
    reason = str(end.get("reason", "?"))
    words = _REASONS.get(reason, reason)
    figures = [f"exit {end['exit_status']}"] if "exit_status" in end else []
    if end.get("peak_rss") is not None:
        figures.append(f"peak {format_size(end['peak_rss'])}")
    return f"{words} ({', '.join(figures)})" if figures else words


def marker_label(event: dict[str, Any]) -> str:
    """A short label for one recorded event: its kind and the figure that matters."""
    kind = str(event.get("kind", "?"))
    detail = event.get("detail") or {}
    if kind == "warn" and "rss" in detail:
        return f"warn at {format_size(detail['rss'])}"
    if kind == "stop":
        reason = detail.get("reason", "")
        rss = f" at {format_size(detail['rss'])}" if "rss" in detail else ""
        return f"stop ({reason}){rss}" if reason else f"stop{rss}"
    if kind == "kill":
        why = detail.get("why")
        return f"SIGKILL ({why})" if why else "SIGKILL"
    if kind == "evict":
        freed = detail.get("freed", detail.get("bytes"))
        return f"evict: freed {format_size(freed)}" if freed is not None else "evict"
    return kind


def _command_text(rec: Recording, width: int = 90) -> str:
    command = rec.header.get("command") or []
    text = " ".join(str(a) for a in command).replace("\n", " ") or "?"
    text = " ".join(text.split())
    return text if len(text) <= width else text[: width - 1] + "…"


def markers_of(rec: Recording) -> list[Marker]:
    """The vertical markers: every recorded event, then the end unless an exit event said it."""
    out = [
        Marker(float(e.get("t", 0.0)), str(e.get("kind", "?")), marker_label(e)) for e in rec.events
    ]
    if rec.end is not None and not any(m.kind == "exit" for m in out):
        status = rec.end.get("exit_status")
        label = f"exit {status}" if status is not None else "exit"
        out.append(Marker(float(rec.end.get("t", 0.0)), "exit", label))
    return sorted(out, key=lambda m: m.t)


def _process_series(
    rec: Recording,
) -> tuple[list[tuple[str, list[float], list[int]]], tuple[str, list[float], list[int]] | None]:
    """The biggest processes' series (by peak), and the rest summed per sample (or None)."""
    by_peak = sorted(
        rec.per_process, key=lambda p: max(r for _, r in rec.per_process[p]), reverse=True
    )
    shown, rest = by_peak[:MAX_PROCESS_LINES], by_peak[MAX_PROCESS_LINES:]
    series = []
    for pid in shown:
        points = rec.per_process[pid]
        label = f"{pid} {rec.names.get(pid, '?')}"
        series.append((label, [t for t, _ in points], [r for _, r in points]))
    if not rest:
        return series, None
    summed: dict[float, int] = {}
    for pid in rest:
        for t, r in rec.per_process[pid]:
            summed[t] = summed.get(t, 0) + r
    times = sorted(summed)
    return series, (f"{len(rest)} other processes", times, [summed[t] for t in times])


def byte_tick_step(top_bytes: float, ticks: int = 6) -> int:
    """A round step in binary units (1, 2, 5, 10, 20, 25, 50, ... MiB or GiB) giving ~``ticks`` ticks."""
    for unit in (1 << 10, 1 << 20, 1 << 30, 1 << 40):
        for mult in (1, 2, 5, 10, 20, 25, 50, 100, 200, 250, 500):
            step = mult * unit
            if top_bytes / step <= ticks:
                return step
    return 1 << 40


def _draw_markers(ax: Axes, markers: list[Marker], x_span: float) -> None:
    """Vertical lines, labels at the top; labels of close markers are staggered downwards.

    Labels in the right third of the plot sit left of their line, so they stay inside.
    """
    row, last_t = 0, None
    for m in markers:
        colour, style = MARKER_STYLE.get(m.kind, ("gray", ":"))
        ax.axvline(m.t, color=colour, linestyle=style, linewidth=1.4, zorder=1)
        close = last_t is not None and m.t - last_t < 0.12 * x_span
        row = row + 1 if close else 0
        last_t = m.t
        right = m.t > 0.66 * x_span
        ax.annotate(
            m.label,
            xy=(m.t, 0.98 - 0.07 * (row % 6)),
            xycoords=("data", "axes fraction"),
            xytext=(-3 if right else 3, 0),
            textcoords="offset points",
            ha="right" if right else "left",
            va="top",
            fontsize=8,
            color=colour,
            bbox={"boxstyle": "round,pad=0.2", "fc": "white", "ec": colour, "alpha": 0.85},
            zorder=5,
        )


def load_recording(path: str) -> Recording:
    """Read a recording to plot; a file that is missing, not one, or empty is a :class:`PmrunError`."""
    try:
        rec = read_recording(path)
    except FileNotFoundError:
        raise UsageError(f"{path}: no such file") from None
    except IsADirectoryError:
        raise UsageError(f"{path}: is a directory, not a recording") from None
    except UnicodeDecodeError:
        raise UsageError(f"{path}: not a pmrun recording (not text)") from None
    except (KeyError, ValueError, TypeError) as e:  # a line of the wrong shape
        raise UsageError(f"{path}: not a pmrun recording ({e})") from None
    except OSError as e:
        raise PmrunError(f"{path}: {e.strerror or e}") from None
    if not rec.times:
        raise PmrunError(f"{path}: no samples: the command ended before the first sample")
    return rec


def plot_recording(
    rec: Recording, out_path: str, *, width_in: float = 12.0, height_in: float = 6.5, dpi: int = 100
) -> PlotSummary:
    """Draw ``rec`` to ``out_path`` (PNG, or any format matplotlib knows by the extension).

    Raises :class:`PmrunError` if the image cannot be written (:class:`UsageError` for an
    extension matplotlib does not know).
    """
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure
    from matplotlib.ticker import FuncFormatter, MultipleLocator

    fig = Figure(figsize=(width_in, height_in), dpi=dpi)
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()

    labels: list[str] = []
    series, others = _process_series(rec)
    total_label = "tree total (what the limits apply to)"
    # The total is drawn under the processes: with one process both are the same line.
    ax.plot(rec.times, rec.totals, color="black", linewidth=3.0, label=total_label, zorder=2)
    labels.append(total_label)
    for i, (label, times, values) in enumerate(series):
        ax.plot(times, values, color=f"C{i % 10}", linewidth=1.2, label=label, zorder=3)
        labels.append(label)
    if others is not None:
        label, times, values = others
        ax.plot(times, values, color="gray", linewidth=1.0, linestyle="--", label=label, zorder=3)
        labels.append(label)

    end_t = max([*rec.times, float((rec.end or {}).get("t", 0.0)), 1e-3])
    limits = rec.header.get("limits") or {}
    limit_labels: list[str] = []
    for key, flag, colour in (
        ("warn_rss", "--warn-rss", "tab:orange"),
        ("max_rss", "--max-rss", "tab:red"),
    ):
        value = limits.get(key)
        if not value:
            continue
        label = f"{flag} {format_size(value)}"
        ax.axhline(value, color=colour, linestyle="--", linewidth=1.3, label=label, zorder=1)
        ax.annotate(
            label,
            xy=(0.0, value),
            xycoords=("axes fraction", "data"),
            xytext=(4, 2),
            textcoords="offset points",
            va="bottom",
            fontsize=8,
            color=colour,
        )
        limit_labels.append(label)

    markers = markers_of(rec)
    peak = max(rec.totals, default=0)
    top = max([peak, *(v for v in (limits.get("max_rss"), limits.get("warn_rss")) if v)])
    ax.set_ylim(0, max(top * 1.12, 1 << 20))
    ax.set_xlim(0, end_t * 1.02)
    _draw_markers(ax, markers, end_t)
    # The figure an event was decided on (e.g. the RSS that crossed --max-rss) as a dot:
    # it can fall between two recorded samples.
    for e in rec.events:
        rss = (e.get("detail") or {}).get("rss")
        if isinstance(rss, int):
            colour = MARKER_STYLE.get(str(e.get("kind")), ("gray", ""))[0]
            ax.plot([float(e.get("t", 0.0))], [rss], "o", color=colour, markersize=6, zorder=4)

    ax.yaxis.set_major_locator(MultipleLocator(byte_tick_step(ax.get_ylim()[1])))
    ax.yaxis.set_major_formatter(FuncFormatter(lambda v, _pos: format_size(v)))
    ax.set_xlabel("seconds since start")
    counted = (rec.header.get("backend") or {}).get("counted") or "RSS"  # older recordings: RSS
    ax.set_ylabel(f"memory ({counted})" if counted != "RSS" else "RSS")
    ax.grid(True, color="0.9")
    ax.legend(
        loc="upper left", bbox_to_anchor=(1.01, 1.0), fontsize=8, title=counted, title_fontsize=8
    )
    name = rec.header.get("name") or "agent"
    title = f"{name}: {_command_text(rec)}\n{describe_end(rec)}"
    ax.set_title(title, fontsize=10, loc="left")
    fig.tight_layout()
    # The format named, not guessed: without an extension matplotlib would write
    # OUT.png beside OUT (a directory, /dev/full) and the summary would name the wrong file.
    fmt = os.path.splitext(out_path)[1][1:].lower() or "png"
    try:
        fig.savefig(out_path, format=fmt)
    except OSError as e:
        raise PmrunError(f"cannot write {out_path}: {e.strerror or e}") from None
    except ValueError as e:  # "Format 'xyz' is not supported"
        raise UsageError(f"cannot write {out_path}: {e}") from None
    return PlotSummary(
        path=out_path,
        title=title,
        lines=tuple(labels),
        limits=tuple(limit_labels),
        markers=tuple(markers),
        samples=len(rec.times),
    )
