"""Training text and tokens: corpus sources, token shards on disk, batches, the tokenizer."""
