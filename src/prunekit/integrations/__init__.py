"""Bridges to other libraries' model formats, each imported only when used (the library
it needs is an optional extra: ``pip install prunekit[hf]`` for Hugging Face)."""
