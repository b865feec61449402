"""A gate job that died (SIGKILLed, its slave lost) leaves its result running; once
the reaper has deleted the job's node, that result ends as aborted, not never."""

import time

from tests.reap_helpers import Fabricator
from tests.test_reap import HOUR, make_pool, reap_in_process


def test_the_running_result_of_a_reaped_node_ends_aborted(tmp_path, clouds_for, sqlite_url):
    pool = make_pool(tmp_path, clouds_for, sqlite_url)
    current = pool.seed_base_images('rax', 'precise')
    f = Fabricator(pool)
    dead, _ = f.node('used', time.time() - 9 * HOUR, image_id=current.id)
    finished, _ = f.node('used', time.time() - 9 * HOUR, image_id=current.id)

    def results(s):
        running = s.create_result(provider='rax', label='precise', node_id=dead.id,
                                  node_name=dead.name, job_name='gate-x', build_number='7')
        done = s.create_result(provider='rax', label='precise', node_id=finished.id,
                               node_name=finished.name, job_name='gate-x', build_number='8')
        s.finish_result(done.id, 'failure')
        return running, done
    running, done = pool.db.transact(results)
    for _ in range(3):                      # mark and delete, then remove once gone
        summary, _, err = reap_in_process(pool)
        if not pool.nodes(provider='rax'):
            break
    assert not pool.nodes(provider='rax'), err
    after = pool.db.transact(lambda s: s.get_result(running.id))
    assert after.result == 'aborted' and after.end_time >= running.start_time
    # A result that had ended keeps its own.
    assert pool.db.transact(lambda s: s.get_result(done.id)).result == 'failure'
