"""Using a trained model: loading it, KV-cache generation, samplers, compiled decoding."""
