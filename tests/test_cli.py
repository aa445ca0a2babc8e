"The `cellseg` command: help on every subcommand, one-line errors, and the Kaggle wheels bundle built for real."
import json, os, subprocess, sys, zipfile
from pathlib import Path
import pytest
from cellseg_nb import cli

ROOT = Path(__file__).resolve().parents[1]


def run(*argv, capsys):
    rc = cli.main(list(argv))
    out = capsys.readouterr()
    return rc, out.out, out.err


def test_help_lists_every_command(capsys):
    rc, out, _ = run('--help', capsys=capsys)
    assert rc == 0
    for name in ['demo', 'train maskrcnn', 'train cellpose', 'predict', 'evaluate', 'tune', 'validate-submission',
                 'kaggle-bundle']:
        assert name in out, name


@pytest.mark.parametrize('name', sorted(cli.COMMANDS))
def test_every_subcommand_has_help(name, capsys):
    rc, out, _ = run(*name.split(), '--help', capsys=capsys)
    assert rc == 0 and out.startswith(f'usage: cellseg {name}'), out[:200]
    assert cli._first_line(cli.COMMANDS[name]) in ' '.join(out.split())


def test_unknown_command_and_bad_option(capsys):
    rc, _, err = run('frobnicate', capsys=capsys)
    assert rc == 2 and 'unknown command' in err
    rc, _, err = run('kaggle-bundle', '--no_such_option', capsys=capsys)
    assert rc == 2 and 'unrecognized arguments' in err


def test_errors_are_one_line(tmp_path, capsys):
    rc, out, err = run('validate-submission', str(tmp_path / 'missing.csv'), '--ids', 'a', capsys=capsys)
    assert rc == 1
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith('cellseg validate-submission: error:'), err
    assert 'Traceback' not in err


def test_validate_submission_caps_the_overlap_rows(tmp_path, capsys):
    "Piled-up cells: --max_overlaps pairs listed, then one summary row; 0 lists every pair. Exit status 1."
    from cellseg_nb.postprocess import random_candidates
    pile = random_candidates(30, (60, 80), seed=1, area=(200, 800))
    sub = tmp_path / 's.csv'
    sub.write_text('id,predicted\n' + ''.join(f'im,{r}\n' for r in pile.to_rles()))
    args = ('validate-submission', str(sub), '--ids', 'im', '--height', '60', '--width', '80')
    rc, out, _ = run(*args, '--max_overlaps', '2', capsys=capsys)
    assert rc == 1 and out.count('share') == 2 and 'more overlapping pairs than the 2 listed' in out, out
    rc, out, _ = run(*args, '--max_overlaps', '0', capsys=capsys)
    assert rc == 1 and out.count('share') > 20 and 'more overlapping pairs' not in out


def test_console_script_entry_point():
    "The installed `cellseg` script (settings.ini console_scripts) runs `main`."
    exe = Path(sys.executable).with_name('cellseg')
    r = subprocess.run([str(exe), '--help'], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0 and 'kaggle-bundle' in r.stdout


def test_kaggle_bundle_project_wheel_installs_offline(tmp_path, capsys):
    "Build the cellseg_nb wheel with the real pip, install it with --no-index --no-deps as a Kaggle kernel does."
    out = tmp_path / 'wheels'
    rc, stdout, err = run('kaggle-bundle', '--out', str(out), '--project_only', '--project', str(ROOT), capsys=capsys)
    assert rc == 0, err
    wheels = sorted(out.glob('*.whl'))
    assert [w.name.split('-')[0] for w in wheels] == ['cellseg_nb']
    names = zipfile.ZipFile(wheels[0]).namelist()
    exported = sorted(p.name for p in (ROOT / 'cellseg_nb').glob('*.py'))
    assert sorted(Path(n).name for n in names if n.startswith('cellseg_nb/') and n.endswith('.py')) == exported
    ep = next(n for n in names if n.endswith('entry_points.txt'))
    assert 'cellseg = cellseg_nb.cli:main' in zipfile.ZipFile(wheels[0]).read(ep).decode()
    meta = json.loads((out / 'dataset-metadata.json').read_text())
    assert meta['id'].endswith('/cellseg-wheels') and meta['licenses']
    assert (out / 'MANIFEST.csv').read_text().startswith('file,bytes')
    target = tmp_path / 'site'
    subprocess.run([sys.executable, '-m', 'pip', 'install', '--no-index', '--no-deps', '-q', '--target', str(target),
                    *map(str, wheels)], check=True, capture_output=True)
    code = ("import sys; sys.path.insert(0, sys.argv[1]); import cellseg_nb.inference as m; "
            "print(m.__file__)")
    r = subprocess.run([sys.executable, '-c', code, str(target)], capture_output=True, text=True, cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip().startswith(str(target))


def test_module_entry_point_for_torchrun():
    "`python -m cellseg_nb.cli` (how `torchrun -m cellseg_nb.cli train maskrcnn ...` starts it) runs `main`."
    r = subprocess.run([sys.executable, '-m', 'cellseg_nb.cli', 'train', '--help'], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0 and 'maskrcnn' in r.stdout and 'cellpose' in r.stdout


def test_demo_flags_change_the_recipe(capsys):
    "`cellseg demo` flags -> `pipeline.demo_recipe`: each flag lands in its recipe field; a new size rebuilds the model."
    from cellseg_nb.pipeline import demo_recipe
    from cellseg_nb.config import get_recipe, small_model, ConfigError
    assert demo_recipe('quick') == get_recipe('quick') and demo_recipe('demo') == get_recipe('demo')
    r = demo_recipe('demo', n_images=20, image_shape=(128, 96), maskrcnn_iters=7, maskrcnn_scale=2.0, mask_size=56,
                    maskrcnn_warmup=3, cellpose_epochs=4, tta=True, seed=5)
    assert (r.demo.n_images, r.demo.image_shape, r.demo.tta, r.demo.seed) == (20, (128, 96), True, 5)
    assert (r.train.iterations, r.train.warmup, r.train.seed, r.cellpose.epochs) == (7, 3, 5, 4)
    assert r.model == small_model((128, 96), 2.0, 56) and r.model.min_size == 96 and r.model.anchor_sizes[0] == 32
    assert r.cellpose.size_epochs == get_recipe('demo').cellpose.size_epochs                  # the rest unchanged
    with pytest.raises(ConfigError): demo_recipe('demo', mask_size=30)
    rc, _, err = run('demo', '--quick', '--recipe', 'demo', capsys=capsys)
    assert rc == 1 and 'not both' in err
    rc, _, err = run('demo', '--recipe', 'no-such-recipe', capsys=capsys)
    assert rc == 1 and 'unknown recipe' in err
