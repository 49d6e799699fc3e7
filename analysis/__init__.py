"""LoRA Rank Lab: load LoRA adapters, compute exact spectra, allocate ranks with PARA, export.

The library behind the Streamlit app and the CLI. It never imports streamlit and never prints.
"""
