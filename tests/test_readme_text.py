"""The README reads as a newcomer pastes it: commands by path, one heading per section, each
table after the sentence that introduces it."""

from __future__ import annotations

import re

from tests.fixtures import REPO_ROOT

README = (REPO_ROOT / "README.md").read_text()


def _shell_blocks() -> list[str]:
    return re.findall(r"```sh\n(.*?)```", README, flags=re.S)


def test_shell_examples_call_graft_by_path() -> None:
    """Outside ``## The CLI``'s synopsis (read with the venv activated), a command line that
    runs ``graft`` calls ``.venv/bin/graft``, as the README promises."""
    synopsis_start = README.index("## The CLI")
    synopsis_end = README.index("\n## ", synopsis_start + 1)
    bare = []
    for block in _shell_blocks():
        if synopsis_start < README.index(block) < synopsis_end:
            continue
        for line in block.splitlines():
            # A command word `graft` at the start, or after `VAR=value ` prefixes.
            if re.match(r"^(?:[A-Z_]+=\S+\s+)*graft\s", line):
                bare.append(line)
    assert bare == []


def test_each_section_heading_appears_once() -> None:
    headings = re.findall(r"^## .+$", README, flags=re.M)
    assert len(headings) == len(set(headings))
    assert headings.count("## Safety") == 1


def test_the_performance_tables_follow_their_preambles() -> None:
    measured = README.index("Measured on this project's VM")
    after = README[measured:].split("\n\n", 2)
    assert after[1].startswith("| set ")  # the main table, right after its preamble
    first_job = README.index("The first job of a fresh `graft serve`")
    assert first_job < measured
    assert README[first_job:].split("\n\n", 2)[1].startswith("| tree ")
    # Every table starts with a header row and its separator.
    for table in re.findall(r"(?:^\|.*\|\n)+", README, flags=re.M):
        assert re.match(r"^\|[-| :]+\|$", table.splitlines()[1]), table.splitlines()[0]
