"Synthetic data: real folder layouts on disk, determinism, per-type statistics and look, pixel alignment, speed."
import re, time, json
from pathlib import Path
import numpy as np, pandas as pd, cv2, pytest
from scipy import ndimage
from pycocotools.coco import COCO
from cellseg_nb.instances import Instances
from cellseg_nb.celltypes import CELL_TYPES, LIVECELL_TYPES
from cellseg_nb.synth import (make_competition, make_livecell, synth_instances, synth_image, _split_counts,
                              STYLES, FULL_SHAPE)

REAL = {'shsy5y': (337, 225), 'astro': (80, 906), 'cort': (34, 240)}     # cells / image, mean area (docs/facts.md)
COLUMNS = ['id', 'annotation', 'width', 'height', 'cell_type', 'plate_time', 'sample_date', 'sample_id',
           'elapsed_timedelta']


@pytest.fixture(scope='module')
def full(tmp_path_factory):
    "A full-size competition folder with two images per type, and its generation time per image."
    root = tmp_path_factory.mktemp('full')
    t0 = time.perf_counter()
    make_competition(root, n_images={'shsy5y': 2, 'astro': 2, 'cort': 2}, seed=3, n_test=1, n_semi=1)
    return root, (time.perf_counter() - t0) / 8


def test_competition_layout(tmp_path):
    root = make_competition(tmp_path / 'c', n_images=12, seed=1, image_shape=(96, 128), n_test=3, n_semi=2)
    df = pd.read_csv(root / 'train.csv')
    assert list(df.columns) == COLUMNS
    ids = sorted(df.id.unique())
    assert all(re.fullmatch(r'[0-9a-f]{12}', x) for x in ids)
    assert sorted(p.stem for p in (root / 'train').glob('*.png')) == ids
    for p in (root / 'train').glob('*.png'):
        img = cv2.imread(str(p), cv2.IMREAD_UNCHANGED)
        assert img.dtype == np.uint8 and img.shape == (96, 128)
    assert len(list((root / 'test').glob('*.png'))) == 3 and len(list((root / 'train_semi_supervised').glob('*.png'))) == 2
    sub = pd.read_csv(root / 'sample_submission.csv')
    assert list(sub.columns) == ['id', 'predicted'] and sorted(sub.id) == sorted(p.stem for p in (root / 'test').glob('*.png'))
    assert set(df.width) == {128} and set(df.height) == {96}
    per = df.groupby('id').agg(t=('cell_type', 'nunique'), s=('sample_id', 'nunique'))
    assert (per.t == 1).all() and (per.s == 1).all()                       # one type and one sample per image
    assert (df.groupby('cell_type').id.nunique().reindex(CELL_TYPES) == [3, 3, 6]).all()   # real proportions
    assert df.plate_time.str.fullmatch(r'\d\dh\d\dm00s').all()
    assert df.elapsed_timedelta.str.fullmatch(r'\d+ days \d\d:\d\d:00').all()
    assert pd.to_datetime(df.sample_date).between('2019-01-01', '2021-12-31').all()
    hours = df.plate_time.str.slice(0, 2).astype(int) + df.plate_time.str.slice(3, 5).astype(int) / 60
    assert np.allclose(hours, pd.to_timedelta(df.elapsed_timedelta).dt.total_seconds() / 3600)
    assert not list(root.rglob('*.tmp*'))                                  # atomic writes left no temporaries


def test_deterministic_by_seed(tmp_path):
    kw = dict(n_images=4, image_shape=(64, 80), n_test=1, n_semi=1)
    a, b, c = (make_competition(tmp_path / n, seed=s, **kw) for n, s in (('a', 5), ('b', 5), ('c', 6)))
    assert (a / 'train.csv').read_bytes() == (b / 'train.csv').read_bytes() != (c / 'train.csv').read_bytes()
    for p in sorted((a / 'train').glob('*.png')):
        assert p.read_bytes() == (b / 'train' / p.name).read_bytes()


def test_n_images_total_or_dict():
    assert _split_counts(12, CELL_TYPES, [155, 131, 320]) == {'shsy5y': 3, 'astro': 3, 'cort': 6}
    assert sum(_split_counts(100, CELL_TYPES, [155, 131, 320]).values()) == 100
    assert _split_counts({'astro': 2}, CELL_TYPES, [1, 1, 1]) == {'shsy5y': 0, 'astro': 2, 'cort': 0}
    with pytest.raises(ValueError, match='unknown cell types'): _split_counts({'neuron': 2}, CELL_TYPES, [1, 1, 1])


def test_statistics_at_full_size():
    "Per-type mean cells per image and mean area within a factor 1.5 of the real means (masks of 8 images per type)."
    for t, (cells, area) in REAL.items():
        sets = [synth_instances(t, [11, k]) for k in range(8)]
        n = np.mean([len(s) for s in sets]); a = np.concatenate([s.areas for s in sets]).mean()
        assert 1 / 1.5 < n / cells < 1.5, (t, n)
        assert 1 / 1.5 < a / area < 1.5, (t, a)
        lo, hi = STYLES[t].n_range
        assert all(0.5 * lo <= len(s) <= hi for s in sets), (t, [len(s) for s in sets])


def test_full_size_folder_and_speed(full):
    root, per_image = full
    df = pd.read_csv(root / 'train.csv')
    for t, g in df.groupby('cell_type'):
        n = g.groupby('id').size()
        lo, hi = {'shsy5y': (100, 800), 'astro': (10, 600), 'cort': (10, 100)}[t]
        assert n.between(lo, hi).all(), (t, n.tolist())
        inst = Instances.from_rles(g.annotation, FULL_SHAPE)
        assert 1 / 1.5 < inst.areas.mean() / REAL[t][1] < 1.5


def _aspect(inst):
    "Long/short axis ratio per instance from second moments."
    p, own, w = inst.pixels(), inst.pixel_owner(), inst.shape[1]
    y, x = (p // w).astype(float), (p % w).astype(float)
    n = np.bincount(own); m = lambda v: np.bincount(own, v) / n
    my, mx = m(y), m(x)
    syy, sxx, sxy = m(y * y) - my ** 2, m(x * x) - mx ** 2, m(x * y) - mx * my
    tr, det = syy + sxx, syy * sxx - sxy ** 2
    l1 = tr / 2 + np.sqrt(np.maximum(tr ** 2 / 4 - det, 0)); l2 = tr / 2 - np.sqrt(np.maximum(tr ** 2 / 4 - det, 0))
    return np.sqrt(l1 / np.maximum(l2, 1e-9))


def _touching_fraction(inst):
    "Fraction of cells with a 4-neighbour pixel belonging to another cell."
    lab = inst.to_label_image()
    pairs = [(lab[1:], lab[:-1]), (lab[:, 1:], lab[:, :-1])]
    touch = np.zeros(len(inst) + 1, bool)
    for a, b in pairs:
        d = (a != b) & (a > 0) & (b > 0)
        touch[a[d]] = True; touch[b[d]] = True
    return touch[1:].mean()


def test_cell_type_shapes():
    sh, astro, cort = (synth_instances(t, 21) for t in CELL_TYPES)
    assert np.median(_aspect(sh)) > 1.6 and np.median(_aspect(cort)) < 1.3        # shsy5y elongated, cort round
    assert _touching_fraction(sh) > 0.4 and _touching_fraction(cort) < 0.2        # shsy5y dense and touching
    assert sh.overlap_count().max() == 1 and cort.overlap_count().max() == 1      # they touch but do not overlap
    assert astro.overlap_count().max() > 1                                        # astro labels overlap
    assert astro.areas.mean() > 3 * cort.areas.mean()                             # astro large
    hollow, n = 0, 0
    for a in [astro] + [synth_instances('astro', s) for s in (22, 23)]:
        for k in range(len(a)):
            x0, y0, x1, y1 = a.boxes[k].astype(int)
            m = a[k].to_masks()[0, y0:y1, x0:x1]
            hollow += ndimage.binary_fill_holes(m).sum() > 1.3 * m.sum()
        n += len(a)
    assert 2 <= hollow <= 0.15 * n, (hollow, n)                                  # a few hollow (broken) masks


def test_phase_contrast_look():
    for t, sign in (('shsy5y', -1), ('astro', -1), ('cort', 1)):
        img, inst = synth_image(t, 4)
        f = img.astype(float)
        cover = inst.overlap_count() > 0
        d_out = ndimage.distance_transform_edt(~cover)
        bg = f[d_out > 8]
        assert sign * (np.median(f[cover]) - np.median(bg)) > 8, t               # darker / brighter bodies
        assert np.median(f[(d_out >= 1) & (d_out <= 2)]) > np.median(bg) + 3, t   # bright halo
        blocks = f[:512, :704].reshape(8, 64, 11, 64).transpose(0, 2, 1, 3).reshape(88, -1)
        assert np.ptp(np.median(blocks, 1)) > 8, t                                # uneven illumination
        hp = f - cv2.GaussianBlur(f, (0, 0), 2)
        assert hp[d_out > 8].std() > 2, t                                         # noise
        dark = (f < np.median(bg) - 25) & (d_out > 6)                             # debris away from cells
        assert ndimage.label(dark)[1] >= 1, t


def test_transposing_decoder_fails(full):
    "The classic column-major decoder (`.T` / order='F') puts the masks where there are no cells."
    root, _ = full
    df = pd.read_csv(root / 'train.csv')
    id = df[df.cell_type == 'shsy5y'].id.iloc[0]
    img = cv2.imread(str(root / 'train' / f'{id}.png'), cv2.IMREAD_UNCHANGED).astype(float)
    h, w = FULL_SHAPE
    def decode(rle, transpose):
        s = np.array(rle.split(), int); flat = np.zeros(h * w, bool)
        for a, n in zip(s[0::2] - 1, s[1::2]): flat[a:a + n] = True
        return flat.reshape(w, h).T if transpose else flat.reshape(h, w)
    rles = df.annotation[df.id == id].tolist()[:40]
    right = np.stack([decode(r, False) for r in rles]); wrong = np.stack([decode(r, True) for r in rles])
    contrast = lambda m: img[m].mean() - img[~m].mean()
    assert contrast(right.any(0)) < -10 and abs(contrast(wrong.any(0))) < 0.3 * abs(contrast(right.any(0)))
    iou = (right & wrong).sum((1, 2)) / (right | wrong).sum((1, 2))
    assert iou.max() < 0.2


RELEASE_NAME = r'(A172|BT474|BV2|Huh7|MCF7|SHSY5Y|SkBr3|SKOV3)_Phase_[A-H]\d{1,2}_\d_\d\dd\d\dh00m_\d\.tif'


def _shoelace_and_extent(seg):
    "Independent: the polygon's area (shoelace) and extent [x, y, w, h] of a COCO polygon segmentation."
    area, pts = 0.0, []
    for p in seg:
        q = np.asarray(p, float).reshape(-1, 2); pts.append(q)
        area += 0.5 * abs(np.sum(q[:, 0] * np.roll(q[:, 1], -1) - np.roll(q[:, 0], -1) * q[:, 1]))
    q = np.concatenate(pts)
    return area, [q[:, 0].min(), q[:, 1].min(), np.ptp(q[:, 0]), np.ptp(q[:, 1])]


def test_livecell_layout(tmp_path):
    "The twin holds each fact of the real release (the same facts tests/test_realdata.py checks on real files)."
    root = make_livecell(tmp_path / 'LIVECell_dataset_2021', n_images=24, seed=2, image_shape=(96, 128))
    names, n_img = [], 0
    for split in ('train', 'val', 'test'):
        path = root / 'annotations' / 'LIVECell' / f'livecell_coco_{split}.json'
        doc = json.loads(path.read_text())
        assert doc['categories'] == [{'supercategory': 'cell', 'id': 1, 'name': 'cell'}]      # one category
        assert isinstance(doc['annotations'], list)
        c = COCO(str(path))
        imgs = c.loadImgs(c.getImgIds()); n_img += len(imgs)
        for im in imgs:
            names.append(im['file_name'])
            assert re.fullmatch(RELEASE_NAME, im['file_name'])                      # release names, no hyphens
            assert {'original_filename', 'url'} <= set(im)                          # extra image keys
            line = im['file_name'].split('_Phase')[0]
            # test images in per-line subfolders, train/val images flat (as in the release)
            tif = root / 'images' / ('livecell_test_images/' + line if split == 'test' else 'livecell_train_val_images') / im['file_name']
            arr = cv2.imread(str(tif), cv2.IMREAD_UNCHANGED)
            assert arr is not None and arr.dtype == np.uint8 and arr.shape == (96, 128), tif
            anns = c.loadAnns(c.getAnnIds(imgIds=[im['id']]))
            assert anns and all(isinstance(a['segmentation'], list) for a in anns)
            for a in anns:                                           # float area = the polygon's area, bbox its extent
                area, box = _shoelace_and_extent(a['segmentation'])
                assert isinstance(a['area'], float) and abs(a['area'] - area) < 1e-6
                assert all(isinstance(v, float) for v in a['bbox']) and np.allclose(a['bbox'], box)
            pixels = np.array([c.annToMask(a).sum() for a in anns]); areas = np.array([a['area'] for a in anns])
            perimeter = np.array([sum(np.linalg.norm(np.diff(np.vstack([q, q[:1]]), axis=0), axis=1).sum()
                                      for q in (np.reshape(p, (-1, 2)) for p in a['segmentation'])) for a in anns])
            assert (np.abs(pixels - areas) <= 0.5 * perimeter + 1).all()    # the rule the real files follow
        # per-line files: the same images and annotations as the full file, split by line
        per_line = [json.loads((root / 'annotations' / 'LIVECell_single_cells' / t.lower() / f'{split}.json').read_text())
                    for t in LIVECELL_TYPES]
        assert sorted(i['id'] for d in per_line for i in d['images']) == sorted(i['id'] for i in doc['images'])
        assert sorted(a['id'] for d in per_line for a in d['annotations']) == sorted(a['id'] for a in doc['annotations'])
        for t, d in zip(LIVECELL_TYPES, per_line): assert all(i['file_name'].startswith(t + '_') for i in d['images'])
    assert n_img == 24 and {n.split('_Phase')[0] for n in names} == set(LIVECELL_TYPES)


def test_livecell_dict_annotations_and_paper_names(tmp_path):
    a = make_livecell(tmp_path / 'a', n_images={'SH-SY5Y': 2, 'BV-2': 1}, seed=3, image_shape=(48, 64))
    b = make_livecell(tmp_path / 'b', n_images={'SHSY5Y': 2, 'bv2': 1}, seed=3, image_shape=(48, 64), annotations_as='dict')
    for s in ('train', 'val', 'test'):
        da = json.loads((a / 'annotations' / 'LIVECell' / f'livecell_coco_{s}.json').read_text())
        db = json.loads((b / 'annotations' / 'LIVECell' / f'livecell_coco_{s}.json').read_text())
        assert isinstance(db['annotations'], dict) and list(db['annotations'].values()) == da['annotations']
        assert db['images'] == da['images']
    assert {p.name.split('_Phase')[0] for p in a.rglob('*.tif')} == {'SHSY5Y', 'BV2'}


def test_competition_with_livecell(tmp_path):
    "The competition twin: duplicated cort annotations, semi-supervised names as released, LIVECell copy inside."
    root = make_competition(tmp_path, n_images={'cort': 4, 'shsy5y': 1, 'astro': 1}, seed=0, image_shape=(160, 224),
                            n_test=1, n_semi=4, livecell=8)
    lc = root / 'LIVECell_dataset_2021'
    assert (lc / 'annotations' / 'LIVECell' / 'livecell_coco_train.json').is_file()
    # the competition's copy: per-line files named livecell_<line>_<split>.json, train/val images per line
    assert (lc / 'annotations' / 'LIVECell_single_cells' / 'shsy5y' / 'livecell_shsy5y_train.json').is_file()
    assert all(p.parent.name == p.name.split('_Phase')[0] for p in (lc / 'images').rglob('*.tif'))
    df = pd.read_csv(root / 'train.csv')
    dup = df.duplicated(['id', 'annotation'], keep=False)
    assert dup.any() and set(df.cell_type[dup]) == {'cort'}                  # duplicated cort annotations only
    semi = sorted(p.stem for p in (root / 'train_semi_supervised').glob('*.png'))
    assert len(semi) == 4 and all(re.fullmatch(
        r'(shsy5y\[diff\]|astro\[hippo\]|cort\[pre-treat\])_[A-H]\d{1,2}-\d_Vessel-\d+_\d{4}-\d\d-\d\d_\d\dh\d\dm00s_Ph_\d', s)
        for s in semi), semi
    assert all(s.split('[')[0] in ('shsy5y', 'astro', 'cort') for s in semi)     # the type as public notebooks parse it
    assert df.sample_id.str.split('_').str[0].isin(['shsy5y[diff]', 'astro[hippo]', 'cort[pre-treat]']).all()


def test_livecell_deterministic(tmp_path):
    a, b = (make_livecell(tmp_path / n, n_images=8, seed=4, image_shape=(48, 64)) for n in 'ab')
    files = sorted(p.relative_to(a) for p in a.rglob('*') if p.is_file())
    assert files == sorted(p.relative_to(b) for p in b.rglob('*') if p.is_file()) and len(files) == 8 + 3 + 8 * 3
    assert all((a / f).read_bytes() == (b / f).read_bytes() for f in files)
