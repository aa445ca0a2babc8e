"""Data layer: SartoriusData, LiveCellData and to_coco on real files on disk, checked against pycocotools and an
independent per-cell decoder; bad input names file, image id and row; folds; the real-size load budget."""
import json, shutil, sys, time
from pathlib import Path
import numpy as np, pandas as pd, cv2, pytest
from pycocotools import mask as mask_util
from pycocotools.coco import COCO
from cellseg_nb.instances import Instances
from cellseg_nb.celltypes import CELL_TYPES, LIVECELL_TYPES, class_id, livecell_class_id
from cellseg_nb.synth import make_competition, make_livecell, write_image
from cellseg_nb.data import SartoriusData, LiveCellData, to_coco, read_image

SHAPE = (96, 128)


def decode_one(rle, shape):
    "Independent reference decoder: row-major, 1-indexed, one cell at a time."
    s = np.array(rle.split(), np.int64); flat = np.zeros(shape[0] * shape[1], bool)
    for a, n in zip(s[0::2] - 1, s[1::2]): flat[a:a + n] = True
    return flat.reshape(shape)


@pytest.fixture(scope='module')
def comp(tmp_path_factory):
    root = tmp_path_factory.mktemp('comp')
    return make_competition(root, n_images={'shsy5y': 6, 'astro': 6, 'cort': 8}, seed=7, image_shape=SHAPE,
                            n_test=2, n_semi=2)


def copy_with(comp, tmp_path, edit=None):
    "A copy of the folder with train.csv replaced by `edit(df)`."
    dst = tmp_path / 'copy'
    shutil.copytree(comp, dst)
    if edit is not None: edit(pd.read_csv(comp / 'train.csv', dtype=str, keep_default_na=False)).to_csv(dst / 'train.csv', index=False)
    return dst


def test_instances_match_independent_decoder(comp):
    d = SartoriusData(comp)
    df = pd.read_csv(comp / 'train.csv')
    assert d.ids == list(dict.fromkeys(df.id)) and len(d) == 20
    for id in d.ids:
        g = df[df.id == id]
        gt = d.instances(id)
        assert gt.shape == SHAPE and len(gt) == len(g)
        assert np.array_equal(gt.to_masks(), np.stack([decode_one(r, SHAPE) for r in g.annotation]))
        assert (gt.labels == class_id(g.cell_type.iloc[0])).all() and gt.meta['cell_type'] == g.cell_type.iloc[0]
        img = d.image(id)
        assert img.dtype == np.uint8 and np.array_equal(img, cv2.imread(str(comp / 'train' / f'{id}.png'), 0))
    m = d.meta
    assert list(m.columns[:6]) == ['cell_type', 'sample_id', 'plate_time', 'sample_date', 'elapsed_timedelta', 'n_cells']
    assert m.n_cells.sum() == len(df) and (m.n_cells == df.groupby('id').size().reindex(m.index)).all()
    assert len(d.test_ids) == 2 and d.test_image(d.test_ids[0]).shape == SHAPE
    assert len(d.semi_supervised_ids) == 2 and d.semi_supervised_image(d.semi_supervised_ids[0]).shape == SHAPE
    assert d.validate() is d
    with pytest.raises(ValueError, match="unknown image id 'nope'"): d.instances('nope')


def test_overlaps_are_kept(comp):
    d = SartoriusData(comp)
    astro = [id for id in d.ids if d.meta.cell_type[id] == 'astro']
    assert max(d.instances(id).overlap_count().max() for id in astro) > 1


def test_shuffled_rows_and_mixed_sizes(comp, tmp_path):
    "Rows of an image need not be contiguous; images of two sizes decode in their own shapes."
    d = SartoriusData(comp)
    df = pd.read_csv(comp / 'train.csv', dtype=str, keep_default_na=False)
    dst = copy_with(comp, tmp_path, lambda x: x.sample(frac=1, random_state=0))
    s = SartoriusData(dst)
    assert sorted(s.ids) == sorted(d.ids)
    for id in d.ids: assert sorted(s.instances(id).to_rles()) == sorted(d.instances(id).to_rles())
    # one extra image of another size
    big = tmp_path / 'big.png'
    mask = np.zeros((50, 60), bool); mask[10:20, 5:9] = True
    extra = pd.DataFrame([dict(df.iloc[0], id='otherimage01', annotation=Instances.from_masks(mask[None]).to_rles()[0],
                               width='60', height='50')])
    dst2 = tmp_path / 'mixed'; shutil.copytree(comp, dst2)
    pd.concat([extra, df]).to_csv(dst2 / 'train.csv', index=False)
    write_image(dst2 / 'train' / 'otherimage01.png', np.zeros((50, 60), np.uint8))
    m = SartoriusData(dst2)
    assert m.instances('otherimage01').shape == (50, 60) and np.array_equal(m.instances('otherimage01').to_masks()[0], mask)
    assert m.image('otherimage01').shape == (50, 60) and m.image_shape == SHAPE
    for id in d.ids: assert m.instances(id).to_rles() == d.instances(id).to_rles()


def _set(col, value, row=3):
    def edit(df): df.loc[row, col] = value; return df
    return edit


@pytest.mark.parametrize('edit, pattern', [
    (lambda df: df.drop(columns=['cell_type']), r"train.csv: missing columns \['cell_type'\]"),
    (lambda df: df.drop(columns=['annotation', 'width']), r"missing columns \['annotation', 'width'\]"),
    (_set('cell_type', 'neuron'), r"train.csv: row 5 \(image id '[0-9a-f]{12}'\): unknown cell type 'neuron'"),
    (_set('annotation', '1 2 3'), r"row 5 \(image id '[0-9a-f]{12}'\): malformed RLE: odd number of tokens"),
    (_set('annotation', '1 x'), r"row 5 .*malformed RLE: token 'x' is not an integer"),
    (_set('annotation', '0 4'), r"row 5 .*malformed RLE: start 0 < 1"),
    (_set('annotation', f'{SHAPE[0] * SHAPE[1]} 5'), r"row 5 .*malformed RLE: run .* past the image end"),
    (_set('annotation', '10 5 12 3'), r"row 5 .*malformed RLE: runs not ascending or overlapping"),
    (_set('annotation', ''), r"row 5 .*empty annotation"),
    (_set('width', 'abc'), r"row 5 .*width 'abc' is not a positive integer"),
    (_set('width', '200'), r"row 5 .*width '200' differs from '128'"),
    (_set('id', ''), r"row 5 .*empty image id"),
])
def test_bad_csv(comp, tmp_path, edit, pattern):
    dst = copy_with(comp, tmp_path, edit)
    with pytest.raises(ValueError, match=pattern): SartoriusData(dst)


def test_mixed_cell_types_in_one_image(comp, tmp_path):
    df = pd.read_csv(comp / 'train.csv')
    id = df.id[0]; other = next(t for t in CELL_TYPES if t != df.cell_type[0])
    row = int(np.flatnonzero(df.id == id)[1])
    dst = copy_with(comp, tmp_path, _set('cell_type', other, row))
    with pytest.raises(ValueError, match=rf"row {row + 2} \(image id '{id}'\): cell_type '{other}' differs"): SartoriusData(dst)


def test_bad_files(comp, tmp_path):
    with pytest.raises(ValueError, match='train.csv: missing'): SartoriusData(tmp_path / 'nowhere')
    dst = copy_with(comp, tmp_path)
    ids = SartoriusData(dst).ids
    (dst / 'train' / f'{ids[2]}.png').unlink()
    with pytest.raises(ValueError, match=rf"{ids[2]}.png: image file missing for image id '{ids[2]}' .*row \d+\); 1 of 20"):
        SartoriusData(dst)
    write_image(dst / 'train' / f'{ids[2]}.png', np.zeros((SHAPE[0] + 1, SHAPE[1]), np.uint8))
    d = SartoriusData(dst)
    with pytest.raises(ValueError, match=rf"\(image id '{ids[2]}', first in train.csv row \d+\): image is 97 x 128, expected 96 x 128"):
        d.image(ids[2])
    (dst / 'train' / f'{ids[2]}.png').write_bytes(b'\x89PNG broken')
    with pytest.raises(ValueError, match=rf"{ids[2]}.png \(image id '{ids[2]}', first in train.csv row \d+\): unreadable image"):
        d.image(ids[2])
    with pytest.raises(ValueError, match='unreadable image'): d.validate()
    tid = d.test_ids[0]
    colour = np.zeros(SHAPE + (3,), np.uint8); colour[..., 1] = 5
    cv2.imwrite(str(dst / 'test' / f'{tid}.png'), colour)
    with pytest.raises(ValueError, match=rf"{tid}.png \(test image id '{tid}'\): a colour image"): d.test_image(tid)
    ramp = (np.arange(SHAPE[0] * SHAPE[1]).reshape(SHAPE) * 5 + 300).astype(np.uint16)     # 16-bit: min..max -> 0..255
    cv2.imwrite(str(dst / 'test' / f'{tid}.png'), ramp)
    expect = np.round((ramp - 300.) * 255 / (ramp.max() - 300.)).astype(np.uint8)
    assert np.array_equal(d.test_image(tid), expect)
    (dst / 'test' / f'{tid}.png').unlink()                        # sample_submission.csv lists it: the id is named
    with pytest.raises(ValueError, match=rf"sample_submission.csv: test image id '{tid}' has no .*{tid}.png; 1 of"): d.test_ids


def test_folds(comp):
    d = SartoriusData(comp)
    for seed in range(4):
        f = d.folds(n_splits=5, seed=seed)
        assert list(f.index) == d.ids and set(f.fold) == set(range(5))
        assert (f.groupby('sample_id').fold.nunique() == 1).all()            # no sample in two folds
        assert (f.groupby('fold').cell_type.nunique() == 3).all()            # every fold holds every type
    partition = lambda f: sorted(sorted(g) for g in f.groupby('fold').groups.values())   # fold numbers aside
    assert d.folds(5, seed=2).equals(d.folds(5, seed=2))                                  # a function of the seed
    assert len({str(partition(d.folds(5, seed=s))) for s in range(4)}) == 4              # 4 seeds, 4 partitions
    assert d.folds(3, seed=0).fold.nunique() == 3
    with pytest.raises(ValueError, match='cannot make 7 folds'): d.folds(7)


def test_to_coco_round_trip(comp, tmp_path):
    d = SartoriusData(comp)
    ids = d.ids[::3]
    path = to_coco(d, tmp_path / 'out' / 'coco.json', ids=ids)
    c = COCO(str(path))
    assert [im['sartorius_id'] for im in c.loadImgs(c.getImgIds())] == ids
    assert {k: v['name'] for k, v in c.cats.items()} == {1: 'shsy5y', 2: 'astro', 3: 'cort'}
    for im in c.loadImgs(c.getImgIds()):
        gt = d.instances(im['sartorius_id'])
        anns = c.loadAnns(c.getAnnIds(imgIds=[im['id']]))
        masks = np.stack([c.annToMask(a) for a in anns]).astype(bool)
        assert np.array_equal(masks, gt.to_masks())
        assert [a['category_id'] for a in anns] == gt.labels.tolist()
        assert [a['area'] for a in anns] == gt.areas.tolist()
        assert np.allclose([a['bbox'] for a in anns], mask_util.toBbox([a['segmentation'] for a in anns]))
        back = Instances.from_coco([a['segmentation'] for a in anns], (im['height'], im['width']))
        assert back.to_rles() == gt.to_rles()
    assert not list((tmp_path / 'out').glob('.*tmp*'))


@pytest.fixture(scope='module')
def lc(tmp_path_factory):
    return make_livecell(tmp_path_factory.mktemp('lc') / 'LIVECell_dataset_2021', n_images=16, seed=1, image_shape=SHAPE)


def test_livecell_matches_pycocotools(lc):
    for split in ('train', 'val', 'test'):
        data = LiveCellData(lc, split)
        c = COCO(str(data.json))
        assert data.ids == c.getImgIds()
        for id in data.ids:
            img, inst, meta = data[id]
            ref = np.stack([c.annToMask(a) for a in c.loadAnns(c.getAnnIds(imgIds=[id]))]).astype(bool)
            assert np.array_equal(inst.to_masks(), ref)
            assert img.shape == SHAPE and meta['cell_type'] == c.imgs[id]['file_name'].split('_Phase')[0]
            assert (inst.labels == livecell_class_id(meta['cell_type'])).all()
    # the competition folder that holds LIVECell_dataset_2021, and the JSON file itself, work as roots
    assert LiveCellData(lc.parent, 'val').ids == LiveCellData(lc / 'annotations' / 'LIVECell' / 'livecell_coco_val.json').ids


def _write_coco(path, images, anns, cats=({'id': 1, 'name': 'cell'},)):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({'images': images, 'annotations': anns, 'categories': list(cats)}))
    return path


def test_livecell_rle_dict_annotations_and_category_types(tmp_path):
    "RLE (compressed and not) segmentations, annotations stored as a dict, cell type from the category name."
    rng = np.random.default_rng(0)
    masks = rng.random((3, 30, 40)) < 0.3
    write_image(tmp_path / 'images' / 'img_001.tif', np.zeros((30, 40), np.uint8))
    comp_rle = mask_util.encode(np.asfortranarray(masks[0].astype(np.uint8))); comp_rle['counts'] = comp_rle['counts'].decode()
    f = masks[1].ravel(order='F').astype(np.int8)
    d = np.flatnonzero(np.diff(np.concatenate([[0], f, [1 - f[-1]]])))
    raw = {'size': [30, 40], 'counts': np.diff(np.concatenate([[0], d])).tolist()}
    ys, xs = np.nonzero(masks[2]); poly = [[5., 5., 20., 5., 20., 15., 5., 15.]]
    anns = {str(i): {'id': i, 'image_id': 7, 'category_id': 6, 'segmentation': s, 'iscrowd': 0}
            for i, s in enumerate([comp_rle, raw, poly], 1)}
    path = _write_coco(tmp_path / 'livecell_coco_train.json', [{'id': 7, 'file_name': 'img_001.tif', 'height': 30, 'width': 40}],
                       anns, [{'id': 6, 'name': 'SH-SY5Y'}])
    data = LiveCellData(tmp_path, 'train')
    inst = data.instances(7)
    assert data.meta.cell_type[7] == 'SHSY5Y' and (inst.labels == 6).all()       # the paper's name -> the release's
    assert np.array_equal(inst.to_masks()[:2], masks[:2])
    assert np.array_equal(inst.to_masks()[2], mask_util.decode(mask_util.merge(mask_util.frPyObjects(poly, 30, 40))).astype(bool))


def test_livecell_bad_input(lc, tmp_path):
    dst = tmp_path / 'lc'; shutil.copytree(lc, dst)
    data = LiveCellData(dst, 'train')
    id = data.ids[0]; fn = data.file_name(id)
    tif = next((dst / 'images').rglob(fn))
    write_image(tif, np.zeros((10, 10), np.uint8))
    with pytest.raises(ValueError, match=rf"{fn} \(image id {id}\): image is 10 x 10, expected 96 x 128"): data.image(id)
    tif.unlink()
    with pytest.raises(ValueError, match=rf"image id {id}: file {fn} not found .*1 of"): LiveCellData(dst, 'train')
    with pytest.raises(ValueError, match='no livecell_coco_nope.json'): LiveCellData(dst, 'nope')
    p = _write_coco(tmp_path / 'x' / 'livecell_coco_train.json', [{'id': 1, 'file_name': 'Neuron_Phase_A1_1_00d00h00m_1.tif',
                                                                   'height': 5, 'width': 5}], [])
    with pytest.raises(ValueError, match=r"image id 1 \(Neuron_Phase.*\): unknown cell type"): LiveCellData(p)
    write_image(tmp_path / 'y' / 'A172_Phase_A1_1_00d00h00m_1.tif', np.zeros((5, 5), np.uint8))
    p = _write_coco(tmp_path / 'y' / 'livecell_coco_train.json', [{'id': 1, 'file_name': 'A172_Phase_A1_1_00d00h00m_1.tif',
                    'height': 5, 'width': 5}], [{'id': 9, 'image_id': 1, 'category_id': 1, 'segmentation': [[1, 2, 3]]}])
    with pytest.raises(ValueError, match=r"image id 1 \(A172_Phase.*\), annotation 9: bad segmentation"): LiveCellData(p).instances(1)
    p.write_text('{"images": [')
    with pytest.raises(ValueError, match='unreadable JSON'): LiveCellData(p)


def test_real_size_load_budget(tmp_path):
    "train.csv of the real size (73,585 cells, 606 images): loaded and split into Instances fast, runs < 100 MB."
    sys.path.insert(0, str(Path(__file__).parents[1] / 'bench'))
    from bench_data import make_real_size_csv, ours
    df = make_real_size_csv(tmp_path)
    assert len(df) == 73_585 and df.id.nunique() == 606
    data, gt = ours(tmp_path)
    assert sum(len(g) for g in gt.values()) == 73_585
    kept = sum(a.nbytes for a in (data._starts, data._lengths, data._run_offsets, data._cell_offsets))
    assert kept < 100e6


def test_livecell_line_selection_for_training(lc):
    "The training entry points pick LIVECell lines by any spelling; the classes stay the 8 lines (ids unchanged)."
    from cellseg_nb.maskrcnn_train import open_source, livecell_dataset
    assert livecell_dataset(None) == 'livecell' and livecell_dataset('sh-sy5y, a172') == 'livecell:A172,SHSY5Y'
    tr, tr_ids, va, va_ids, names = open_source(lc, livecell_dataset('shsy5y,bv-2'))
    assert names == LIVECELL_TYPES and set(tr.meta.cell_type) == {'BV2', 'SHSY5Y'} >= set(va.meta.cell_type)
    full = LiveCellData(lc, 'train')
    assert sorted(tr_ids) == sorted(i for i in full.ids if full.meta.cell_type[i] in ('BV2', 'SHSY5Y'))
    for i in tr_ids[:2]:
        assert tr.instances(i).to_rles() == full.instances(i).to_rles()
        assert (tr.instances(i).labels == LIVECELL_TYPES.index(tr.meta.cell_type[i]) + 1).all()
    with pytest.raises(ValueError, match="unknown LIVECell cell type 'neuron'"): open_source(lc, 'livecell:neuron')


def test_semi_supervised_names_and_duplicated_cort_annotations(comp):
    "Unlabelled images under their released names are listed and read; duplicated cort rows read as two masks."
    d = SartoriusData(comp)
    semi = d.semi_supervised_ids
    assert len(semi) == 2 and all(s.split('[')[0] in CELL_TYPES and '_Vessel-' in s for s in semi)
    assert all(d.semi_supervised_image(s).shape == SHAPE for s in semi)
    d.validate()                                                   # reads train, test and semi-supervised images
    df = pd.read_csv(comp / 'train.csv')
    dup = df[df.duplicated(['id', 'annotation'])]
    assert len(dup) and set(dup.cell_type) == {'cort'}
    i = dup.id.iloc[0]
    rles = d.instances(i).to_rles()
    assert sorted(rles) == sorted(df.annotation[df.id == i]) and len(set(rles)) < len(rles)


def test_every_source_satisfies_the_data_source_protocol(comp, lc, tmp_path):
    """SartoriusData, LiveCellData, Subset, PseudoLabelData, CombinedSource and ArraySource are `DataSource`s: each
    method answers for every id, consistently with the source's own files (image and masks of one shape, cell type
    and cell count as the CSV / JSON say)."""
    from cellseg_nb.data import DataSource, CountsCells, Subset, count_cells
    from cellseg_nb.pseudo import PseudoLabelData, CombinedSource, write_pseudo_labels
    from cellseg_nb.maskrcnn_train import ArraySource
    d, l = SartoriusData(comp), LiveCellData(lc, 'val')
    df = pd.read_csv(comp / 'train.csv', dtype=str, keep_default_na=False)
    semi = d.semi_supervised_ids[0]
    rows = df[df.id == d.ids[0]].assign(id=semi, pseudo=True, score=0.9)       # a pseudo-label file of one image
    pl = PseudoLabelData(write_pseudo_labels(rows, tmp_path / 'pseudo.csv'), comp)
    combined = CombinedSource([(d, d.ids[1:4]), (pl, pl.ids)])
    arrays = ArraySource([d.image(i) for i in d.ids[:2]], [d.instances(i) for i in d.ids[:2]], cell_types=['astro', None])
    sources = [d, l, d.subset(d.ids[::3]), l.subset(l.ids[:2]).subset(l.ids[1:2]), pl, combined, arrays]
    truth_type = {**d.meta.cell_type.to_dict(), **l.meta.cell_type.to_dict(), semi: d.meta.cell_type[d.ids[0]],
                  '0': 'astro', '1': None}
    truth_n = {**df.id.value_counts().to_dict(), **l.meta.n_cells.to_dict(), semi: len(rows), '0': d.n_cells(d.ids[0]),
               '1': d.n_cells(d.ids[1])}
    for src in sources:
        assert isinstance(src, DataSource), src
        assert len(src.ids) > 0
        for i in src.ids:
            img, inst = src.image(i), src.instances(i)
            assert img.dtype == np.uint8 and img.shape == inst.shape
            assert src.cell_type(i) == truth_type[i], (src, i)
            assert len(inst) == truth_n[i], (src, i)
        assert count_cells(src) == sum(truth_n[i] for i in src.ids)
        if isinstance(src, CountsCells): assert [src.n_cells(i) for i in src.ids] == [truth_n[i] for i in src.ids]
    assert not isinstance(arrays, CountsCells) and isinstance(Subset(arrays, ['1']), CountsCells)
    assert Subset(arrays, ['1']).n_cells('1') == truth_n['1']
    with pytest.raises(ValueError, match="unknown image id 'nope'"): d.cell_type('nope')
    with pytest.raises(ValueError, match='not in the subset'): d.subset(d.ids[:1]).instances(d.ids[1])
    with pytest.raises(ValueError, match="subset ids unknown, e.g. 'nope'"): l.subset(['nope'])
