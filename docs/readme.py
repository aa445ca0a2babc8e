"""README.md is generated from nbs/index.ipynb (the notebook is the source; the docs site's home page is the same
notebook). Markdown cells are copied as they are; code cells become fenced Python blocks followed by their text
output, if any.

    python docs/readme.py            # rewrite README.md from nbs/index.ipynb
    python docs/readme.py --check    # exit 1 if README.md differs from what the notebook gives (CI)
"""
import json, os, sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
INDEX, README = ROOT / 'nbs' / 'index.ipynb', ROOT / 'README.md'
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


def block(name, index=INDEX) -> str:
    "The text between the `name` markers of a Markdown cell of `index` (ValueError when there are none)."
    start, end = markers(name)
    for c in json.loads(Path(index).read_text())['cells']:
        src = _text(c['source'])
        if start in src: return src[src.index(start) + len(start):src.index(end)].strip('\n')
    raise ValueError(f"{index}: no {start} marker")


def set_block(name, text, index=INDEX):
    "Replace the text between the `name` markers of `index` by `text` (temporary file + rename)."
    start, end = markers(name)
    nb = json.loads(Path(index).read_text())
    for c in nb['cells']:
        src = _text(c['source'])
        if start in src:
            src = src[:src.index(start) + len(start)] + '\n' + text.strip('\n') + '\n' + src[src.index(end):]
            lines = src.split('\n'); c['source'] = [l + '\n' for l in lines[:-1]] + [lines[-1]]
            break
    else: raise ValueError(f"{index}: no {start} marker")
    tmp = Path(index).with_suffix('.ipynb.tmp'); tmp.write_text(json.dumps(nb, indent=1, ensure_ascii=False) + '\n')
    os.replace(tmp, index)


def main(check=False):
    text = readme_text()
    if check:
        if README.read_text() != text:
            sys.exit("README.md is out of sync with nbs/index.ipynb: run `python docs/readme.py` and commit both")
        print("README.md is in sync with nbs/index.ipynb")
        return
    tmp = README.with_suffix('.md.tmp'); tmp.write_text(text); os.replace(tmp, README)
    print(f"wrote {README.relative_to(ROOT)} from {INDEX.relative_to(ROOT)}")


if __name__ == '__main__':
    main(check='--check' in sys.argv[1:])
