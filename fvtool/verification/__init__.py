"""Verification: scores from embeddings and the numbers papers report.

scoring.py    embeddings -> similarity scores (cosine, -Euclidean, -squared Euclidean)
metrics.py    bob-style rules over (impostor, genuine) scores: FAR thresholds, EERs, ROC/DET, AUC
kfold.py      LFW k-fold accuracy (insightface/facenet rules, exact variant), facenet VAL@FAR
allpairs.py   streaming all-pairs scoring without N^2 memory, exact at the operating points
bootstrap.py  identity-bootstrap intervals and paired comparisons
stage.py      the `fvtool verify` stage: files in, metrics.json/scores/curves out
record.py     metrics.json as one typed record (`VerifyMetrics`), for the stage and every reader
"""
