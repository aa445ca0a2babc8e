"""Build the documentation site from the notebooks: `python docs/build.py` -> build/site/ (about 3.5 CPU-minutes).

Needs the `[docs]` extra (`pip install -c constraints.txt -e ".[dev,docs]"`): mkdocs-material renders the pages,
mkdocs-jupyter renders the notebooks with their outputs. Steps:
1. every notebook of `nbs/` is copied to `build/docs_src/`; in library notebooks (those with `#| default_exp`),
   each exported function and class gets its signature and docstring (what nbdev's `show_doc` gives) in a
   Markdown cell right after the cell that defines it; nbdev directive lines and `#| hide` cells are dropped;
2. every numbered notebook (`EXECUTE`: the library notebooks, whose examples and tests then show what they print,
   a recipe table or a `--help`, and the workflow notebooks 20-24, where the figures and tables are the point) is
   executed, as `nbdev_test` runs them (cells flagged slow / gpu / notest skipped, each notebook in its own
   process, two at a time). Executing at build time keeps the committed notebooks output-free (small
   diffs, no stale figures, no merge conflicts in outputs, and no figure of a competition image in the
   repository: those exist only in the built site). The notebooks in `REAL_DATA` (the EDA and the analysis) run
   on the real competition folder: `$CELLSEG_DATA`, else `../shared/realdata/sartorius_train405` beside the
   clone when it is there (CI has it); every other notebook runs with `CELLSEG_DATA` unset (its synthetic toy
   scale). Without real data the two run on the synthetic twin and say so at their top. `build/executed.json`
   records the data, seconds and CPU-seconds of each executed notebook (`check_site.py` reads it);
3. `nbs/index.ipynb` (the README's source) becomes the home page, the user guide's pages (`docs/guide_*.md`,
   `readme.GUIDE`) the Guide section and `docs/facts.md` the facts page; their links, relative paths that work on
   GitHub, are rewritten for the site (`fix_links`);
4. `mkdocs build --strict` writes `build/site/` (plain .html files, so the site also opens from disk).
Prints the build time and the number of pages. `python docs/build.py --no-execute` skips step 2 (a quick build to
check pages, links and navigation; the executed pages then lack their figures).
"""
import ast, inspect, json, os, re, shutil, subprocess, sys, time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
NBS, BUILD = ROOT / 'nbs', ROOT / 'build'
SRC, SITE = BUILD / 'docs_src', BUILD / 'site'
EXECUTE = tuple(p.stem for p in sorted(NBS.glob('[0-9]*.ipynb')))     # every numbered notebook, library ones too
REAL_DATA = ('20_eda', '23_inference_analysis')      # executed on the real competition folder when there is one
SHARED_DATA = ROOT.parent / 'shared' / 'realdata' / 'sartorius_train405'
SKIP_FLAGS = {'slow', 'gpu', 'notest'}
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(Path(__file__).parent))
from readme import cell_markdown, GUIDE


def _src(cell): return ''.join(cell['source']) if isinstance(cell['source'], list) else cell['source']


def directives(src):
    "nbdev directives of a cell source: {'export': [], 'default_exp': ['metric'], ...} from its leading `#|` lines."
    out = {}
    for line in src.splitlines():
        if not line.startswith('#|'): break
        words = line[2:].split()
        if words: out[words[0].rstrip(':')] = words[1:]
    return out


def strip_directives(src): return '\n'.join(l for l in src.splitlines() if not l.startswith('#|')).strip('\n')


def md_cell(text): return dict(cell_type='markdown', metadata={}, source=text)


def doc_markdown(obj, name, level=3):
    "Signature and docstring of `obj`, as nbdev's show_doc gives them, in Markdown."
    try:
        sig = inspect.signature(obj)
        ps = list(sig.parameters.values())
        if ps and ps[0].name in ('self', 'cls'): sig = sig.replace(parameters=ps[1:])   # as show_doc shows methods
        sig = str(sig)
    except (TypeError, ValueError): sig = '(...)'
    kind = 'class ' if inspect.isclass(obj) else ''
    doc = inspect.getdoc(obj) or ''
    if inspect.isclass(obj) and doc == inspect.getdoc(object): doc = ''
    return f"{'#' * level} {name}\n\n```python\n{kind}{name.split('.')[-1]}{sig}\n```\n\n{doc}".rstrip() + '\n'


def _member(cls, name):
    "The function behind `cls.name` (a method, classmethod, staticmethod or property)."
    a = inspect.getattr_static(cls, name)
    if isinstance(a, property): return a.fget
    b = getattr(cls, name)
    return getattr(b, '__func__', b)


def _patched_class(node, module):
    "The class a `@patch`-decorated function is attached to (its first argument's annotation), else None."
    decos = [ast.unparse(d) for d in getattr(node, 'decorator_list', [])]
    if not any(d == 'patch' or d.startswith('patch(') for d in decos) or not node.args.args: return None
    ann = node.args.args[0].annotation
    return getattr(module, ast.unparse(ann).strip("'\""), None) if ann is not None else None


def exported_docs(src, module):
    "Markdown docs of the public functions and classes (and their public methods) that the cell `src` defines."
    try: tree = ast.parse(strip_directives(src))
    except SyntaxError: return []
    out = []
    for node in tree.body:
        if not isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)) or node.name.startswith('_'):
            continue
        patched = _patched_class(node, module)
        if patched is not None:                        # a method attached with fastcore's @patch: Class.name
            out.append(doc_markdown(_member(patched, node.name), f'{patched.__name__}.{node.name}', 4)); continue
        obj = getattr(module, node.name, None)
        if obj is None: continue
        out.append(doc_markdown(obj, node.name))
        if isinstance(node, ast.ClassDef):
            for m in node.body:
                if isinstance(m, (ast.FunctionDef, ast.AsyncFunctionDef)) and not m.name.startswith('_'):
                    meth = inspect.getattr_static(obj, m.name, None)
                    meth = getattr(meth, '__func__', getattr(meth, 'fget', meth))
                    if meth is not None and inspect.getdoc(meth): out.append(doc_markdown(meth, f'{node.name}.{m.name}', 4))
    return out


def fix_links(text, md_to_html=False):
    """Links that work in the repository (nbs/X.ipynb, docs/facts.md, docs/guide_X.md from the README or a notebook;
    ../README.md from a page of docs/) made to work on the site, where they are all in one folder and the README is
    index.md; backticks dropped from headings (mkdocs-jupyter's table of contents and nbconvert's heading ids
    disagree on them). `md_to_html`: links to the site's Markdown pages point at their .html (a notebook's links are
    not rewritten by mkdocs, a Markdown page's are)."""
    lines, fence = text.split('\n'), False
    for i, l in enumerate(lines):
        if l.lstrip().startswith('```'): fence = not fence
        elif not fence and re.match(r'#{1,6} ', l): lines[i] = l.replace('`', '')
    text = '\n'.join(lines)
    text = re.sub(r'\]\((?:\.\./)?docs/([\w-]+\.md)', r'](\1', text)
    text = re.sub(r'\]\((?:\.\./)?README\.md', '](index.md', text)
    if md_to_html: text = re.sub(r'\]\(([\w-]+)\.md([#)])', r'](\1.html\2', text)
    return re.sub(r'\]\((?:\.\./)?nbs/([\w-]+)\.ipynb', r'](\1.ipynb', text)


def prepare(nb_path: Path):
    "The notebook as the site shows it (not executed yet): directives dropped, API docs added. Returns the dict."
    import importlib
    nb = json.loads(nb_path.read_text())
    cells = nb['cells']
    mod = next((directives(_src(c)).get('default_exp') for c in cells if c['cell_type'] == 'code'
                and 'default_exp' in directives(_src(c))), None)
    module = importlib.import_module(f'cellseg_nb.{mod[0]}') if mod else None
    out = []
    for c in cells:
        src = _src(c)
        if c['cell_type'] == 'markdown' and mod and src.startswith(f'# {mod[0]}\n'):
            src = f'# cellseg_nb.{mod[0]}' + src[len(mod[0]) + 2:]     # the module's page title (and a unique anchor)
        if c['cell_type'] == 'markdown':
            out.append(md_cell(fix_links(src, md_to_html=True))); continue
        if c['cell_type'] != 'code': continue
        d = directives(src)
        if 'default_exp' in d and not strip_directives(src): continue
        skip = sorted(SKIP_FLAGS & d.keys())
        code = strip_directives(src)
        if not code: continue
        cell = dict(c, source=code, outputs=[], execution_count=None, metadata=dict(c.get('metadata', {})))
        if 'hide' in d:                       # run (later cells may need it), then dropped from the page (`drop_hidden`)
            cell['metadata']['docs_hide'] = True
            if not skip: out.append(cell)
            continue
        if skip or (d.get('eval', [''])[0].lower() == 'false'): cell['metadata']['docs_skip'] = True
        out.append(cell)
        if skip: out.append(md_cell(f"*Not run in the docs build (`{'`, `'.join(skip)}`).*"))
        if module is not None and ('export' in d or 'exports' in d):
            out.extend(md_cell(m) for m in exported_docs(src, module))
    nb['cells'] = _unique_headings(out)
    return nb


def _unique_headings(cells):
    """Headings whose anchor repeats an earlier one get ' API' (API docs) or ' 2' appended: mkdocs-jupyter's
    table of contents numbers repeated anchors (`train_1`) while nbconvert's heading ids do not."""
    seen = set()
    slug = lambda t: re.sub(r'[^\w]+', '-', t.strip().lower()).strip('-')
    for c in cells:
        if c['cell_type'] != 'markdown': continue
        lines, fence = c['source'].split('\n'), False
        for i, l in enumerate(lines):
            if l.lstrip().startswith('```'): fence = not fence
            m = None if fence else re.match(r'(#{1,6}) (.*)$', l)
            if not m: continue
            text = m.group(2)
            while slug(text) in seen: text += ' API' if m.group(1) in ('###', '####') and not text.endswith(' API') else ' 2'
            seen.add(slug(text)); lines[i] = f'{m.group(1)} {text}'
        c['source'] = '\n'.join(lines)
    return cells


def real_data_folder():
    "The real competition folder for the `REAL_DATA` notebooks: `$CELLSEG_DATA`, else `SHARED_DATA` if present, else None."
    d = os.environ.get('CELLSEG_DATA')
    if d: return str(Path(d).resolve())
    return str(SHARED_DATA) if (SHARED_DATA / 'train.csv').is_file() else None


def drop_hidden(cells) -> list:
    "The cells a page shows: those `prepare` marked `docs_hide` (`#| hide` cells, executed for what they define) left out."
    return [c for c in cells if not c.get('metadata', {}).get('docs_hide')]


def execute(args):
    """Execute the prepared notebook `dst` (made from `src`) in place, in `src`'s folder, as nbdev_test does, with
    `CELLSEG_DATA` = `data` (unset when None). Returns (name, seconds, CPU-seconds, data)."""
    src, dst, data = args
    src, dst = Path(src), Path(dst)
    os.environ['IN_TEST'] = '1'
    if data: os.environ['CELLSEG_DATA'] = data
    else: os.environ.pop('CELLSEG_DATA', None)
    from execnb.nbio import read_nb, write_nb
    from execnb.shell import CaptureShell
    nb = read_nb(dst)
    t = time.time()
    shell = CaptureShell(src)
    cwd = os.getcwd(); os.chdir(src.parent)
    try: shell.run_all(nb, exc_stop=True, preproc=lambda c: c.cell_type != 'code' or c.metadata.get('docs_skip'))
    except Exception as e: raise RuntimeError(f"{src.name}: a cell failed while building the docs:\n{shell.prettytb(fname=src)}") from e
    finally: os.chdir(cwd)
    nb['cells'] = drop_hidden(nb['cells'])
    write_nb(nb, dst)
    import resource
    cpu = sum(resource.getrusage(w).ru_utime + resource.getrusage(w).ru_stime
              for w in (resource.RUSAGE_SELF, resource.RUSAGE_CHILDREN))
    return src.stem, time.time() - t, cpu, data


def mkdocs_yml(pages):
    "mkdocs.yml for the build: the committed base config plus the navigation."
    flow = [p for p in pages if p[:2].isdigit() and 20 <= int(p[:2]) < 80]       # the workflow notebooks 20-24
    lib = [p for p in pages if p not in flow]                                      # library: 00-19, 80 pipeline, 90 cli
    nav = ['  - Home: index.md', '  - Guide:'] + [f'    - {title}: {g}.md' for g, title in GUIDE.items()]
    nav += ['  - Facts: facts.md', '  - Library:'] + [f'    - {p}: {p}.ipynb' for p in lib]
    nav += ['  - Workflow:'] + [f'    - {p}: {p}.ipynb' for p in flow]
    base = (Path(__file__).parent / 'mkdocs.base.yml').read_text()
    return base.replace('{docs_dir}', str(SRC)).replace('{site_dir}', str(SITE)) + '\nnav:\n' + '\n'.join(nav) + '\n'


def main():
    t0 = time.time()
    if SRC.exists(): shutil.rmtree(SRC)
    SRC.mkdir(parents=True)
    index = json.loads((NBS / 'index.ipynb').read_text())
    (SRC / 'index.md').write_text(fix_links('\n\n'.join(t for t in map(cell_markdown, index['cells']) if t)) + '\n')
    for page in ['facts', *GUIDE]:
        (SRC / f'{page}.md').write_text(fix_links((Path(__file__).parent / f'{page}.md').read_text()))
    pages = []
    for p in sorted(NBS.glob('[0-9]*.ipynb')):
        (SRC / p.name).write_text(json.dumps(prepare(p), indent=1, ensure_ascii=False))
        pages.append(p.stem)
    real = real_data_folder()
    todo = [(str(NBS / f'{s}.ipynb'), str(SRC / f'{s}.ipynb'), real if s in REAL_DATA else None)
            for s in EXECUTE if s in pages and '--no-execute' not in sys.argv]
    todo.sort(key=lambda t: Path(t[0]).stem not in REAL_DATA)      # the long real-data runs first
    import multiprocessing as mp      # a fresh process per notebook (IPython's shell takes over __main__)
    executed = {}
    with ProcessPoolExecutor(int(os.environ.get('DOCS_JOBS', 2)), mp_context=mp.get_context('spawn'),
                             max_tasks_per_child=1) as ex:
        for name, dt, cpu, data in ex.map(execute, todo):
            executed[name] = dict(data='real' if data else 'synthetic', folder=data, seconds=round(dt, 1), cpu_seconds=round(cpu, 1))
            print(f"executed {name} in {dt:.0f} s ({cpu:.0f} s CPU) on {'the real data ' + data if data else 'its synthetic data'}", flush=True)
    for s in pages:                                    # pages not executed: their hidden cells dropped here
        if s not in executed:
            f = SRC / f'{s}.ipynb'; nb = json.loads(f.read_text()); nb['cells'] = drop_hidden(nb['cells'])
            f.write_text(json.dumps(nb, indent=1, ensure_ascii=False))
    (BUILD / 'executed.json').write_text(json.dumps(executed, indent=1) + '\n')
    (BUILD / 'mkdocs.yml').write_text(mkdocs_yml(pages))
    subprocess.run([sys.executable, '-m', 'mkdocs', 'build', '--strict', '-q', '-f', str(BUILD / 'mkdocs.yml')], check=True,
                   env={**os.environ, 'NO_MKDOCS_2_WARNING': '1'})
    n = len(list(SITE.rglob('*.html'))) - (1 if (SITE / '404.html').exists() else 0)
    print(f"docs: {n} pages in {SITE.relative_to(ROOT)} built in {time.time() - t0:.0f} s")


if __name__ == '__main__':
    main()
