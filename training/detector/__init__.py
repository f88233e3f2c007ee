"""A fruit detector for orchard photos (apples and the tennis-ball size references hung in the canopy):
a centre-heatmap head (CenterNet, Zhou et al. 2019) on the pretrained EfficientNet-Lite0's stride-8
and stride-16 features.

    python -m training.detector --config training/configs/orchard_detector.yaml --out models/orchard-detector/0.1.0 \
        [--set train.epochs=10 ...]

Steps: config (saved with the artifact) -> frames, split by date -> augmented tiles, the frozen part of
the network run once on each (its outputs cached: the 2 CPU cores then only train the head and the
last blocks) -> train -> optional self-training round (confident unboxed apples ignored) -> threshold
per class on the val dates -> figures on the held-out dates -> ONNX (opset 17) with a parity check ->
metadata.json + README.md. inference/detector.py serves the result.

Split: ``tune_dates`` of bench/size_accuracy.py (the first half of the sorted dates) are the only
dates trained on or looked at; of them the last ``data.val_dates`` dates are val (threshold, design
choices), the rest train. The later dates are held out and scored once at the end.

Only tagged apples are boxed in the ecopom frames (about 12 per frame out of many more visible);
every tennis ball is boxed. An unboxed apple is therefore no negative: ``train.pseudo`` runs the
first model on the train frames and, for the second, takes the centres of confident apple detections
that match no box out of the loss (``ignore``). See the model card for what that means for the figures.

``model.backbone: tiny`` is a small random-init network trained end to end (tests only).

Modules, in the order of a run:

    config.py      DEFAULTS (every key a config may set), load_config, STRIDE
    frames.py      Frame, the ecopom frames, the split by date, the data record
    augment.py     augmented tiles (TileGeom, recolouring, photometric), normalise
    targets.py     a tile's boxes as CenterNet targets
    model.py       the network (Lite0Features, TinyFeatures, CentreHead, CentreNet, Exported)
    fit.py         the loss, the tile cache, the training loop, self-training: train_detector
    evaluation.py  predict_frames, match, average_precision, choose_threshold, evaluate, scale_sweep
    export.py      export (ONNX + parity), time_onnx, artifact_metadata
    audit.py       audit_sheet, apply_audit
    recipe.py      run: config to artifact
    card.py        the model card (README.md) from metadata.json
    command.py     the command line (``python -m training.detector``, through __main__.py)
"""
