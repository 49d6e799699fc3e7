"""UI glue shared by the pages (not a page folder: Streamlit lists only files directly in pages/)."""
