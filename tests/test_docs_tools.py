"""The docs and benchmark tooling: README in sync with index.ipynb, a short README whose links to the user guide work,
marker blocks in the README and the guide pages, API docs in the site, link check, bench discovery."""
import json, re, sys
from pathlib import Path
import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / 'docs')); sys.path.insert(0, str(ROOT / 'bench'))
import readme, check_site, check_all


def test_readme_is_generated_from_index():
    assert (ROOT / 'README.md').read_text() == readme.readme_text(), "run python docs/readme.py"


def github_anchor(heading):
    "The anchor GitHub gives a Markdown heading: lower case, punctuation but - and _ dropped, spaces to -."
    return re.sub(r'[^\w\- ]', '', heading.strip().lower()).replace(' ', '-')


def headings(md):
    "The headings of a Markdown text, outside fenced code."
    out, fence = [], False
    for l in md.split('\n'):
        if l.lstrip().startswith('```'): fence = not fence
        elif not fence and re.match(r'#{1,6} ', l): out.append(l.lstrip('#').strip())
    return out


def local_links(md):
    "The relative links of a Markdown text (no scheme), as (path, fragment); links inside fenced code left out."
    text = re.sub(r'```.*?```', '', md, flags=re.S)
    return [(u.split('#')[0], u.split('#')[1] if '#' in u else '') for u in re.findall(r'\]\(([^)\s]+)\)', text)
            if not re.match(r'[a-z]+:', u)]


def test_readme_is_short_and_every_guide_page_it_links_exists():
    """README.md is the front page (under 200 lines); it links every guide page; every relative link of the README and
    of the guide pages points at a file of the repository, and every #anchor at a heading of the page it names."""
    text = (ROOT / 'README.md').read_text()
    assert len(text.splitlines()) < 200, f"README.md has {len(text.splitlines())} lines: move sections to docs/guide_*.md"
    assert readme.unlinked_guide(text) == []
    pages = [ROOT / 'README.md'] + [ROOT / 'docs' / f'{g}.md' for g in readme.GUIDE]
    for page in pages:
        for path, frag in local_links(page.read_text()):
            target = (page.parent / path).resolve() if path else page
            assert target.is_file(), f"{page.relative_to(ROOT)}: link to {path}: no such file"
            if frag and target.suffix == '.md':
                assert frag in map(github_anchor, headings(target.read_text())), \
                    f"{page.relative_to(ROOT)}: link to {path}#{frag}: no such heading"
    linked = {(ROOT / p).resolve() for p, _ in local_links(text)}
    assert {ROOT / 'docs' / f'{g}.md' for g in readme.GUIDE} <= linked


def test_code_written_blocks_are_where_their_scripts_write():
    "Each block is in exactly one page: the demo table in the README's notebook, the benchmark tables in the guide."
    bench = ROOT / 'docs' / 'guide_benchmarks.md'
    assert readme.block_home('demo-table') == readme.INDEX
    for name in ('options-table', 'real-bench-table', 'real-defaults-table', 'real-schedule-table', 'bench-table'): assert readme.block_home(name) == bench, name


def test_readme_demo_table_is_the_demo_results():
    "The README's demo numbers are what results/demo_results.csv (a demo's results.csv) gives, not typed."
    from cellseg_nb.pipeline import results_markdown, results_wide
    csv = ROOT / 'results' / 'demo_results.csv'
    assert readme.block('demo-table') == results_markdown(csv).strip('\n'), "run python docs/demo_table.py"
    assert {'maskrcnn', 'cellpose', 'ensemble'} <= {m.split()[0] for m in results_wide(csv).index}


def test_readme_real_benchmark_table_is_its_csv():
    import bench_real
    assert readme.block('real-bench-table') == bench_real.table_markdown(ROOT / 'results' / 'bench_real.csv').strip('\n')
    assert readme.block_home('real-bench-headline') == readme.INDEX                  # the front page's short table
    assert readme.block('real-bench-headline') == bench_real.headline_markdown(ROOT / 'results' / 'bench_real.csv').strip('\n')


def test_real_defaults_tables_are_their_csvs():
    "The guide's tables of defaults chosen on real images are what bench/real_defaults.py's CSVs give, not typed."
    import real_defaults
    want = real_defaults.tables_markdown(*real_defaults.read_results(ROOT / 'results'))
    assert readme.block('real-defaults-table') == want.strip('\n'), "run python bench/real_defaults.py --cache DIR --write --readme"


def test_real_schedule_table_is_its_csv():
    "The guide's table of Cellpose schedule and precision variants is what bench/real_schedule.py's CSV gives."
    import real_schedule
    assert readme.block('real-schedule-table') == real_schedule.table_markdown().strip('\n'), \
        "run python bench/real_schedule.py --cache DIR --write --readme"
    t = __import__('pandas').read_csv(real_schedule.OUT)
    assert list(t.variant) == list(real_schedule.VARIANTS)


def test_readme_options_table_is_its_csv():
    sys.path.insert(0, str(ROOT / 'bench'))
    import bench_options
    assert readme.block('options-table') == bench_options.table_markdown(ROOT / 'results' / 'bench_options.csv').strip('\n'), \
        "run python bench/bench_options.py --readme"


def test_marker_blocks_round_trip(tmp_path):
    nb = dict(cells=[dict(cell_type='markdown', metadata={}, source='a\n<!-- t:start -->\nold\n<!-- t:end -->\nb')],
              metadata={}, nbformat=4, nbformat_minor=5)
    p = tmp_path / 'i.ipynb'; p.write_text(json.dumps(nb))
    assert readme.block('t', p) == 'old'
    readme.set_block('t', '| x |\n|---|', p)
    assert readme.block('t', p) == '| x |\n|---|'
    assert readme.readme_text(p).endswith('a\n<!-- t:start -->\n| x |\n|---|\n<!-- t:end -->\nb\n')
    with pytest.raises(ValueError, match='no <!-- u:start --> marker'): readme.block('u', p)


def test_marker_blocks_in_markdown_pages(tmp_path, monkeypatch):
    "set_block finds and rewrites a block in a guide page (a Markdown file) as in the notebook; one home per block."
    nb = dict(cells=[dict(cell_type='markdown', metadata={}, source='<!-- n:start -->\nx\n<!-- n:end -->')],
              metadata={}, nbformat=4, nbformat_minor=5)
    (tmp_path / 'i.ipynb').write_text(json.dumps(nb))
    (tmp_path / 'guide_a.md').write_text('# A\n\n<!-- t:start -->\nold\n<!-- t:end -->\n\nafter\n')
    monkeypatch.setattr(readme, 'INDEX', tmp_path / 'i.ipynb'); monkeypatch.setattr(readme, 'DOCS', tmp_path)
    monkeypatch.setattr(readme, 'GUIDE', {'guide_a': 'A', 'guide_b': 'B'})
    assert readme.block_home('t') == tmp_path / 'guide_a.md' and readme.block_home('n') == tmp_path / 'i.ipynb'
    assert readme.block('t') == 'old'
    assert readme.set_block('t', '| y |\n|---|') == tmp_path / 'guide_a.md'
    assert (tmp_path / 'guide_a.md').read_text() == '# A\n\n<!-- t:start -->\n| y |\n|---|\n<!-- t:end -->\n\nafter\n'
    assert readme.block('n') == 'x' and sorted(p.name for p in tmp_path.iterdir()) == ['guide_a.md', 'i.ipynb']
    with pytest.raises(ValueError, match='no <!-- u:start --> marker'): readme.set_block('u', 'z')
    (tmp_path / 'guide_b.md').write_text('<!-- t:start -->\n<!-- t:end -->\n')
    with pytest.raises(ValueError, match='more than one <!-- t:start --> marker'): readme.block('t')


def test_readme_code_cells_and_outputs(tmp_path):
    nb = dict(cells=[dict(cell_type='markdown', metadata={}, source='# T\n\ntext'),
                     dict(cell_type='code', metadata={}, source='#| hide\nx = 1', outputs=[]),
                     dict(cell_type='code', metadata={}, source='#| eval: false\n1 + 1', outputs=[
                         dict(output_type='execute_result', data={'text/plain': '2'}, metadata={})])],
              metadata={}, nbformat=4, nbformat_minor=5)
    p = tmp_path / 'i.ipynb'; p.write_text(json.dumps(nb))
    assert readme.readme_text(p) == readme.HEADER + "# T\n\ntext\n\n```python\n1 + 1\n```\n\n```\n2\n```\n"


def test_api_docs_follow_exported_cells():
    pytest.importorskip('nbdev')
    import build
    nb = build.prepare(ROOT / 'nbs' / '02_metric.ipynb')
    md = [c['source'] for c in nb['cells'] if c['cell_type'] == 'markdown']
    doc = next(m for m in md if m.startswith('### score_image'))
    assert 'def' not in doc and 'score_image(gt' in doc and 'Competition score of one image' in doc
    assert not any(c['source'].startswith('#|') for c in nb['cells'] if c['cell_type'] == 'code')


def test_fix_links():
    import build
    assert build.fix_links('[a](nbs/20_eda.ipynb) [b](docs/facts.md)') == '[a](20_eda.ipynb) [b](facts.md)'
    assert build.fix_links('[g](docs/guide_data.md#livecell) [h](../README.md#set-up) [i](../nbs/24_x.ipynb) [f](facts.md)') \
        == '[g](guide_data.md#livecell) [h](index.md#set-up) [i](24_x.ipynb) [f](facts.md)'
    assert build.fix_links('[g](../docs/guide_data.md#x) [f](../docs/facts.md) [n](20_eda.ipynb)', md_to_html=True) \
        == '[g](guide_data.html#x) [f](facts.html) [n](20_eda.ipynb)'
    assert build.fix_links('## The `x` command\n```\n# `y`\n```') == '## The x command\n```\n# `y`\n```'


def test_guide_pages_are_in_the_navigation(tmp_path):
    """The site's navigation holds every guide page (build.mkdocs_yml), and check_site flags a page whose navigation
    or home page lacks one."""
    import build
    yml = build.mkdocs_yml(['00_instances', '20_eda'])
    assert all(f'- {title}: {g}.md' in yml for g, title in readme.GUIDE.items())
    nav = lambda *gs: ''.join(f'<a href="{g}.html" class="md-nav__link">{g}</a>' for g in gs)
    guide, tmp = {'guide_a': 'A', 'guide_b': 'B'}, tmp_path
    (tmp / 'index.html').write_text(nav('guide_a', 'guide_b') + '<article><a href="guide_a.html#x">a</a></article>')
    (tmp / 'guide_a.html').write_text(nav('guide_a', 'guide_b'))
    (tmp / 'guide_b.html').write_text(nav('guide_a'))
    assert check_site.check_guide(tmp, guide) == ['guide_b.html: not in its navigation: guide_b',
                                                  'index.html: the home page does not link to guide_b']
    (tmp / 'guide_b.html').unlink()
    assert 'guide_b.html: missing (a page of the user guide)' in check_site.check_guide(tmp, guide)


def test_link_check_finds_broken_links(tmp_path):
    (tmp_path / 'index.html').write_text('<a href="a.html#sec">ok</a><a href="b.html">gone</a><img src="i.png">'
                                         '<a href="a.html#nope">bad</a><a href="https://x.org/">ext</a>')
    (tmp_path / 'a.html').write_text('<h2 id="sec">S</h2><a href="/index.html">home</a>')
    problems = check_site.check_links(tmp_path)
    assert sorted(p.split(' -> ')[0] for p in problems) == ['index.html: a.html#nope', 'index.html: b.html',
                                                             'index.html: i.png']


def test_every_speed_benchmark_runs_in_ci():
    names = {p.name for p in check_all.checks()}
    assert {'bench_metric.py', 'bench_rle.py', 'bench_postprocess.py', 'bench_data.py', 'bench_tune.py',
            'bench_cpose.py', 'bench_maskrcnn_inference.py'} <= names
    for p in (ROOT / 'bench').glob('bench_*.py'):
        src = p.read_text()
        marked = any(l.strip() == '# not in CI' for l in src.splitlines())
        assert (p.name in names) == ("'--check'" in src and not marked), p.name


def test_repeated_headings_get_unique_anchors():
    import build
    cells = [dict(cell_type='markdown', source='# m\n## train'), dict(cell_type='code', source='## x'),
             dict(cell_type='markdown', source='### train\n```\n## train\n```\n## train')]
    out = build._unique_headings(cells)
    assert out[2]['source'] == '### train API\n```\n## train\n```\n## train 2' and out[1]['source'] == '## x'


def test_data_pages_say_which_data_they_ran_on(tmp_path):
    "check_site flags an EDA / analysis page that does not state the data build.py executed it on."
    real = '<p><strong>This page ran on: real competition images</strong> (x)</p><img src="f.png">'
    synth = '<p><strong>This page ran on:\n the synthetic twin</strong></p>'
    (tmp_path / '20_eda.html').write_text(real)
    (tmp_path / '23_inference_analysis.html').write_text(synth)
    ok = {'20_eda': {'data': 'real'}, '23_inference_analysis': {'data': 'synthetic'}}
    assert check_site.check_data_pages(tmp_path, ok) == []
    wrong = {'20_eda': {'data': 'synthetic'}, '23_inference_analysis': {'data': 'synthetic'}}
    assert check_site.check_data_pages(tmp_path, wrong) == ["20_eda.html: does not say 'This page ran on: the synthetic twin'"]
    assert 'not executed' in check_site.check_data_pages(tmp_path, {'20_eda': {'data': 'real'}})[0]


def test_docs_build_gives_real_data_to_the_eda_and_analysis_only(monkeypatch, tmp_path):
    "The real folder goes to the notebooks in REAL_DATA: $CELLSEG_DATA first, else ../shared when it is there."
    import build
    assert set(build.REAL_DATA) == {'20_eda', '23_inference_analysis'} and set(build.REAL_DATA) <= set(build.EXECUTE)
    monkeypatch.setenv('CELLSEG_DATA', str(tmp_path))
    assert build.real_data_folder() == str(tmp_path.resolve())
    monkeypatch.delenv('CELLSEG_DATA')
    monkeypatch.setattr(build, 'SHARED_DATA', tmp_path / 'none')
    assert build.real_data_folder() is None


def test_library_pages_must_show_their_executed_output(tmp_path):
    "check_site flags a library page that was not executed, or whose cell outputs lack the text it must print."
    out = '<div class="jp-RenderedText jp-OutputArea-output" data-mime-type="text/plain"><pre>usage: cellseg predict [-h]</pre></div>'
    src = '<div class="jp-InputArea">usage: cellseg predict</div>'
    (tmp_path / 'a.html').write_text(out); (tmp_path / 'b.html').write_text(src)
    prints = {'a': 'usage: cellseg predict', 'b': 'usage: cellseg predict'}
    assert check_site.check_printed(tmp_path, {'a': {}, 'b': {}}, prints) == [
        "b.html: no cell output shows 'usage: cellseg predict' (the examples were not executed?)"]
    assert check_site.check_printed(tmp_path, {'b': {}}, {'a': 'usage'})[0].startswith('a.html: not executed')
    import build
    assert set(check_site.PRINTS) <= set(build.EXECUTE) and '08_config' in build.EXECUTE and '90_cli' in build.EXECUTE


def test_hidden_cells_run_but_are_not_shown(tmp_path):
    "A `#| hide` cell (often the imports later cells need) is executed by the docs build, then left off the page."
    import build
    nb = dict(cells=[dict(cell_type='code', metadata={}, outputs=[], source='#| hide\nimport tempfile'),
                     dict(cell_type='code', metadata={}, outputs=[], source='print(tempfile.gettempdir() != "")'),
                     dict(cell_type='code', metadata={}, outputs=[], source='#| hide\n#| slow\nx = 1')],
              metadata={}, nbformat=4, nbformat_minor=5)
    p = tmp_path / '99_x.ipynb'; p.write_text(json.dumps(nb))
    cells = build.prepare(p)['cells']
    assert [c['source'] for c in cells] == ['import tempfile', 'print(tempfile.gettempdir() != "")']
    assert cells[0]['metadata'].get('docs_hide') and not cells[1]['metadata'].get('docs_hide')
    assert [c['source'] for c in build.drop_hidden(cells)] == ['print(tempfile.gettempdir() != "")']
