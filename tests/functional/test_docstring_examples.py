"""The examples in the functional core's docstrings run and print what they say."""

import doctest
import importlib

import pytest

MODULES = ["apgd", "attacks", "bounds", "ensemble", "losses", "pairs", "penalties", "quotients", "schedules", "square"]


@pytest.mark.parametrize("name", MODULES)
def test_docstring_examples(name):
    module = importlib.import_module(f"lipreg.functional.{name}")
    failures, _ = doctest.testmod(module, optionflags=doctest.NORMALIZE_WHITESPACE)
    assert failures == 0
