#!/usr/bin/env python3
"""N provisions (or deprovisions) at once against the broker; waits for each.

Usage: provision_load.py up|down URL PASSWORD SERVICE_ID PLAN_ID N PREFIX
Sends the N requests at the same moment (one thread each), then polls every
instance's last_operation every 0.25 s until none is in progress. Prints one
line: time to all done, p50/max per instance, and any failure (exit 1).
Standard library only; loopback only.
"""
import base64
import concurrent.futures
import json
import sys
import time
import urllib.error
import urllib.request

mode, url, password, service, plan, n, prefix = sys.argv[1:8]
n = int(n)
auth = "Basic " + base64.b64encode(f"broker:{password}".encode()).decode()
ids = [f"{prefix}{i}" for i in range(n)]


def call(method, path, body=None):
    data = json.dumps(body).encode() if body is not None else None
    req = urllib.request.Request(url + path, data=data, method=method, headers={
        "Authorization": auth, "X-Broker-API-Version": "2.17", "Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(req, timeout=30) as r:
            return r.status, json.loads(r.read() or b"{}")
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read() or b"{}")


def send(i):
    if mode == "up":
        body = {"service_id": service, "plan_id": plan, "organization_guid": "o", "space_guid": "s"}
        return call("PUT", f"/v2/service_instances/{i}?accepts_incomplete=true", body)
    return call("DELETE", f"/v2/service_instances/{i}?accepts_incomplete=true&service_id={service}&plan_id={plan}")


t0 = time.monotonic()
with concurrent.futures.ThreadPoolExecutor(max_workers=n) as ex:
    sent = list(ex.map(send, ids))
bad = [(i, s, b) for i, (s, b) in zip(ids, sent) if s != 202]
if bad:
    print(f"{mode}: refused: {bad}")
    sys.exit(1)
done, failed = {}, {}
while len(done) + len(failed) < n:
    for i in ids:
        if i in done or i in failed:
            continue
        status, body = call("GET", f"/v2/service_instances/{i}/last_operation")
        state = "gone" if status == 410 else body.get("state")
        if state in ("succeeded", "gone"):
            done[i] = time.monotonic() - t0
        elif state == "failed":
            failed[i] = body.get("description")
    time.sleep(0.25)
wall = time.monotonic() - t0
lat = sorted(done.values())
p50 = lat[len(lat) // 2] if lat else float("nan")
mx = lat[-1] if lat else float("nan")
print(f"{mode:4} N={n}: all done in {wall:6.1f} s; per instance p50 {p50:6.1f} s, max {mx:6.1f} s; "
      f"{len(done)} ok, {len(failed)} failed")
for i, why in failed.items():
    print(f"  {i} failed: {why}")
sys.exit(1 if failed else 0)
