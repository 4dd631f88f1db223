"""`serve`: an OpenAI-style completions API and a web demo over HTTP."""
