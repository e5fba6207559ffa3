"""benchmarks/RESULTS.md holds one section per benchmark: each script replaces its own
section, where it is, and keeps the others."""

from __future__ import annotations

from pathlib import Path

RESULTS = Path(__file__).resolve().parent / "RESULTS.md"


def write_section(lines: list[str], path: Path = RESULTS) -> None:
    """`lines[0]` is the section's heading (`# ...`); the section runs to the next one."""
    heading = lines[0]
    text = path.read_text() if path.exists() else ""
    if heading in text:
        head, _, rest = text.partition(heading)
        following = rest.find("\n# ")
        text = head + "\n".join(lines) + "\n" + (rest[following:] if following >= 0 else "")
    else:
        text = text.rstrip("\n") + ("\n\n" if text else "") + "\n".join(lines) + "\n"
    path.write_text(text)
