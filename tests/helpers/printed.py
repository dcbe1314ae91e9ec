"""Read back the aligned ``label: value`` summary lines a satseg command prints."""

from __future__ import annotations


def summary_lines(text: str) -> dict[str, str]:
    """{label: value} of every ``  label: value`` line (continuation rows, whose label is
    blank, are left out)."""
    rows: dict[str, str] = {}
    for line in text.splitlines():
        label, sep, value = line.partition(": ")
        if sep and label.strip():
            rows.setdefault(label.strip(), value.strip())
    return rows
