"""storage.quiet: a library's routine INFO lines are held back for a block; its warnings are not."""

from __future__ import annotations

import logging

from storage.quiet import quiet_logger


def test_info_is_held_back_in_the_block_including_children_with_their_own_level(caplog):
    parent, child = logging.getLogger("gpseg_test_lib"), logging.getLogger("gpseg_test_lib.module")
    child.setLevel(logging.INFO)  # as Great Expectations does for some of its modules
    caplog.set_level(logging.INFO)
    try:
        with quiet_logger("gpseg_test_lib"):
            parent.info("routine")
            child.info("routine too")
            child.warning("worth seeing")
        child.info("after the block")
        assert [r.getMessage() for r in caplog.records] == ["worth seeing", "after the block"]
        assert parent.level == logging.NOTSET and child.level == logging.INFO  # levels restored
    finally:
        child.setLevel(logging.NOTSET)
