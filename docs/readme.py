"""README.md is generated from nbs/index.ipynb (the notebook is the source; the docs site's home page is the same
notebook). Markdown cells are copied as they are; code cells become fenced Python blocks followed by their text
output, if any. The README is the front page; the user guide is the Markdown pages `GUIDE` (`docs/guide_*.md`,
written by hand, linked from the README and in the site's navigation).

Some tables are written by code between `<!-- NAME:start -->` and `<!-- NAME:end -->` markers (`set_block`): the
demo table in `nbs/index.ipynb` (`docs/demo_table.py`), the options, real-image and speed benchmark tables in
`docs/guide_benchmarks.md` (`bench/bench_options.py --readme`, `bench/bench_real.py --readme`, `bench/table.py`).
`block` and `set_block` find the file that holds a block's markers themselves, so a block can move between pages.

    python docs/readme.py            # rewrite README.md from nbs/index.ipynb
    python docs/readme.py --check    # exit 1 if README.md differs from what the notebook gives (CI)
"""
import json, os, sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
INDEX, README, DOCS = ROOT / 'nbs' / 'index.ipynb', ROOT / 'README.md', ROOT / 'docs'
# the user guide: Markdown pages of docs/, in the order and with the titles of the site's navigation
GUIDE = {'guide_data': 'Data', 'guide_training': 'Training and recipes',
         'guide_prediction': 'Prediction and the Kaggle path', 'guide_benchmarks': 'Results and benchmarks',
         'guide_development': 'Development and the docs site'}
HEADER = '<!-- Generated from nbs/index.ipynb by `python docs/readme.py`: edit the notebook, not this file. -->\n\n'


def _text(src): return ''.join(src) if isinstance(src, list) else src


def cell_markdown(cell) -> str:
    "One notebook cell as Markdown: Markdown cells verbatim, code cells as a fenced block plus their text output."
    src = _text(cell['source']).strip('\n')
    if cell['cell_type'] == 'markdown': return src
    if cell['cell_type'] != 'code' or not src or src.lstrip().startswith('#| hide'): return ''
    src = '\n'.join(l for l in src.splitlines() if not l.startswith('#|'))
    out = []
    for o in cell.get('outputs', []):
        if o.get('output_type') == 'stream': out.append(_text(o['text']))
        elif 'data' in o and 'text/plain' in o['data']: out.append(_text(o['data']['text/plain']))
    block = f"```python\n{src}\n```"
    return block + (f"\n\n```\n{''.join(out).rstrip()}\n```" if out else '')


def readme_text(index=INDEX) -> str:
    "The README's text made from the notebook `index`."
    cells = json.loads(Path(index).read_text())['cells']
    return HEADER + '\n\n'.join(t for t in map(cell_markdown, cells) if t) + '\n'


def markers(name): return f'<!-- {name}:start -->', f'<!-- {name}:end -->'


def block_sources():
    "The files that may hold marker blocks: the README's notebook and the user guide's pages."
    return [INDEX] + [DOCS / f'{g}.md' for g in GUIDE]


def block_home(name) -> Path:
    "The one file of `block_sources()` that holds the `name` markers (ValueError when none or several do)."
    start = markers(name)[0]
    found = [p for p in block_sources() if p.is_file() and start in p.read_text()]
    if len(found) != 1:
        where = ', '.join(os.path.relpath(p, ROOT) for p in (found or block_sources()))
        raise ValueError(f"{'no' if not found else 'more than one'} {start} marker in {where}")
    return found[0]


def _between(src, name):
    start, end = markers(name)
    return src[src.index(start) + len(start):src.index(end)].strip('\n')


def _replaced(src, name, text):
    start, end = markers(name)
    return src[:src.index(start) + len(start)] + '\n' + text.strip('\n') + '\n' + src[src.index(end):]


def block(name, path=None) -> str:
    """The text between the `name` markers of `path` (a notebook's Markdown cell, or a Markdown file); `path` None:
    the file of the README's notebook and the guide pages that holds them. ValueError when there are none."""
    path = Path(path) if path is not None else block_home(name)
    start = markers(name)[0]
    if path.suffix == '.md':
        src = path.read_text()
        if start in src: return _between(src, name)
    else:
        for c in json.loads(path.read_text())['cells']:
            src = _text(c['source'])
            if start in src: return _between(src, name)
    raise ValueError(f"{path}: no {start} marker")


def set_block(name, text, path=None) -> Path:
    """Replace the text between the `name` markers of `path` (notebook or Markdown file; None: `block_home(name)`)
    by `text` (temporary file + rename). Returns the file written."""
    path = Path(path) if path is not None else block_home(name)
    start = markers(name)[0]
    if path.suffix == '.md':
        src = path.read_text()
        if start not in src: raise ValueError(f"{path}: no {start} marker")
        out = _replaced(src, name, text)
    else:
        nb = json.loads(path.read_text())
        for c in nb['cells']:
            src = _text(c['source'])
            if start in src:
                lines = _replaced(src, name, text).split('\n'); c['source'] = [l + '\n' for l in lines[:-1]] + [lines[-1]]
                break
        else: raise ValueError(f"{path}: no {start} marker")
        out = json.dumps(nb, indent=1, ensure_ascii=False) + '\n'
    tmp = path.with_name(f'.{path.name}.tmp'); tmp.write_text(out); os.replace(tmp, path)
    return path


def unlinked_guide(text) -> list:
    "Pages of the user guide that are missing from docs/ or that the README's `text` does not link to."
    return [f'docs/{g}.md' for g in GUIDE if not (DOCS / f'{g}.md').is_file() or f'](docs/{g}.md' not in text]


def main(check=False):
    text = readme_text()
    if check:
        if README.read_text() != text:
            sys.exit("README.md is out of sync with nbs/index.ipynb: run `python docs/readme.py` and commit both")
        if unlinked_guide(text):
            sys.exit(f"README.md must link every page of the user guide, and each must exist: {unlinked_guide(text)}")
        print(f"README.md is in sync with nbs/index.ipynb and links the {len(GUIDE)} pages of the user guide")
        return
    tmp = README.with_suffix('.md.tmp'); tmp.write_text(text); os.replace(tmp, README)
    print(f"wrote {README.relative_to(ROOT)} from {INDEX.relative_to(ROOT)}")


if __name__ == '__main__':
    main(check='--check' in sys.argv[1:])
