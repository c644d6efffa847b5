import pytest

from dask_ipy.keys import key_prefix


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
