"""The garbage collector around a run: what the host program froze itself stays frozen."""
import gc

from conftest import TOKEN

import batchgen
import batchgen.sending.backends.live
from batchgen.util import gcpause


class Thing:
    """A container the collector tracks (a plain instance with a cycle through itself)."""

    def __init__(self):
        self.me = self


def frozen(obj) -> bool:
    # Frozen objects are in the permanent generation, which gc.get_objects() does not list.
    return not any(o is obj for o in gc.get_objects())


def test_a_run_keeps_frozen_what_the_host_program_froze(fresh_sim, prompts_csv, tmp_path, monkeypatch):
    monkeypatch.setattr(batchgen.sending.backends.live, "FREEZE_EVERY", 1)   # the run would freeze after every task
    thresholds = gc.get_threshold()
    host_frozen = Thing()
    # The host's whole heap is held, so none of what it freezes can die (and leave the
    # permanent generation) during the run: the freeze count may then only stay or grow.
    heap = gc.get_objects()
    gc.freeze()                                                # as a pre-fork server does
    try:
        frozen_before = gc.get_freeze_count()
        host_loose = Thing()                                   # made after the host's freeze
        assert frozen_before > 0 and frozen(host_frozen) and not frozen(host_loose)
        summary = batchgen.run(str(prompts_csv), out=str(tmp_path / "o"), base_url=fresh_sim.acedata_url,
                               defaults={"model": "dall-e-3"}, environ={"ACEDATA_API_TOKEN": TOKEN})
        assert summary.ok == 3
        assert gc.get_freeze_count() >= frozen_before
        assert frozen(host_frozen)             # the host's frozen objects were not thawed
        assert not frozen(host_loose)          # and what it had left unfrozen was not frozen for good
        assert gc.get_threshold() == thresholds
    finally:
        gc.unfreeze()
        del heap


def test_sending_freezes_and_unfreezes_when_the_host_froze_nothing():
    gc.unfreeze()                              # the host (this test process) has frozen nothing
    thresholds = gc.get_threshold()
    before = Thing()
    with gcpause.sending():
        assert frozen(before)                  # the plan and the state are out of the collector's sight
        assert gc.get_threshold()[0] >= gcpause.SENDING_THRESHOLD
        during = Thing()
        gcpause.freeze_survivors()
        assert frozen(during)
    assert gc.get_freeze_count() == 0 and not frozen(before) and not frozen(during)
    assert gc.get_threshold() == thresholds
