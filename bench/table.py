"""The speed benchmark table of the user guide (`docs/guide_benchmarks.md`), made from the benchmarks' own output files: `python bench/table.py`.

Reads `bench/results/bench_*.json` (written by each benchmark's full run, e.g. `python bench/bench_metric.py`),
rewrites the table between the `bench-table` markers (`docs/readme.py` finds the page that holds them, now
`docs/guide_benchmarks.md`), then regenerates README.md from its notebook (`docs/readme.py`). A benchmark without a results file keeps its current rows (the table says so).
"""
import json, re, sys
from pathlib import Path

BENCH = Path(__file__).resolve().parent
ROOT, RESULTS = BENCH.parent, BENCH / 'results'
HEAD = "| what | ours | peer (same inputs, same run) | ratio | script |\n|---|---|---|---|---|"


def csv_markdown(csv, cols) -> str:
    "A docs table (Markdown) of columns `cols` of a results CSV (a path or its DataFrame), rounded as the README shows."
    import os
    import pandas as pd
    from cellseg_nb.pipeline import markdown_table
    df = pd.read_csv(csv) if isinstance(csv, (str, os.PathLike)) else csv
    return markdown_table(df[cols], index=False)


def _rows(name):
    p = RESULTS / f'{name}.json'
    return json.loads(p.read_text())['rows'] if p.exists() else None


def metric_rows(rows):
    out = []
    for cells in sorted({r['cells'] for r in rows}):
        d = {r['impl']: r['ms_wall'] for r in rows if r['cells'] == cells}
        o, ol = d['cellseg_nb score_image (Instances)'], d['cellseg_nb incl. from_label_image']
        py, cp, hi = d['pycocotools mask.iou + matching'], d['cellpose average_precision'], d['public histogram2d']
        out.append(f"| competition score of one 520 x 704 image, {cells} cells | {o:.2f} ms from `Instances`; {ol:.2f} ms "
                   f"from label images (`from_label_image` included) | pycocotools `mask.iou` + matching {py:.2f} ms; from "
                   f"label images: `cellpose.metrics.average_precision` {cp:.1f} ms, public histogram2d metric {hi:.1f} ms "
                   f"(identical scores) | {py / o:.1f}x; {cp / ol:.1f}x / {hi / ol:.1f}x | `bench/bench_metric.py` |")
    return out


def rle_rows(rows):
    out = []
    for op, api in (('decode', 'Instances.from_rles'), ('encode', 'Instances.to_rles')):
        r = [x for x in rows if x['op'] == op]
        cells = sorted({x['cells'] for x in r})
        ours = [next(x for x in r if x['cells'] == c and 'batch' in x['impl']) for c in cells]
        peer = [next(x for x in r if x['cells'] == c and x['impl'].startswith('public')) for c in cells]
        j = ' / '.join
        out.append(f"| Sartorius RLE {op}, {j(str(c) for c in cells)} cells per image (`{api}`) | "
                   f"{j('%.1f' % x['us_per_cell'] for x in ours)} us per cell | public-notebook {op}r (a full-size mask per "
                   f"cell) {j('%.0f' % x['us_per_cell'] for x in peer)} us, identical output | "
                   f"{j('%.0fx' % x['speedup_vs_public'] for x in ours)} | `bench/bench_rle.py` |")
    return out


def postprocess_rows(rows):
    r = rows[0]
    return [f"| overlap removal + minimum area, {r['candidates']} candidates, 520 x 704 | {r['ours_s'] * 1e3:.1f} ms | the "
            f"public notebooks' loop (a full-size `used` mask per cell) {r['public_loop_s']:.2f} s, identical output | "
            f"{r['ratio']:.0f}x | `bench/bench_postprocess.py` |"]


def data_rows(rows):
    r = rows[0]
    return [f"| reading a train.csv of the real size ({r['cells']:,} cells) into masks | {r['ours_s']:.2f} s, "
            f"{r['runs_mb']:.0f} MB of runs | public loader (groupby + a full-size mask per cell) {r['public_s']:.0f} s, "
            f"identical pixels | {r['ratio']:.0f}x | `bench/bench_data.py` |"]


def tune_rows(rows):
    r = rows[0]
    return [f"| tuning a 10 x 10 grid per cell type, {r['images']} simulated images | {r['tune_s']:.0f} s | post-process + "
            f"score at every grid point, about {r['straightforward_est_s']:.0f} s (estimated; identical scores) | about "
            f"{r['ratio']:.0f}x | `bench/bench_tune.py` |"]


MAKERS = {'bench_metric': metric_rows, 'bench_rle': rle_rows, 'bench_postprocess': postprocess_rows,
          'bench_data': data_rows, 'bench_tune': tune_rows}


def table(old_table: str) -> str:
    "The new table: rows made from results files; rows of benchmarks without one are kept from `old_table`."
    old = [l for l in old_table.splitlines() if l.startswith('|') and not l.startswith(('| what', '|---'))]
    scripts = lambda l: re.findall(r'`bench/(bench_\w+)\.py`', l)
    done, rows = set(), []
    for l in old:
        s = scripts(l)[0] if scripts(l) else None
        if s in MAKERS and _rows(s) is not None:
            if s not in done: rows += MAKERS[s](_rows(s)); done.add(s)
        else: rows.append(l)
    for s, make in MAKERS.items():                     # results of benchmarks that had no row yet
        if s not in done and _rows(s) is not None: rows += make(_rows(s))
    return HEAD + '\n' + '\n'.join(rows)


def main():
    sys.path.insert(0, str(ROOT / 'docs'))
    import readme
    page = readme.set_block('bench-table', table(readme.block('bench-table')))
    readme.main()
    print(f"benchmark table rewritten in {page.relative_to(ROOT)} from {RESULTS.relative_to(ROOT)}/")


if __name__ == '__main__':
    main()
