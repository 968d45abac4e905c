"""The tables of a ``llavakit bench`` report: a rich console rendering and the same content as Markdown.

Split from ``bench.py`` so that the runner (which engines, which subprocesses, how results merge) and the
presentation (units, ratios read as "2.00x faster", table layout) can each be read and changed alone. Both
functions take the report dict ``run_bench`` returns (also what ``bench.json`` holds), so an old report can be
re-rendered without rerunning anything.
"""

from __future__ import annotations

from typing import Any


def _fmt(value: Any, unit: str = "") -> str:
    if value is None:
        return "—"
    if unit == "MiB":
        return f"{value:,.0f} MiB"
    if unit == "s":
        return f"{value:.3f} s" if value < 10 else f"{value:.1f} s"
    if unit == "tok/s":
        return f"{value:.2f} tok/s" if value < 100 else f"{value:.0f} tok/s"
    return f"{value:.3g}"


def _fmt_int(value: Any) -> str:
    return "—" if value is None else f"{value:.0f}"


def _fmt_share(value: Any) -> str:
    return "—" if value is None else f"{value:.0%}"


def _reading(row: dict) -> str:
    ratio = row["ratio"]
    if row["better"] == "higher":
        factor, word = (ratio, "faster") if ratio >= 1 else (1 / ratio, "slower")
    elif row["unit"] == "MiB":
        factor, word = (1 / ratio, "less") if ratio <= 1 else (ratio, "more")
    else:
        factor, word = (1 / ratio, "faster") if ratio <= 1 else (ratio, "slower")
    return f"{factor:.2f}× {word}"


def _table_rows(report: dict, group: str) -> list[tuple[str, ...]]:
    return [(c["peer"], c["label"], _fmt(c["llavakit"], c["unit"]), _fmt(c["peer_value"], c["unit"]),
             f"{c['ratio']:.2f}", _reading(c)) for c in report["comparisons"] if c["group"] == group]


_GROUPS = {
    "vlm": "image + question, same IR / same checkpoint",
    "lm": "language model alone, same prompt token ids",
    "backend": "llavakit's llama.cpp LM backend (Q4_K_M GGUF; vision on OpenVINO) vs llavakit's OpenVINO "
               "engine and the peers (llamacpp rows: its image+question decode vs llama.cpp's LM-only decode)",
}


_LEVER_COLUMNS = ("lever", "prefill", "decode", "decode per round", "decode vs default", "MB/token",
                  "fraction of floor")


def _lever_rows(report: dict) -> list[tuple[str, ...]]:
    rows = []
    for row in report.get("levers", []):
        if "error" in row:
            rows.append((row["lever"], "error: " + row["error"][:80], *[""] * 5))
            continue
        rounds = " / ".join(f"{v:.1f}" for v in row.get("decode_per_round", []) if v)
        rows.append((row["lever"], _fmt(row["prefill_s"], "s"), _fmt(row["decode_tokens_per_s"], "tok/s"), rounds,
                     f"{row['decode_vs_default']:.2f}", f"{row['bytes_per_token'] / 1e6:.0f}",
                     f"{row['fraction_of_floor']:.0%}" if "fraction_of_floor" in row else "—"))
    return rows


_ENGINE_COLUMNS = ("engine", "load", "peak RSS", "TTFT cold", "TTFT warm", "TTFT same image", "decode", "prompt tokens",
                   "background")


def _engine_rows(report: dict) -> list[tuple[str, ...]]:
    rows = []
    for name, e in report["engines"].items():
        if "error" in e:
            rows.append((name, "error: " + e["error"][:100], *[""] * 7))
            continue
        rows.append((name, _fmt(e.get("load_s"), "s"), _fmt(e.get("peak_rss_mb"), "MiB"),
                     _fmt(e.get("ttft_s_cold", e.get("prefill_s")), "s"), _fmt(e.get("ttft_s_warm"), "s"),
                     _fmt(e.get("ttft_s_followup"), "s"),
                     _fmt(e.get("decode_tokens_per_s"), "tok/s"),
                     _fmt_int(e.get("prompt_tokens_cold", e.get("prompt_tokens", e.get("n_prompt")))),
                     _fmt_share(e.get("background_cpu_share"))))
    return rows


def _simple_table(table_class: Any, title: str, columns: tuple[str, ...], rows: list[tuple[str, ...]]) -> Any:
    """A rich table whose first column (a name) is left-aligned and the rest (numbers) right-aligned."""
    table = table_class(title=title)
    for i, column in enumerate(columns):
        table.add_column(column, justify="left" if i == 0 else "right")
    for row in rows:
        table.add_row(*row)
    return table


def print_report(report: dict, console: Any) -> None:
    """The comparison tables, the bandwidth floor, the levers, and any errors."""
    from rich.table import Table

    m = report["machine"]
    for group, title in _GROUPS.items():
        rows = _table_rows(report, group)
        if not rows:
            continue
        table = Table(title=f"llavakit vs peers: {title} ({report['settings']['shape']}, {m['cpu']}, "
                            f"{m['cores']} cores)")
        for column in ("peer", "metric", "llavakit", "peer value", "llavakit/peer", "llavakit is"):
            table.add_column(column, justify="right" if column != "peer" else "left")
        previous = None
        for row in rows:
            if previous is not None and row[0] != previous:
                table.add_section()
            table.add_row(*row)
            previous = row[0]
        console.print(table)
    console.print(_simple_table(Table, "each engine, absolute (medians)", _ENGINE_COLUMNS, _engine_rows(report)))
    floor = report.get("floor")
    if floor:
        t = Table(title=f"decode vs the bandwidth floor ({floor['bandwidth_gbps']:.1f} GB/s measured; "
                        f"{floor['bytes_per_token'] / 1e6:.0f} MB of LM weights per token → "
                        f"{floor['floor_tokens_per_s']:.1f} tok/s)")
        for column in ("engine", "decode", "floor", "fraction of floor"):
            t.add_column(column)
        for name, e in floor["engines"].items():
            t.add_row(name, _fmt(e["decode_tokens_per_s"], "tok/s"),
                      _fmt(e.get("floor_tokens_per_s", floor["floor_tokens_per_s"]), "tok/s"),
                      f"{e['fraction_of_floor']:.0%}")
        console.print(t)
    if report.get("levers"):
        console.print(_simple_table(Table, "levers (LM alone, same prompt ids)", _LEVER_COLUMNS, _lever_rows(report)))
    agreement = report.get("agreement")
    if agreement and "agreement" in agreement:
        t = Table(title=f"top-1 agreement with fp32 transformers, teacher-forced ({agreement['model']}, "
                        f"{agreement['prompts']} prompts, {agreement['steps']} steps)")
        t.add_column("quantized LM")
        t.add_column("agreement", justify="right")
        for name, value in agreement["agreement"].items():
            t.add_row(name, f"{value:.1%}")
        console.print(t)
    for note in report["notes"]:
        console.print(f"[dim]note:[/] {note}")
    for name, error in report["errors"].items():
        console.print(f"[red]error[/] {name}: {error}")


def markdown_report(report: dict) -> str:
    """The same content as :func:`print_report`, as Markdown, with the machine and the absolute numbers."""
    m, s = report["machine"], report["settings"]
    lines = [f"# llavakit bench — {s['shape']}", "",
             (f"- machine: {m['cpu']}, {m['cores']} cores, {m['memory_gib'] or 0:.0f} GiB, "
              f"flags {' '.join(m['cpu_flags'])}; load average at start {m['loadavg_at_start']:.2f}"),
             "- versions: " + ", ".join(f"{k} {v}" for k, v in m["versions"].items() if v),
             (f"- settings: repeats {s['repeats']}, rounds {s['rounds']}, max_new_tokens {s['max_new_tokens']} "
              f"(eos ignored), export {s['export']}, date {m['date']}, took {report['elapsed_s'] / 60:.1f} min"), "",
             ]
    for group, title in _GROUPS.items():
        rows = _table_rows(report, group)
        if rows:
            lines += [f"## llavakit vs peers: {title}", "",
                      "| peer | metric | llavakit | peer | llavakit/peer | llavakit is |",
                      "| --- | --- | --- | --- | --- | --- |"]
            lines += ["| " + " | ".join(row) + " |" for row in rows]
            lines.append("")
    floor = report.get("floor")
    if floor:
        lines += ["", (f"Bandwidth floor: {floor['bandwidth_gbps']:.1f} GB/s measured (best of numpy reductions; "
                       f"median single-thread {floor['bandwidth_single_thread_gbps']:.1f}, all threads "
                       f"{floor['bandwidth_all_threads_gbps']:.1f}); {floor['bytes_per_token'] / 1e6:.1f} MB of LM "
                       f"weights read per token (LM head {floor['lm_head_bytes'] / 1e6:.1f} MB) → floor "
                       f"{floor['floor_tokens_per_s']:.1f} tok/s."), "",
                  "| engine | decode | floor | fraction of floor |", "| --- | --- | --- | --- |"]
        for name, e in floor["engines"].items():
            lines.append(f"| {name} | {_fmt(e['decode_tokens_per_s'], 'tok/s')} | "
                         f"{_fmt(e.get('floor_tokens_per_s', floor['floor_tokens_per_s']), 'tok/s')} | "
                         f"{e['fraction_of_floor']:.0%} |")
    if report.get("levers"):
        lines += ["", "## Levers (LM alone, same prompt ids)", "", "| " + " | ".join(_LEVER_COLUMNS) + " |",
                  "|" + " --- |" * len(_LEVER_COLUMNS)]
        lines += ["| " + " | ".join(row) + " |" for row in _lever_rows(report)]
    agreement = report.get("agreement")
    if agreement and "agreement" in agreement:
        lines += ["", (f"## Top-1 agreement with fp32 transformers (teacher-forced; {agreement['model']}, "
                       f"{agreement['prompts']} prompts, {agreement['steps']} steps)"), "",
                  "| quantized LM | agreement |", "| --- | --- |"]
        lines += [f"| {name} | {value:.1%} |" for name, value in agreement["agreement"].items()]
    lines += ["", ("Per engine (medians; for the LM-only rows TTFT cold is the prefill of the fixed prompt; "
                   "background = CPU share other processes used during the engine's run):"), "",
              "| " + " | ".join(_ENGINE_COLUMNS) + " |", "|" + " --- |" * len(_ENGINE_COLUMNS)]
    lines += ["| " + " | ".join(row) + " |" for row in _engine_rows(report)]
    for note in report["notes"]:
        lines += ["", f"Note: {note}"]
    for name, error in report["errors"].items():
        lines += ["", f"Error in {name}: {error}"]
    return "\n".join(lines) + "\n"
