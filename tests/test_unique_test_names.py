"""Test modules have unique basenames across tests/ and netns_tests/.

Neither folder is a package, so pytest imports each test file by its basename; two files
with one name make the second one a collection error ("import file mismatch") in the
full run, although each folder alone runs fine.
"""

from collections import Counter
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def test_test_module_basenames_are_unique():
    names = Counter(p.name for folder in ("tests", "netns_tests")
                    for p in (ROOT / folder).glob("test_*.py"))
    assert [n for n, c in names.items() if c > 1] == []
