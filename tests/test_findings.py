"""The settings the EDA derives from the real competition images (`cellseg_nb.findings.derive_settings`) are the
ones the recipes and the library ship, or a stated reason (`findings.REASONS`) explains the difference; the
per-cell statistics agree with dense-mask computations on a real image.

Needs `../shared/realdata` (CI has it); a user's clone skips, naming the missing path."""
from pathlib import Path
import numpy as np, pandas as pd, pytest
from scipy import ndimage
from cellseg_nb.data import SartoriusData, LiveCellData
from cellseg_nb.findings import cell_stats, image_stats, derive_settings, type_table, REASONS, DUPLICATE_IOU

REAL = Path(__file__).resolve().parents[1].parent / 'shared' / 'realdata'
COMP = REAL / 'sartorius_train405'
LIVECELL = [(REAL / 'livecell_test15' / 'LIVECell_dataset_2021', 'test'), (REAL / 'livecell_val5' / 'LIVECell_dataset_2021', 'val')]


@pytest.fixture(scope='module')
def real():
    if not (COMP / 'train.csv').is_file():
        pytest.skip(f"real competition images missing: {COMP} (CI provides ../shared beside the clone; a user's clone "
                    f"does not)")
    ds = SartoriusData(COMP)
    lc = pd.concat([cell_stats(LiveCellData(root, split)) for root, split in LIVECELL])
    return ds, cell_stats(ds), image_stats(ds), lc


def test_settings_match_or_are_explained(real):
    "Every derived setting agrees with the shipped one, or REASONS says why not; no reason is left over."
    ds, cells, images, lc = real
    assert len(cells) == 29088 and cells.id.nunique() == 405
    d = derive_settings(cells, images, 'competition', livecell_cells=lc)
    bad = d[~d.agrees]
    assert set(bad.setting) <= set(REASONS), f"disagreements without a reason: {sorted(set(bad.setting) - set(REASONS))}"
    assert set(REASONS) <= set(bad.setting), f"reasons for settings that now agree: {sorted(set(REASONS) - set(bad.setting))}"
    must_agree = {'model.detections_per_img', 'model.scale', 'model.anchor_sizes', 'cellpose.diam_mean',
                  'cpose.DIAMETER_RANGE', 'nms_iou', 'model.image_mean'}
    assert must_agree <= set(d.setting[d.agrees])
    got = d.set_index('setting').shipped
    assert got['model.anchor_sizes'] == (16, 32, 64, 128, 256) and got['model.scale'] == 2.0


def test_cell_stats_against_dense_masks(real):
    "Overlap, touch, holes, border, duplicates and sizes of one real image of each type, from dense masks."
    ds, cells, images, lc = real
    for ct in ('cort', 'astro', 'shsy5y'):
        iid = min(i for i in ds.ids if ds.cell_type(i) == ct and ds.meta.n_cells[i] < 120)
        m = ds.instances(iid).to_masks().astype(bool)
        c = cells[cells.id == iid].sort_values('cell')
        cnt = m.sum(0)
        assert (c.area.values == m.sum((1, 2))).all()
        assert c.overlapping.tolist() == [bool((cnt[x] > 1).any()) for x in m]
        touch = [bool((ndimage.binary_dilation(x) & ((cnt - x) > 0)).any()) for x in m]
        assert c.touching.tolist() == touch
        assert c.hole_px.tolist() == [int(ndimage.binary_fill_holes(x).sum() - x.sum()) for x in m]
        assert c.border.tolist() == [bool(x[0].any() or x[-1].any() or x[:, 0].any() or x[:, -1].any()) for x in m]
        assert c.pieces.tolist() == [ndimage.label(x, np.ones((3, 3)))[1] for x in m]
        inter = np.einsum('ihw,jhw->ij', m.astype(np.float32), m.astype(np.float32))
        a = np.diag(inter); iou = inter / (a[:, None] + a[None] - inter); np.fill_diagonal(iou, 0)
        assert np.allclose(c.best_iou.values, iou.max(1))
        img = ds.image(iid).astype(np.float64)
        s = images.set_index('id').loc[iid]
        assert np.isclose(s['mean'], img.mean()) and np.isclose(s.cell_mean, img[cnt > 0].mean())


def test_real_findings(real):
    "The findings the EDA states: duplicated cort annotations, hollow astro masks, densest shsy5y."
    ds, cells, images, lc = real
    t = type_table(cells)
    assert t['hollow %'].idxmax() == 'astro' and t.loc['astro', 'hollow %'] > 20
    dup = cells[cells.best_iou > DUPLICATE_IOU].groupby('id').cell_type.first()
    assert (dup == 'cort').sum() >= 4                      # duplicated cort annotations
    assert t['cells/image max'].idxmax() == 'shsy5y' and t.loc['shsy5y', 'cells/image max'] == ds.meta.n_cells.max()
    assert np.allclose(images['mean'], 128, atol=0.5)        # the competition's images are pre-centred
