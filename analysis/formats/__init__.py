"""One reader per adapter format family: `peft` (PEFT and AdaLoRA folders, `.bin`), `kohya` (kohya and
diffusers single `.safetensors` files), `lr_lora` (LR-LoRA run records, read as dense-update modules). The
shared types and checks are in `base`; which reader takes a file is decided in one place,
`analysis.adapters.load_adapter`. No streamlit, no prints."""
