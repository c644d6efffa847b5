import itertools

import pytest
from dask.utils import key_split as dask_key_split

from dask_ipy.keys import key_prefix, key_split


@pytest.mark.parametrize("key, group", [
    ("x", "x"),
    ("inc-9f86d081884c7d659a2feaa0c55ad015", "inc"),
    (("inc-9f86d081884c7d659a2feaa0c55ad015", 3), "inc"),
    (("sum-aggregate-ab12f9", 0, 1), "sum-aggregate"),
    ("slow_inc-42", "slow_inc"),
    ("rechunk-merge-3b4e5f60-1", "rechunk-merge"),
    ("finalize-hlgfinalizecompute-0b1a2c3d4e", "finalize-hlgfinalizecompute"),
    (("sum-aggregate-1b3c9a0e1f5ad3a1b4d6e98e7cd5f2b1", 0, 1), "sum-aggregate"),
    (b"bytes-key", "bytes-key"),
    (17, "int"),
    (("",), ""),
])
def test_key_prefix(key, group):
    assert key_prefix(key) == group


def _reference_prefix(key):
    """key_prefix of a str key as it reads, word by word, with no shortcut."""
    words = key.split("-")
    kept = [words[0]] + [w for w in words[1:]
                         if not (w.isdigit() or len(w) >= 5 and not w.strip("0123456789abcdef")
                                 and not w.isalpha())]
    return "-".join(w for w in kept if w) or key


def test_key_prefix_same_for_every_shape_of_key():
    # The group of a name is remembered across keys: every mix of words gives what
    # reading the key word by word gives, in any order of calls.
    words = ["", "a", "inc", "0", "12", "abcde", "abc12", "ffff0", "ABCDE", "x_y",
             "9f86d081884c", "deadbeef"]
    for n in range(1, 5):
        for parts in itertools.product(words, repeat=n):
            key = "-".join(parts)
            for k in (key, (key, 1), key.encode()):
                assert key_prefix(k) == _reference_prefix(key), k


def test_key_split_is_dask_key_split():
    """The task prefix dask.distributed names settings by, without dask."""
    words = ["", "a", "inc", "0", "12", "abcde", "abc12", "ffff0", "ABCDE", "x_y",
             "9f86d081884c", "deadbeef", "database", "zzzzzzzz", "(x", "'x', 1)",
             "<mod.cls object at 0x1", "_x_", "ab,cd", "ae05086432ca935f6eba409a8ecd4896"]
    for n in range(1, 4):
        for parts in itertools.product(words, repeat=n):
            key = "-".join(parts)
            for k in (key, (key, 1), ((key, 2), 1), key.encode()):
                assert key_split(k) == dask_key_split(k), k
    assert [key_split(k) for k in (None, 17, 1.5)] == ["Other"] * 3
