"""`mlc txt2img NAME --gpus ...` -> the engine's --devices inside the container (host side,
no GPU needed: the mapping is pure)."""

from __future__ import annotations

import pytest

from mlc.errors import UsageError
from mlc.scaleout import container_gpus, devices_for, engine_flags, take_gpus_flag


@pytest.mark.parametrize(
    ("value", "selection", "devices"),
    [
        ("all", "all", "all"),  # the engine counts the GPUs it sees
        ("all", "0,1", "cuda:0,cuda:1"),
        ("all", "device=3,5", "cuda:0,cuda:1"),
        ("all", "4", "cuda:0,cuda:1,cuda:2,cuda:3"),
        ("2", "all", "cuda:0,cuda:1"),
        ("2", "device=4,5,6", "cuda:0,cuda:1"),
        ("0,2", "all", "cuda:0,cuda:2"),  # host ids, as the container numbers them
        ("5,3", "device=3,5", "cuda:1,cuda:0"),
        ("device=2", "all", "cuda:2"),
        ("1", "'all'", "cuda:0"),
        ("GPU-b", "GPU-a,GPU-b", "cuda:1"),
    ],
)
def test_gpus_map_to_the_containers_numbering(value, selection, devices):
    assert devices_for(value, selection) == devices


@pytest.mark.parametrize(
    ("value", "selection", "message"),
    [
        ("all", "none", "has no GPUs"),
        ("2", "", "has no GPUs"),
        ("0", "all", "ambiguous"),
        ("3", "2", "has 2 GPU"),
        ("0,2", "device=1,2", "GPU 0 is not one of"),
        ("4", "device=1,2", "has 2 GPU"),
        ("1,1", "all", "distinct"),
        ("5", "device=5", "has 1 GPU"),  # a count, not an id: device=5 names GPU 5
        ("2,", "2", "GPU 2 is not one of"),
    ],
)
def test_impossible_gpus_are_one_line(value, selection, message):
    with pytest.raises(UsageError, match=message):
        devices_for(value, selection)


def test_the_gpus_flag_is_taken_off_and_the_run_is_sharded():
    flags, scaled = engine_flags(["--prompt", "x", "--gpus", "2", "--seed", "1"], "all", "c")
    assert flags == ["--prompt", "x", "--seed", "1", "--devices", "cuda:0,cuda:1"]
    assert scaled
    assert engine_flags(["--gpus=all"], "0,1", "c") == (["--devices", "cuda:0,cuda:1"], True)
    assert engine_flags(["--ray", "local"], "none", "c") == (["--ray", "local"], True)
    assert engine_flags(["--resume"], "none", "c")[1]
    assert engine_flags(["--prompt", "x"], "all", "c") == (["--prompt", "x"], False)
    with pytest.raises(UsageError, match="cannot be combined"):
        engine_flags(["--gpus", "2", "--devices", "cpu"], "all", "c")
    with pytest.raises(UsageError, match="needs a value"):
        take_gpus_flag(["--gpus", "--seed", "1"])


def test_container_selections():
    assert container_gpus("all") == (None, None)
    assert container_gpus("none") == (0, [])
    assert container_gpus("3") == (3, None)
    assert container_gpus("device=0,2") == (2, ["0", "2"])
