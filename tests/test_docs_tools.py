"The docs and benchmark tooling: README in sync with index.ipynb, API docs in the site, link check, bench discovery."
import json, sys
from pathlib import Path
import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / 'docs')); sys.path.insert(0, str(ROOT / 'bench'))
import readme, check_site, check_all


def test_readme_is_generated_from_index():
    assert (ROOT / 'README.md').read_text() == readme.readme_text(), "run python docs/readme.py"


def test_readme_demo_table_is_the_demo_results():
    "The README's demo numbers are what results/demo_results.csv (a demo's results.csv) gives, not typed."
    from cellseg_nb.pipeline import results_markdown, results_wide
    csv = ROOT / 'results' / 'demo_results.csv'
    assert readme.block('demo-table') == results_markdown(csv).strip('\n'), "run python docs/demo_table.py"
    assert {'maskrcnn', 'cellpose', 'ensemble'} <= {m.split()[0] for m in results_wide(csv).index}


def test_readme_real_benchmark_table_is_its_csv():
    import bench_real
    assert readme.block('real-bench-table') == bench_real.table_markdown(ROOT / 'results' / 'bench_real.csv').strip('\n')


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
    assert build.fix_links('## The `x` command\n```\n# `y`\n```') == '## The x command\n```\n# `y`\n```'


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
