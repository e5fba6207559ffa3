"""Each benchmark writes its own section of benchmarks/RESULTS.md and keeps the others'
(history.py once replaced the whole file)."""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "benchmarks"))
from results_md import write_section


def test_a_section_is_replaced_where_it_is_and_the_others_are_kept(tmp_path):
    path = tmp_path / "RESULTS.md"
    path.write_text("# Cost growth\n\nold figures\n\n# Lean and fast\n\n## Now\n\nkept\n")
    write_section(["# Cost growth", "", "new figures"], path)
    write_section(["# The status page", "", "added"], path)
    assert path.read_text() == ("# Cost growth\n\nnew figures\n\n# Lean and fast\n\n## Now\n\nkept\n\n"
                                "# The status page\n\nadded\n")


def test_the_first_section_of_a_new_file(tmp_path):
    write_section(["# Only", "", "this"], tmp_path / "RESULTS.md")
    assert (tmp_path / "RESULTS.md").read_text() == "# Only\n\nthis\n"
