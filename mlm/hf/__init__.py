"""Interchange with 🤗 transformers: exact weight mappings (`mapping`), masked-LM export/import
(`convert`) and the export of fine-tuned sequence / token classifiers (`heads`)."""
