"""Scoring a model: perplexity on held-out text, multiple-choice benchmarks, lm-evaluation-harness tasks."""
