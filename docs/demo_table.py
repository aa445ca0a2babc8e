"""The README's demo table, made from a demo's `results.csv`: `python docs/demo_table.py [RESULTS_CSV]`.

Copies RESULTS_CSV (default: `cellseg_out/demo/results.csv`, what `cellseg demo` writes) to
`results/demo_results.csv`, renders it with `cellseg_nb.pipeline.results_markdown`, writes the table between the
`demo-table` markers of `nbs/index.ipynb` and regenerates README.md. `tests/test_docs_tools.py` checks that the
README's table is what `results/demo_results.csv` gives.
"""
import shutil, sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
KEPT = ROOT / 'results' / 'demo_results.csv'


def main(src=ROOT / 'cellseg_out' / 'demo' / 'results.csv'):
    from cellseg_nb.pipeline import results_markdown
    src = Path(src)
    if not src.is_file(): sys.exit(f"{src}: no such results file (run `cellseg demo` first)")
    KEPT.parent.mkdir(exist_ok=True)
    if src.resolve() != KEPT.resolve(): shutil.copyfile(src, KEPT)
    sys.path.insert(0, str(ROOT / 'docs'))
    import readme
    readme.set_block('demo-table', results_markdown(KEPT))
    readme.main()
    print(f"demo table rewritten in nbs/index.ipynb from {KEPT.relative_to(ROOT)}")


if __name__ == '__main__':
    main(*sys.argv[1:2])
