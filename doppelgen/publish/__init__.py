"""Publishing a rendered dataset: verify, info, export (WAVs and pictures) and the dataset card."""
