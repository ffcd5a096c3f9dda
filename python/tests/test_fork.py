"""A client and its guards across `fork()` (gunicorn, uWSGI, multiprocessing): in the child an
inherited guard reads as lost and the client connects anew; the parent keeps its lease."""

import os

import lockbroker


def test_a_forked_child_reads_inherited_guards_as_lost_and_locks_anew(client):
    g = client.lock("pyf/parent", ttl=30).acquire()
    pid = os.fork()
    if pid == 0:
        code = 0
        try:
            if not g.is_lost:
                code = 2
            try:
                g.unlock()
                code = 3
            except lockbroker.LeaseLost:
                pass
            with client.lock("pyf/child", ttl=5, wait=5) as mine:
                if mine.fence <= 0:
                    code = 4
            try:
                client.try_lock("pyf/parent").acquire()
                code = 5
            except lockbroker.Busy:
                pass
        except BaseException:
            code = 6
        finally:
            os._exit(code)
    _, status = os.waitpid(pid, 0)
    assert os.WIFEXITED(status) and os.WEXITSTATUS(status) == 0, status
    assert not g.is_lost
    assert client.inspect("pyf/parent").holders[0].fence == g.fence
    g.unlock()
