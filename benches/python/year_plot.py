#!/usr/bin/env python3
"""Plot the year benchmark (benches/src/bin/year.rs) as one PNG.

    python3 benches/python/year_plot.py target/bench-data/year-dir.json \
        [target/bench-data/year-s3.json] -o benches/year.png

Needs matplotlib (`python3 -m venv target/plot && target/plot/bin/pip install matplotlib`, then
run it with target/plot/bin/python3). Four panels over simulated days, one line per run:
repository bytes beside a fresh backup of the same state plus the journal the retention keeps
(and their ratio, with the 1.5x target); packs and index objects (and packs per MiB stored);
the plugin's open time at restart and the restore time of the newest state; peak memory of
the plugin and of a restore, and the longest prune.
"""

import argparse
import json

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402


def load(path):
    with open(path) as f:
        run = json.load(f)
    return run["backend"], run["points"]


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("runs", nargs="+", help="year-*.json files")
    ap.add_argument("-o", "--output", default="year.png")
    a = ap.parse_args()
    runs = [load(p) for p in a.runs]
    fig, ax = plt.subplots(2, 2, figsize=(14, 9))
    (bytes_ax, count_ax), (time_ax, mem_ax) = ax
    ratio_ax = bytes_ax.twinx()
    per_mib_ax = count_ax.twinx()
    styles = {"dir": "-", "s3": "--"}
    for backend, pts in runs:
        ls = styles.get(backend, ":")
        day = [p["day"] for p in pts]
        mb = lambda k: [p[k] / 1e6 for p in pts]  # noqa: E731
        bytes_ax.plot(day, mb("repo_bytes"), ls, color="C0", label=f"repository ({backend})")
        bytes_ax.plot(
            day,
            [(p["fresh_bytes"] + p["journal_bytes"]) / 1e6 for p in pts],
            ls,
            color="C1",
            label=f"fresh backup + journal kept ({backend})",
        )
        bytes_ax.plot(day, mb("db_bytes"), ls, color="C2", label=f"database ({backend})")
        ratio_ax.plot(day, [p["ratio"] for p in pts], ls, color="C3", label=f"ratio ({backend})")
        count_ax.plot(day, [p["packs"] for p in pts], ls, color="C0", label=f"packs ({backend})")
        count_ax.plot(
            day, [p["index_objects"] for p in pts], ls, color="C1", label=f"index objects ({backend})"
        )
        count_ax.plot(
            day, [p["journal_segments"] for p in pts], ls, color="C2", label=f"journal segments ({backend})"
        )
        per_mib_ax.plot(
            day, [p["packs_per_mib"] for p in pts], ls, color="C3", label=f"packs per MiB ({backend})"
        )
        time_ax.plot(day, [p["open_ms"] / 1000 for p in pts], ls, color="C0", label=f"open at restart ({backend})")
        time_ax.plot(day, [p["restore_ms"] / 1000 for p in pts], ls, color="C1", label=f"restore newest ({backend})")
        time_ax.plot(day, [p["prune_ms_max"] / 1000 for p in pts], ls, color="C2", label=f"longest prune ({backend})")
        mem_ax.plot(day, [p["plugin_peak_kib"] / 1024 for p in pts], ls, color="C0", label=f"plugin ({backend})")
        measured = [(p["day"], p["restore_peak_kib"] / 1024) for p in pts if p["restore_peak_kib"]]
        if measured:
            mem_ax.plot(
                [d for d, _ in measured],
                [m for _, m in measured],
                ls,
                color="C1",
                label=f"backup-cli restore ({backend})",
            )
    ratio_ax.axhline(1.5, color="C3", linewidth=0.8, linestyle=":")
    ratio_ax.set_ylim(0, 2)
    ratio_ax.set_ylabel("repository / (fresh + journal)")
    bytes_ax.set_ylabel("MB")
    bytes_ax.set_title("Stored bytes")
    count_ax.set_ylabel("objects")
    per_mib_ax.set_ylabel("packs per MiB stored")
    count_ax.set_title("Object counts")
    time_ax.set_ylabel("seconds")
    time_ax.set_title("Open at restart, restore, prune")
    mem_ax.set_ylabel("MiB")
    mem_ax.set_title("Peak memory")
    for x in (bytes_ax, count_ax, time_ax, mem_ax):
        x.set_xlabel("simulated day")
        x.grid(alpha=0.3)
    for main_ax, twin in ((bytes_ax, ratio_ax), (count_ax, per_mib_ax)):
        h1, l1 = main_ax.get_legend_handles_labels()
        h2, l2 = twin.get_legend_handles_labels()
        main_ax.legend(h1 + h2, l1 + l2, fontsize=7, loc="upper left")
    time_ax.legend(fontsize=7, loc="upper left")
    mem_ax.legend(fontsize=7, loc="upper left")
    fig.suptitle("A year of a busy node (cln-backup, benches/src/bin/year.rs)")
    fig.tight_layout()
    fig.savefig(a.output, dpi=100)
    print(f"wrote {a.output}")


if __name__ == "__main__":
    main()
