"""Scoring exam-level predictions: metrics, bootstrap intervals, ROC curves, comparisons."""
