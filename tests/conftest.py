"""Shared pytest set-up."""

import logging

import pytest


@pytest.fixture(autouse=True)
def restore_package_logger():
    """Undo the command-line interface's logging set-up after each test.

    The CLI gives the bonsai_mcu logger its own stderr handler and stops
    propagation, which would hide later tests' records from caplog.
    """
    logger = logging.getLogger("bonsai_mcu")
    handlers, level, propagate = list(logger.handlers), logger.level, logger.propagate
    yield
    logger.handlers[:] = handlers
    logger.setLevel(level)
    logger.propagate = propagate
