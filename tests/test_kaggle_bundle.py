"""`cellseg kaggle-bundle --python_version X` for a Python other than the running one: every wheel it writes carries
that Python's tags (binary wheels resolved by pip for them, pure-Python ones as they are). Needs the package
registry (pip's configured index), as `pip download` does; it fetches 3 small wheels (about 1 MB)."""
import sys
from pathlib import Path
import pytest
from cellseg_nb import cli

ROOT = Path(__file__).resolve().parents[1]
OTHER = '3.10' if sys.version_info[:2] != (3, 10) else '3.12'
CP = 'cp' + OTHER.replace('.', '')


def test_bundle_for_another_python(tmp_path, capsys):
    out = tmp_path / 'wheels'
    (out).mkdir(); (out / f'stale-1.0-cp311-cp311-manylinux_2_17_x86_64.whl').write_bytes(b'')   # an earlier build
    rc = cli.main(['kaggle-bundle', '--out', str(out), '--project', str(ROOT), '--packages', 'fastremap natsort roifile',
                   '--python_version', OTHER])
    err = capsys.readouterr().err
    assert rc == 0, err
    wheels = sorted(p.name for p in out.glob('*.whl'))
    assert [w.split('-')[0] for w in wheels] == ['cellseg_nb', 'fastremap', 'natsort', 'roifile'], wheels
    for w in wheels:
        py, abi, plat = (set(t.split('.')) for t in w[:-4].split('-')[-3:])
        if w.startswith('fastremap'):                  # a compiled extension: built for the target, not for this Python
            assert py == {CP} and abi == {CP}, w
            assert all(p.startswith('manylinux') and p.endswith('_x86_64') for p in plat), w
        else:
            assert 'py3' in py and abi == {'none'} and plat == {'any'}, w
    assert (out / 'MANIFEST.csv').read_text().splitlines()[1:] == \
        [f"{w},{(out / w).stat().st_size}" for w in wheels]


def test_binary_package_without_a_wheel_for_the_target_names_it(tmp_path, capsys):
    "fastremap publishes no wheel for Python 3.6 and its source builds a compiled wheel: a clear error, no bundle."
    rc = cli.main(['kaggle-bundle', '--out', str(tmp_path / 'w'), '--project', str(ROOT), '--packages', 'fastremap',
                   '--python_version', '3.6'])
    err = capsys.readouterr().err
    assert rc == 1 and 'fastremap' in err and '3.6' in err, err
