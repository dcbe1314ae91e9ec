"""Mapping many scenes: ``satseg map`` (scene lists, shares, done markers), the
mosaic over the scene maps and area tables by region and period."""
