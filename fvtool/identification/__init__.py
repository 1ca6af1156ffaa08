"""Closed-set identification: does a classifier on the embeddings name a person's held-out images?

closed_set.py  seeded per-identity train/test split; logistic regression, nearest class mean and
               1-NN classifiers on L2-normalised embeddings; top-1/top-5 accuracy (pure arrays)
stage.py       the `fvtool identify` stage: embeddings files in, one JSON per file and classifier out
"""
