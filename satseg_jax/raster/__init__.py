"""Geo I/O: sample scene, band composition, window arithmetic, patches and masks.

Everything here reads and writes by windows: a whole scene is never held in memory.
"""
