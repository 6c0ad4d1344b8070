"""Render doppelgänger pair datasets."""
