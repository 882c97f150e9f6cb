"""Export a trained adapter for use outside tunelab: ``merge`` (a plain Hugging Face model
with the adapter merged in), ``gguf`` (one .gguf file) with ``ollama`` (its Modelfile),
and ``readback`` (the GGUF read back by independent readers, for the tests and the bench).
"""
