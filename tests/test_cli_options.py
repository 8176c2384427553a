"""The CLI's option surface, in process (typer.testing.CliRunner): shared flag parsers, help
layout (each example on its own line), boolean flags that read naturally."""

from __future__ import annotations

import pytest

from infer_bench.cli.errors import UserError
from infer_bench.cli.parsing import positive_floats, positive_ints


def test_positive_floats_and_ints():
    assert positive_floats("0.5, 1,,2", "--rates") == [0.5, 1.0, 2.0]
    assert positive_ints("256,1024", "--map-inputs") == [256, 1024]
    assert positive_ints("2.7", "--x") == [2]
    with pytest.raises(UserError, match=r"--rates takes comma-separated numbers, got 'fast'"):
        positive_floats("fast", "--rates")
    for bad in ("0", "1,-2", " , "):
        with pytest.raises(UserError, match=r"--rates needs positive numbers"):
            positive_floats(bad, "--rates")
    with pytest.raises(UserError, match=r"--concurrency needs positive numbers"):
        positive_ints("0.5", "--concurrency")        # truncates to 0: not a concurrency
