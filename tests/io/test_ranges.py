"""A tensor's byte range read as an array: mapped (large, aligned) or copied, same values either
way; a file that is shorter than its header says fails with one line, naming the tensor."""

from __future__ import annotations

import gc
from pathlib import Path

import numpy as np
import pytest

from weightsmith.errors import CorruptFileError
from weightsmith.io.ranges import MAP_MIN_BYTES, read_range


def _file(tmp_path: Path, data: bytes) -> Path:
    p = tmp_path / "blob.bin"
    p.write_bytes(data)
    return p


def _maps(path: Path) -> int:
    return sum(str(path) in line for line in Path("/proc/self/maps").read_text().splitlines())


@pytest.mark.parametrize("offset", [0, 4, 8 + 4096 * 3])
def test_large_aligned_ranges_are_mapped_read_only_and_equal(tmp_path, offset):
    values = np.random.default_rng(0).standard_normal(MAP_MIN_BYTES // 4 + 256).astype(np.float32)
    p = _file(tmp_path, b"\x01" * offset + values.tobytes() + b"\x02" * 12)
    a = read_range(p, offset, (values.size // 256, 256), "float32", values.nbytes, "w")
    assert np.array_equal(a.reshape(-1), values)
    assert not a.flags.writeable  # the page cache's pages, not a copy


@pytest.mark.skipif(not Path("/proc/self/maps").exists(), reason="needs /proc (Linux)")
def test_the_map_lives_as_long_as_the_array_and_its_views(tmp_path):
    values = np.arange(MAP_MIN_BYTES // 4 * 2, dtype=np.float32)
    p = _file(tmp_path, values.tobytes())
    a = read_range(p, 0, values.shape, "float32", values.nbytes, "w")
    view = a[10:20]
    del a
    gc.collect()
    assert _maps(p) == 1 and view[0] == 10.0
    del view
    gc.collect()
    assert _maps(p) == 0  # a streamed run holds no more than its tensors in flight


@pytest.mark.parametrize(
    "offset,count,dtype",
    [(2, MAP_MIN_BYTES // 4, "float32"), (0, 1000, "float32"), (1, MAP_MIN_BYTES, "uint16")],
)
def test_small_or_unaligned_ranges_are_copied(tmp_path, offset, count, dtype):
    values = (np.arange(count) % 5000).astype(dtype)
    p = _file(tmp_path, b"\x00" * offset + values.tobytes())
    a = read_range(p, offset, values.shape, dtype, values.nbytes, "w")
    assert np.array_equal(a, values) and a.flags.writeable and a.base is None


@pytest.mark.parametrize("count", [1000, MAP_MIN_BYTES // 4])
def test_a_file_shorter_than_its_range_is_one_line_naming_the_tensor(tmp_path, count):
    p = _file(tmp_path, np.zeros(count - 3, np.float32).tobytes())
    with pytest.raises(CorruptFileError, match="reading tensor 'blocks.0.w' failed") as e:
        read_range(p, 0, (count,), "float32", count * 4, "blocks.0.w")
    assert "ended early" in str(e.value) and "\n" not in str(e.value)
