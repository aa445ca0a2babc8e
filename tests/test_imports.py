"The package's import graph points one way: no module imports, at any depth or inside a function, one that imports it back."
import ast
from pathlib import Path
import pytest

PKG = Path(__file__).resolve().parents[1] / 'cellseg_nb'


def imports_of(path: Path) -> set:
    "Names of the package's modules that `path` imports anywhere in its source (top level or inside functions)."
    out = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom):
            mod = node.module or ''
            if node.level == 1: name = mod
            elif mod == 'cellseg_nb' or mod.startswith('cellseg_nb.'): name = mod[len('cellseg_nb.'):] if '.' in mod else ''
            else: continue
            if name: out.add(name.split('.')[0])
            else: out.update(a.name for a in node.names)               # from cellseg_nb import x / from . import x
        elif isinstance(node, ast.Import):
            out.update(a.name.split('.')[1] for a in node.names if a.name.startswith('cellseg_nb.'))
    return out


def import_graph() -> dict:
    mods = {p.stem: p for p in PKG.glob('*.py') if p.stem not in ('__init__', '_modidx')}
    return {m: sorted(imports_of(p) & set(mods) - {m}) for m, p in mods.items()}


def find_cycle(graph: dict):
    "One cycle of `graph` as a list of nodes [a, b, ..., a], or None (depth-first search with colours)."
    colour, stack = {}, []
    def visit(n):
        colour[n] = 'grey'; stack.append(n)
        for m in graph.get(n, ()):
            if colour.get(m) == 'grey': return stack[stack.index(m):] + [m]
            if m not in colour and (c := visit(m)): return c
        colour[n] = 'black'; stack.pop()
    for n in sorted(graph):
        if n not in colour and (c := visit(n)): return c


def test_find_cycle_finds_cycles():
    assert find_cycle({'a': ['b'], 'b': ['c'], 'c': ['a']}) == ['a', 'b', 'c', 'a']
    assert find_cycle({'a': ['b'], 'b': [], 'c': ['a', 'b']}) is None
    assert find_cycle({'a': ['a']}) == ['a', 'a']


def test_imports_of_reads_every_form(tmp_path):
    f = tmp_path / 'm.py'
    f.write_text("from .rle import x\nimport os\ndef f():\n    from cellseg_nb.metric import y\n    import cellseg_nb.tune\n"
                 "from cellseg_nb import files\n")
    assert imports_of(f) == {'rle', 'metric', 'tune', 'files'}


def test_no_import_circle():
    g = import_graph()
    assert {'settings', 'config', 'postprocess', 'ensemble'} <= set(g)
    assert 'config' not in g['postprocess'] and 'config' not in g['ensemble']
    cycle = find_cycle(g)
    assert cycle is None, f"import circle: {' -> '.join(cycle)}"
