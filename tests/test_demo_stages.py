"""The demo's named stages (`pipeline.demo_data` -> `demo_predict` -> `demo_tune` -> `demo_evaluate` ->
`demo_submit` -> `write_report`) pass typed results and write the files the result describes. Run with the classical
Otsu predictor as the 'model' (no training) so that it costs seconds; the full path with both trained models runs
in `tests/test_kaggle_kernel.py` (`cellseg demo --quick`) and twice in `tests/test_reproducible.py` (slow).
Cost: about 10 CPU-seconds."""
import numpy as np
import pandas as pd
import pytest

from cellseg_nb.pipeline import (ModelPredictor, DemoSplit, DemoModels, DemoTuning, DemoEvaluation, DemoResult, demo_data,
                                 demo_predict, demo_tune, demo_evaluate, demo_submit, write_report)
from cellseg_nb.inference import threshold_predictor, postprocess_all, load_predictions
from cellseg_nb.metric import evaluate
from cellseg_nb.config import get_recipe
from cellseg_nb.submission import validate_submission


def test_stages_chain_and_agree_with_their_files(tmp_path):
    split = demo_data(tmp_path, n_images=12, image_shape=(64, 64), n_folds=3, seed=0)
    assert isinstance(split, DemoSplit)
    ids = split.train_ids + split.tune_ids + split.test_ids
    assert sorted(ids) == sorted(split.data.ids) and len(set(ids)) == len(ids)            # a partition of the images
    samples = split.data.meta.sample_id
    assert not set(samples[split.test_ids]) & set(samples[split.train_ids + split.tune_ids])   # folds by sample
    from cellseg_nb.celltypes import class_id
    type_of = {split.data.image(i).tobytes(): split.data.cell_type(i) for i in split.data.ids}
    for i in split.data.test_ids: type_of[split.data.test_image(i).tobytes()] = 'astro'

    def otsu_with_class(image):                       # Otsu cells labelled with the image's class, as a model labels them
        cells = threshold_predictor(image)
        return cells.with_(labels=np.full(len(cells), class_id(type_of[image.tobytes()]), np.int64))
    models = DemoModels({'otsu': ModelPredictor('otsu', otsu_with_class),
                         'baseline': ModelPredictor('baseline', threshold_predictor)}, {})
    assert models.models == ['otsu']
    raw = demo_predict(split, models, tmp_path, progress=False)
    assert set(raw) == {'otsu', 'baseline'} and set(raw['otsu']) == set(split.tune_ids + split.test_ids)
    back = load_predictions(tmp_path / 'predictions' / 'otsu_raw.csv')                     # the written file = the result
    assert all(back[i].to_rles() == raw['otsu'][i].to_rles() for i in raw['otsu'])
    tuning = demo_tune(split, raw)
    assert isinstance(tuning, DemoTuning) and set(tuning.settings) == set(tuning.tables) == {'otsu', 'baseline'}
    ev = demo_evaluate(split, raw, tuning)
    assert isinstance(ev, DemoEvaluation) and ev.best == 'otsu'
    gt = split.truth(split.test_ids)                                                        # an independent scoring
    ref = evaluate(gt, postprocess_all({i: raw['otsu'][i] for i in split.test_ids}, tuning.settings['otsu']), split.types)
    assert ev.summary.loc[('otsu', 'overall'), 'mAP'] == pytest.approx(ref.summary.loc['overall', 'mAP'], abs=1e-12)
    assert set(ev.summary.index.get_level_values(0)) == {'otsu (default settings)', 'otsu', 'baseline (Otsu, true cell type)'}
    sub = demo_submit(tmp_path, models.predictors[ev.best], tuning.settings[ev.best])
    assert sub.path == tmp_path / 'submission.csv' and (tmp_path / 'postprocess.yaml').is_file()
    assert validate_submission(sub.path, split.data.test_ids, shape=(64, 64)).ok
    res = DemoResult(tmp_path, get_recipe('quick'), {'seed': 0}, split, models, raw, tuning, ev, sub, {'total': 0.0})
    assert res.summary is ev.summary and res.best == 'otsu'
    path = write_report(res)
    assert path == res.report == tmp_path / 'report.md' and set(res.figures) >= {'map_per_type', 'iou_hist'}
    text = path.read_text()
    assert '**otsu**' in text and str(int(sub.table.n_cells.sum())) + ' cells' in text
    assert all(p.is_file() for p in res.figures.values())
    assert not list(tmp_path.rglob('*.tmp'))                                                # no temporary file left
