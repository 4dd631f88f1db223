"""Hugging Face: GPT-2 checkpoints and tokenizer files, both ways."""
