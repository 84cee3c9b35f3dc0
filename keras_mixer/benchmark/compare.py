"""Before / after: the throughput suite on this checkout and on a baseline checkout, interleaved.

Each round runs the suite's worker (:func:`keras_mixer.benchmark.throughput.worker`)
once on the baseline's code and once on this one's, in fresh subprocesses, in
alternating order, so that drift on a shared machine (other work, heat) touches both
sides alike; a row's figure is its best round. A baseline is any keras-mixer checkout
or release (a folder with ``keras_mixer/``), such as a git worktree of the previous
release.
"""

import json
import os

from keras_mixer.backend import run_under
from keras_mixer.benchmark.report import describe_host, host_info
from keras_mixer.files import write_text

WORKER = "keras_mixer.benchmark.throughput:worker"
SIDES = ("baseline", "current")
KEY = ("backend", "mode", "dtype", "batch")


def compare(spec, baseline, backends, rounds=3, log=print):
    """Rows ``{backend, mode, dtype, batch, baseline, current, ratio}`` (img/s, best round).

    Args:
        spec: a :class:`~keras_mixer.benchmark.throughput.BenchmarkSpec` (peers and exports
            are left out: only the model's own rows are compared).
        baseline: path of the baseline checkout (it holds ``keras_mixer/``).
        backends: backend names.
        rounds: rounds per backend; each runs both sides once.

    Returns:
        A report dict: ``host``, ``spec``, ``baseline``, ``rows`` and ``rounds`` (every
        round's img/s per side).
    """
    baseline = os.path.abspath(os.fspath(baseline))
    if not os.path.isfile(os.path.join(baseline, "keras_mixer", "__init__.py")):
        raise ValueError(f"--baseline {baseline!r} is not a keras-mixer checkout (no keras_mixer/).")
    if rounds < 1:
        raise ValueError(f"rounds must be >= 1, got {rounds}.")
    spec.peers, spec.exports = False, False
    best, history = {}, []
    for backend in backends:
        for index in range(rounds):
            for side in SIDES if index % 2 == 0 else SIDES[::-1]:
                log(f"=== {backend}, round {index + 1}/{rounds}: {side}")
                env = {"PYTHONPATH": baseline} if side == "baseline" else None
                outcome = run_under(backend, WORKER, spec.to_json(), capture=False, env=env)
                for row in outcome.get("results", []):
                    if "error" in row:
                        raise RuntimeError(f"{side} {backend}: {row['error']}")
                    key = tuple(row[k] for k in KEY)
                    history.append(dict(zip(KEY, key), side=side, round=index + 1,
                                        img_per_s=row["img_per_s"]))
                    slot = best.setdefault(key, {})
                    slot[side] = max(slot.get(side, 0.0), row["img_per_s"])
    rows = [dict(zip(KEY, key), **sides, ratio=sides["current"] / sides["baseline"])
            for key, sides in best.items()]
    return dict(host=host_info(), spec=spec.to_json(), baseline=baseline, rows=rows, rounds=history,
                rounds_per_row=rounds)


def markdown(report):
    """The comparison as a Markdown table (img/s, best of the rounds; ratio = current / baseline)."""
    lines = [f"{describe_host(report['host'])}; baseline `{report['baseline']}`; "
             f"{report['rounds_per_row']} interleaved rounds per row, the best shown.", "",
             "| backend | mode | dtype | batch | baseline img/s | current img/s | current / baseline |",
             "|---|---|---|---|---|---|---|"]
    for row in report["rows"]:
        lines.append(f"| {row['backend']} | {row['mode']} | {row['dtype']} | {row['batch']} "
                     f"| {row['baseline']:.2f} | {row['current']:.2f} | {row['ratio']:.3f} |")
    return "\n".join(lines) + "\n"


def write(report, prefix, log=print):
    """``PREFIX.json`` and ``PREFIX.md``."""
    write_text(prefix + ".json", json.dumps(report, indent=2) + "\n")
    write_text(prefix + ".md", markdown(report))
    log(f"wrote {prefix}.json and {prefix}.md")
