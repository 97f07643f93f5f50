"""Interchange with 🤗 transformers: exact weight mappings (`mapping`) and export/import (`convert`)."""
