#!/usr/bin/env python3
"""Makes Patroni 3.0.2's etcd3 leader-key refresh a compare-and-swap.

Patroni 3.0.2 (Debian bookworm) rewrites the leader key unconditionally when its
lease changed (etcd3.py, `_update_leader`). A leader that was frozen (docker
pause, a long GC or I/O stall) past its ttl comes back with a new lease and
overwrites the key that a replica took meanwhile: the promoted replica demotes
and the writes it acknowledged are lost. Patroni 3.0.3 fixed this upstream
(patroni/patroni#2689). Here the write is made conditional: it succeeds only if
the key is still the one this node read as its own (same mod revision), or if
there is no key at all; otherwise this node is no longer the leader.

Usage: patch-patroni.py ROOTFS. Fails loudly if the code it expects is not there.
"""
import pathlib
import sys

path = pathlib.Path(sys.argv[1]) / "usr/lib/python3/dist-packages/patroni/dcs/etcd3.py"
src = path.read_text()

old = """                try:
                    self._run_and_handle_exceptions(self._client.put, self.leader_path,
                                                    self._name, self._lease, retry=_retry)
                except ReturnFalseException:
                    pass
        return bool(self._lease)"""

new = """                if leader_lease and cluster.leader.name == self._name:
                    cond = {'mod_revision': str(cluster.leader.index)}
                else:
                    cond = {'create_revision': '0'}
                try:
                    # pgcell: compare-and-swap, never overwrite another node's leader key.
                    if not self._run_and_handle_exceptions(self._client.put, self.leader_path,
                                                           self._name, self._lease, retry=_retry, **cond):
                        logger.warning('leader key changed under us; not the leader any more')
                        return False
                except ReturnFalseException:
                    pass
        return bool(self._lease)"""

if src.count(old) != 1:
    sys.exit(f"patch-patroni: {path} is not the Patroni 3.0.2 this patch was written for")
path.write_text(src.replace(old, new))
print("patch-patroni: etcd3 leader refresh is now a compare-and-swap", file=sys.stderr)
