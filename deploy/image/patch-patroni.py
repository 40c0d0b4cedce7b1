#!/usr/bin/env python3
"""Patches Patroni 3.0.2 (Debian bookworm) for pgcell. Each patch replaces one
exact piece of code; the build fails loudly if that code is not there.

1. etcd3 leader-key refresh is a compare-and-swap (upstream 3.0.3, #2689).
   Patroni 3.0.2 rewrites the leader key unconditionally when its etcd lease
   changed. A leader that was frozen (docker pause, a long GC or I/O stall) past
   its ttl comes back with a new lease and overwrites the key that a replica took
   meanwhile: the promoted replica demotes and the writes it acknowledged are
   lost. The write succeeds only if the key is still the one this node read as
   its own (same mod revision), or if there is no key at all.

2. Failsafe mode only for an etcd outage, not for a leader cut off alone.
   In failsafe mode a leader that cannot update its lock asks every member
   (POST /failsafe) whether it may stay primary; 3.0.2 (and every later version)
   says yes whenever the member is not a primary itself. A leader whose own link
   to etcd is cut, while its replicas still reach etcd, therefore stays primary
   for as long as the cut lasts, its replicas follow it instead of racing for the
   expired lock ("following a different leader"), and whoever routes by the
   leader key (pgcell's router) has no primary. Here a member refuses if it
   reads etcd itself (a linearizable read, so a member on the minority side of
   an etcd partition cannot) and either etcd names another leader, or the
   member's own etcd access has not failed for a ttl: etcd is fine and the
   caller is the isolated one. The caller then demotes as it would without
   failsafe mode, and the member forgets its earlier pings so that it races as
   soon as the lock expires. Right after an etcd outage, etcd answers the member
   while the leader's last cycle still failed: the member's own recent failure
   tells the two cases apart (measured: without it, a 30 s outage ended with a
   demotion every time).
   Only POST /failsafe calls this code, and Patroni answers that request with
   502 while failsafe_mode is off: nothing changes for clusters without it.

3. Reset the failsafe state on promotion and when failsafe ends (upstream
   3.1.1, #2803). Otherwise a member that once received failsafe pings and was
   promoted later still remembers the old leader, and a later etcd outage makes
   it treat that old leader as the primary and demote itself. With failsafe
   mode off the state is never set, and resetting it changes nothing.

4. In the leader race, a member that does not answer costs 0.1 s, not 2 s.
   When the leader key expires, each candidate asks every other member's REST
   API for its state (`Ha._is_healthiest_node`, in parallel) before it takes
   the lock; 3.0.2 waits up to 2 s for each answer. A hung leader (paused,
   frozen I/O) or one cut off by the network never answers, so every failover
   from a hung or isolated leader took ttl + 2 s + the promotion (measured
   12.0-12.9 s with ttl 10; 10.3-11.6 s with 0.5 s, 10.3-11.2 s with 0.25 s,
   over the ttl + 1 s target). A healthy Patroni answers on the local network
   in milliseconds (its GET / is one query to its own PostgreSQL). A member
   that misses the timeout counts as unknown, as before:
   with synchronous_mode only the synchronous standby may promote, so a
   shorter wait cannot promote a replica that lacks acknowledged writes. Only
   the race is shortened: switchover checks (`is_failover_possible`, the REST
   API's) keep 2 s, so a drain on a loaded host does not give up on a slow
   but healthy candidate.

Usage: patch-patroni.py ROOTFS.
"""
import pathlib
import sys

root = pathlib.Path(sys.argv[1]) / "usr/lib/python3/dist-packages/patroni"


def patch(rel, old, new, what):
    path = root / rel
    src = path.read_text()
    if src.count(old) != 1:
        sys.exit(f"patch-patroni: {path} is not the Patroni 3.0.2 this patch was written for ({what})")
    path.write_text(src.replace(old, new))
    print(f"patch-patroni: {what}", file=sys.stderr)


patch("dcs/etcd3.py", """                try:
                    self._run_and_handle_exceptions(self._client.put, self.leader_path,
                                                    self._name, self._lease, retry=_retry)
                except ReturnFalseException:
                    pass
        return bool(self._lease)""", """                if leader_lease and cluster.leader.name == self._name:
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
        return bool(self._lease)""", "etcd3 leader refresh is now a compare-and-swap")

patch("ha.py", """    def update_failsafe(self, data):
        if self.state_handler.state == 'running' and self.state_handler.role in ('master', 'primary'):
            return 'Running as a leader'
        self._failsafe.update(data)
""", """    def update_failsafe(self, data):
        if self.state_handler.state == 'running' and self.state_handler.role in ('master', 'primary'):
            return 'Running as a leader'
        # pgcell: failsafe is for an etcd outage, not for a leader cut off alone. Refuse (the
        # caller demotes) if etcd answers us and either names another leader, or has served us
        # without a failure for a ttl (etcd is fine: the caller is the isolated one). Right after
        # an outage etcd answers us while the caller's last cycle still failed: accept then.
        answered, leader = self._pgcell_read_leader()
        quiet = time.time() - getattr(self, '_pgcell_dcs_failed_at', 0) > self.dcs.ttl
        if answered and (leader not in (None, data.get('name')) or quiet):
            self._failsafe.set_is_active(0)  # forget its pings: race as soon as its lock expires
            logger.warning('refusing failsafe to %s: the DCS is accessible from here (leader %s)',
                           data.get('name'), leader)
            return 'DCS is accessible'
        self._failsafe.update(data)

    def _pgcell_read_leader(self):
        \"\"\"(True, leader key value or None) if one etcd endpoint serves a linearizable read of the
        leader key within 0.5 s (at most 3 tried: the caller waits 2 s); (False, None) otherwise.\"\"\"
        client = getattr(self.dcs, '_client', None)
        if client is None or not hasattr(client, 'version_prefix'):
            return False, None  # not etcd3: keep upstream behaviour
        body = json.dumps({'key': base64.b64encode(self.dcs.leader_path.encode('utf-8')).decode('utf-8')})
        for base_uri in list(client.machines_cache)[:3]:
            try:
                headers = client._get_headers()
                headers['Content-Type'] = 'application/json'
                response = client.http.urlopen('POST', base_uri + client.version_prefix + '/kv/range', body=body,
                                               headers=headers, timeout=urllib3.Timeout(total=0.5), retries=0)
                reply = json.loads(response.data.decode('utf-8'))
                if response.status == 200 and 'header' in reply:
                    kvs = reply.get('kvs') or [{}]
                    value = kvs[0].get('value')
                    return True, value and base64.b64decode(value).decode('utf-8')
            except Exception as e:
                logger.debug('failsafe: etcd %s does not answer: %r', base_uri, e)
        return False, None
""", "failsafe refused by members that still reach etcd")

patch("ha.py", """    def _handle_dcs_error(self):
""", """    def _handle_dcs_error(self):
        self._pgcell_dcs_failed_at = time.time()  # pgcell: see update_failsafe
""", "last DCS failure remembered")

patch("ha.py", """import datetime
import functools
""", """import base64
import datetime
import functools
import urllib3
""", "imports for the failsafe check")

patch("ha.py", """    def set_is_active(self, value):
        with self._lock:
            self._last_update = value
""", """    def set_is_active(self, value):
        with self._lock:
            self._last_update = value
            if not value:  # pgcell: upstream 3.1.1 (#2803), forget the old leader
                self._name = self._conn_url = self._api_url = self._slots = None
""", "failsafe state reset when failsafe ends")

patch("ha.py", """            if self.state_handler.role not in ('master', 'promoted', 'primary'):
                def on_success():""", """            if self.state_handler.role not in ('master', 'promoted', 'primary'):
                # pgcell: upstream 3.1.1 (#2803), reset failsafe state when promoting
                self._failsafe.set_is_active(0)

                def on_success():""", "failsafe state reset on promotion")

patch("ha.py", """    def fetch_node_status(self, member):
        \"\"\"This function perform http get request on member.api_url and fetches its status
        :returns: `_MemberStatus` object
        \"\"\"

        try:
            response = self.patroni.request(member, timeout=2, retries=0)""", """    def fetch_node_status(self, member, timeout=2):
        \"\"\"This function perform http get request on member.api_url and fetches its status
        :returns: `_MemberStatus` object
        \"\"\"

        try:
            response = self.patroni.request(member, timeout=timeout, retries=0)""", "member status probe takes a timeout")

patch("ha.py", """    def fetch_nodes_statuses(self, members):
        pool = ThreadPool(len(members))
        results = pool.map(self.fetch_node_status, members)""", """    def fetch_nodes_statuses(self, members, timeout=2):
        pool = ThreadPool(len(members))
        results = pool.map(functools.partial(self.fetch_node_status, timeout=timeout), members)""",
      "member status probes pass the timeout")

patch("ha.py", """        if members:
            for st in self.fetch_nodes_statuses(members):
                if st.failover_limitation() is None:
                    if not st.in_recovery:
                        logger.warning('Primary (%s) is still alive', st.member.name)""", """        if members:
            # pgcell: 0.1 s in the leader race (was 2 s): a hung member delays a failover less
            for st in self.fetch_nodes_statuses(members, timeout=0.1):
                if st.failover_limitation() is None:
                    if not st.in_recovery:
                        logger.warning('Primary (%s) is still alive', st.member.name)""",
      "leader race probes members for 0.1 s")
