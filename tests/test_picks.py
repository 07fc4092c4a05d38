"""ernerf/picks.py: the evenly spaced indices the reports, the validation and the preprocessing steps pick."""

from __future__ import annotations

import numpy as np
import pytest

from ernerf.picks import evenly_spaced


def test_picks_span_the_range_evenly_from_first_to_last() -> None:
    picks = evenly_spaced(227, 8)
    assert picks[0] == 0 and picks[-1] == 226 and len(picks) == 8
    assert set(np.diff(picks).tolist()) <= {32, 33}  # 226 / 7 = 32.3: gaps differ by at most one
    assert picks.dtype == np.int64


@pytest.mark.parametrize("num, count", [(5, 8), (5, 5), (1, 3)])
def test_asking_for_as_many_or_more_than_there_are_gives_each_once(num: int, count: int) -> None:
    assert evenly_spaced(num, count).tolist() == list(range(num))


@pytest.mark.parametrize("num, count", [(10, 9), (250, 60), (7, 6), (1000, 999)])
def test_picks_are_distinct_and_ascending_when_they_crowd(num: int, count: int) -> None:
    picks = evenly_spaced(num, count)
    assert len(picks) == count and (np.diff(picks) > 0).all() and picks[-1] == num - 1


@pytest.mark.parametrize("num, count", [(0, 4), (4, 0), (-1, 2)])
def test_nothing_to_pick_gives_an_empty_array(num: int, count: int) -> None:
    assert evenly_spaced(num, count).shape == (0,)


def test_one_pick_is_the_first() -> None:
    assert evenly_spaced(9, 1).tolist() == [0]
