#!/usr/bin/env python3
"""50 concurrent clients against the broker: latency of catalog and last_operation.

Usage: broker_load.py URL PASSWORD INSTANCE [CLIENTS] [REQUESTS_PER_CLIENT]
Prints p50/p99/max per endpoint. Standard library only; loopback only.
"""
import base64
import concurrent.futures
import statistics
import sys
import time
import urllib.request

url, password, instance = sys.argv[1], sys.argv[2], sys.argv[3]
clients = int(sys.argv[4]) if len(sys.argv) > 4 else 50
per_client = int(sys.argv[5]) if len(sys.argv) > 5 else 40
auth = "Basic " + base64.b64encode(f"broker:{password}".encode()).decode()
paths = {
    "catalog": "/v2/catalog",
    "last_operation": f"/v2/service_instances/{instance}/last_operation",
}


def client(path):
    lat, errors = [], 0
    for _ in range(per_client):
        req = urllib.request.Request(url + path, headers={"Authorization": auth, "X-Broker-API-Version": "2.17"})
        t0 = time.perf_counter()
        try:
            with urllib.request.urlopen(req, timeout=10) as r:
                r.read()
                if r.status != 200:
                    errors += 1
        except Exception:
            errors += 1
        lat.append(time.perf_counter() - t0)
    return lat, errors


for name, path in paths.items():
    t0 = time.perf_counter()
    with concurrent.futures.ThreadPoolExecutor(max_workers=clients) as ex:
        results = list(ex.map(client, [path] * clients))
    wall = time.perf_counter() - t0
    lat = sorted(x for r in results for x in r[0])
    errors = sum(r[1] for r in results)
    p = lambda q: lat[min(len(lat) - 1, int(q * len(lat)))] * 1000
    print(f"{name:15} {clients} clients x {per_client}: {len(lat)} requests, {len(lat)/wall:7.0f} req/s, "
          f"p50 {p(0.50):6.1f} ms, p99 {p(0.99):6.1f} ms, max {lat[-1]*1000:6.1f} ms, errors {errors}")
