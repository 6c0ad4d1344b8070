"""Using a trained model: load it, embed audio, probe it, serve the HEAR API, export it,
and evaluate it downstream on HEAR-layout tasks."""
