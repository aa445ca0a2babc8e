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
