"""The GPT model: its typed config and presets (`config`), and `GPTModel` itself (`gpt`)."""
