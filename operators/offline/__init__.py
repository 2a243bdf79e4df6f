"""Offline work on the model: training, datasets, evaluation, baselines, k-NN recommenders and labels."""
